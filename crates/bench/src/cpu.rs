//! CPU time and disk writes per write: what the store processes and the bench's own client burn for
//! one mirrored write, read from `/proc/PID/stat` (user + system time of every thread, dead ones
//! included), and what the stores write to the disk for it, read from `/proc/PID/io` (`write_bytes`:
//! WAL frames, checkpoints, every file), before and after each store measurement. On a shared, noisy machine writes/s move with the neighbours;
//! CPU time per write moves much less, so it is the figure to compare changes by.

use std::collections::BTreeMap;

/// `/proc` counts CPU time in clock ticks of 1/100 s (`USER_HZ`, 100 on every Linux the bench runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds of process `pid` (`self` for the bench), if `/proc` says.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(11) stime(12).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Bytes process `pid` (`self` for the bench) caused to be written to storage so far, if `/proc` says.
fn written_bytes(pid: &str) -> Option<f64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes the bench itself (the raw writers) caused to be written to storage so far.
pub fn own_written_bytes() -> f64 {
    written_bytes("self").unwrap_or(0.0)
}

/// User + system CPU seconds of process `pid` so far.
pub fn process_seconds(pid: u32) -> Option<f64> {
    cpu_seconds(&pid.to_string())
}

/// CPU seconds of each watched process at one instant.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    by_name: BTreeMap<String, f64>,
    client: f64,
    written_by_name: BTreeMap<String, f64>,
}

/// The processes whose CPU a store row is charged: the stores, by name and pid.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    stores: Vec<(String, u32)>,
}

impl Watch {
    pub fn new(stores: Vec<(String, u32)>) -> Watch {
        Watch { stores }
    }

    pub fn read(&self) -> Reading {
        Reading {
            by_name: self
                .stores
                .iter()
                .map(|(name, pid)| (name.clone(), cpu_seconds(&pid.to_string()).unwrap_or(0.0)))
                .collect(),
            client: cpu_seconds("self").unwrap_or(0.0),
            written_by_name: self
                .stores
                .iter()
                .map(|(name, pid)| (name.clone(), written_bytes(&pid.to_string()).unwrap_or(0.0)))
                .collect(),
        }
    }
}

/// CPU microseconds per write over one measurement (all stores together, each store, the client), and
/// KiB the stores wrote to the disk per write (all together, each store).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PerWrite {
    pub stores_us: f64,
    pub client_us: f64,
    pub by_store_us: BTreeMap<String, f64>,
    pub disk_kib: f64,
    pub disk_kib_by_store: BTreeMap<String, f64>,
}

impl PerWrite {
    pub fn between(before: &Reading, after: &Reading, writes: u64) -> PerWrite {
        let per = |secs: f64| {
            if writes == 0 {
                0.0
            } else {
                secs * 1e6 / writes as f64
            }
        };
        let by_store_us: BTreeMap<String, f64> = after
            .by_name
            .iter()
            .map(|(name, a)| {
                let b = before.by_name.get(name).copied().unwrap_or(*a);
                (name.clone(), per(a - b))
            })
            .collect();
        let disk_kib_by_store: BTreeMap<String, f64> = after
            .written_by_name
            .iter()
            .map(|(name, a)| {
                let b = before.written_by_name.get(name).copied().unwrap_or(*a);
                (name.clone(), per(a - b) / 1e6 / 1024.0)
            })
            .collect();
        PerWrite {
            stores_us: by_store_us.values().sum(),
            client_us: per(after.client - before.client),
            by_store_us,
            disk_kib: disk_kib_by_store.values().sum(),
            disk_kib_by_store,
        }
    }

    pub fn total_us(&self) -> f64 {
        self.stores_us + self.client_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        // Burn CPU until the kernel has counted a tick of it (10 ms at 100 Hz), at most 5 s: the
        // optimiser cannot fold the loop away (black_box), and a fast machine only loops longer.
        let start = std::time::Instant::now();
        let mut secs = 0.0;
        while secs <= 0.0 && start.elapsed() < std::time::Duration::from_secs(5) {
            let mut x = 0u64;
            for i in 0..5_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            secs = cpu_seconds("self").expect("/proc/self/stat parses");
        }
        assert!(secs > 0.0, "CPU time {secs} after 5 s of work");
    }

    #[test]
    fn per_write_divides_the_difference() {
        let before = Reading {
            by_name: [("s1".to_string(), 1.0), ("s2".to_string(), 2.0)].into(),
            client: 0.5,
            written_by_name: [("s1".to_string(), 0.0), ("s2".to_string(), 4096.0)].into(),
        };
        let after = Reading {
            by_name: [("s1".to_string(), 1.5), ("s2".to_string(), 2.25)].into(),
            client: 0.75,
            written_by_name: [
                ("s1".to_string(), 5000.0 * 8192.0),
                ("s2".to_string(), 4096.0 + 5000.0 * 4096.0),
            ]
            .into(),
        };
        let p = PerWrite::between(&before, &after, 5000);
        assert!((p.by_store_us["s1"] - 100.0).abs() < 1e-9);
        assert!((p.stores_us - 150.0).abs() < 1e-9);
        assert!((p.client_us - 50.0).abs() < 1e-9);
        assert!((p.total_us() - 200.0).abs() < 1e-9);
        assert!((p.disk_kib_by_store["s1"] - 8.0).abs() < 1e-9);
        assert!((p.disk_kib - 12.0).abs() < 1e-9);
    }

    #[test]
    fn reads_own_disk_writes() {
        // On the build directory's disk: a tmpfs /tmp writes nothing to storage.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir");
        let before = own_written_bytes();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 1 << 20]).expect("writes");
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .expect("syncs");
        let after = own_written_bytes();
        assert!(after - before >= (1 << 20) as f64, "{before} -> {after}");
    }
}
