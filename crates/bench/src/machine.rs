//! The machine a run measured, for the header of the docs' section: CPU model and count, memory,
//! kernel, virtualization, the filesystem under the bench's data directory; and the run itself (UTC
//! date, git commit, command line). The parsers take the `/proc` texts as strings, so they are tested
//! without the files; [`Machine::describe`] reads them and leaves out what it cannot read.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// What `/proc/cpuinfo` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// The first `model name` (every CPU of a VM has the same).
    pub model: Option<String>,
    /// `processor` entries: the CPUs the kernel sees.
    pub count: usize,
    /// The `hypervisor` flag: running under a hypervisor, whatever its name.
    pub hypervisor: bool,
}

pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => info.count += 1,
            "model name" if info.model.is_none() && !value.is_empty() => {
                info.model = Some(value.to_string());
            }
            "flags" if value.split_whitespace().any(|f| f == "hypervisor") => {
                info.hypervisor = true;
            }
            _ => {}
        }
    }
    info
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value * 1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub options: String,
}

/// `/proc/mounts` decodes spaces, tabs, newlines and backslashes in paths as octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            Some(Mount {
                device: unescape(f.next()?),
                mount_point: PathBuf::from(unescape(f.next()?)),
                fstype: f.next()?.to_string(),
                options: f.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// The mount that holds `path` (absolute, symlinks resolved): the longest mount point above it, the
/// last listed when one is mounted over another.
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m)
}

/// The date and time (UTC, to the minute) of a Unix time, without a calendar crate: Howard
/// Hinnant's days-to-civil conversion.
pub fn utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// The machine, as far as it could be read.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub host: Option<String>,
    pub cpu: CpuInfo,
    /// CPUs this process may run on (`nproc`).
    pub nproc: Option<usize>,
    pub memory_bytes: Option<u64>,
    pub kernel: Option<String>,
    /// e.g. `["kvm VM", "docker container"]`.
    pub virtualization: Vec<String>,
    /// The filesystem of the bench's data directory.
    pub data_fs: Option<Mount>,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// One word of output of a command that exits 0 (`systemd-detect-virt` prints `none` and exits 1
/// when it finds nothing).
fn command_word(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let word = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !word.is_empty() && word != "none").then_some(word)
}

impl Machine {
    /// Reads the machine; `data_dir` is where the bench writes (its filesystem is reported).
    pub fn describe(data_dir: &Path) -> Machine {
        let cpu = parse_cpuinfo(&read("/proc/cpuinfo").unwrap_or_default());
        let mut virtualization = Vec::new();
        match command_word("systemd-detect-virt", &["--vm"]) {
            Some(vm) => virtualization.push(format!("{vm} VM")),
            None => {
                let product = read("/sys/class/dmi/id/product_name");
                if let Some(p) = product.filter(|p| {
                    [
                        "KVM",
                        "QEMU",
                        "VirtualBox",
                        "VMware",
                        "Virtual Machine",
                        "HVM",
                    ]
                    .iter()
                    .any(|v| p.contains(v))
                }) {
                    virtualization.push(format!("VM ({p})"));
                } else if cpu.hypervisor {
                    virtualization.push("VM (hypervisor CPU flag)".to_string());
                }
            }
        }
        match command_word("systemd-detect-virt", &["--container"]) {
            Some(c) => virtualization.push(format!("{c} container")),
            None if Path::new("/.dockerenv").exists() => {
                virtualization.push("docker container".to_string());
            }
            None => {}
        }
        let mounts = parse_mounts(&read("/proc/mounts").unwrap_or_default());
        let data_fs = std::fs::canonicalize(data_dir)
            .ok()
            .and_then(|p| mount_of(&mounts, &p).cloned());
        Machine {
            host: read("/proc/sys/kernel/hostname"),
            cpu,
            nproc: std::thread::available_parallelism().ok().map(|n| n.get()),
            memory_bytes: parse_meminfo(&read("/proc/meminfo").unwrap_or_default()),
            kernel: read("/proc/sys/kernel/osrelease"),
            virtualization,
            data_fs,
        }
    }

    /// One line: "`host`: AMD EPYC, 2 CPUs (nproc 2), 23.5 GiB, kernel 6.18, kvm VM; data on ext4 ...".
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        let host = self.host.as_deref().unwrap_or("unknown host");
        let model = self.cpu.model.as_deref().unwrap_or("unknown CPU");
        let nproc = self
            .nproc
            .map_or(String::new(), |n| format!(" (nproc {n})"));
        parts.push(format!("{model}, {} CPUs{nproc}", self.cpu.count));
        if let Some(m) = self.memory_bytes {
            parts.push(format!("{:.1} GiB memory", m as f64 / (1u64 << 30) as f64));
        }
        if let Some(k) = &self.kernel {
            parts.push(format!("kernel {k}"));
        }
        parts.push(if self.virtualization.is_empty() {
            "no virtualization detected".to_string()
        } else {
            self.virtualization.join(", ")
        });
        let fs = match &self.data_fs {
            Some(m) => format!(
                "data dir on {} (`{}` at `{}`, {})",
                m.fstype,
                m.device,
                m.mount_point.display(),
                m.options
            ),
            None => "data dir filesystem unknown".to_string(),
        };
        format!("`{host}`: {}; {fs}", parts.join(", "))
    }
}

/// The commit measured: `git rev-parse --short HEAD`, `-dirty` when tracked files differ from it.
pub fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let head = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let clean = Command::new("git")
        .args(["diff", "--quiet", "HEAD", "--"])
        .status()
        .ok()?;
    Some(if clean.success() {
        head
    } else {
        format!("{head}-dirty")
    })
}

/// The command line as typed (arguments with spaces quoted), and whether `make` ran it.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect();
    let via_make = std::env::var_os("MAKELEVEL").is_some();
    format!(
        "`{}`{}",
        args.join(" "),
        if via_make { " (from `make bench`)" } else { "" }
    )
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
        flags\t\t: fpu vme sse2 hypervisor lahf_lm\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n\
        flags\t\t: fpu vme sse2 hypervisor lahf_lm\n\n";

    #[test]
    fn cpuinfo_model_count_and_hypervisor() {
        let c = parse_cpuinfo(CPUINFO);
        assert_eq!(c.model.as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(c.count, 2);
        assert!(c.hypervisor);
        let bare = parse_cpuinfo("processor : 0\nflags : fpu hypervisorx\n");
        assert_eq!(bare.model, None);
        assert!(!bare.hypervisor, "only the whole flag counts");
    }

    #[test]
    fn meminfo_total_in_bytes() {
        let text = "MemTotal:       24683656 kB\nMemFree:        1000 kB\n";
        assert_eq!(parse_meminfo(text), Some(24_683_656 * 1024));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn the_mount_holding_a_path() {
        let text = "proc /proc proc rw 0 0\n/dev/vda / ext4 rw,relatime 0 0\n\
            tmpfs /work/my\\040dir tmpfs rw 0 0\n/dev/vdb /work ext4 rw 0 0\n/dev/vdc /work xfs rw 0 0\n";
        let mounts = parse_mounts(text);
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[2].mount_point, PathBuf::from("/work/my dir"));
        let at = |p: &str| mount_of(&mounts, Path::new(p)).map(|m| m.device.as_str());
        assert_eq!(at("/root/var"), Some("/dev/vda"));
        // Mounted over: the last /work wins; a sibling with a common prefix is not inside.
        assert_eq!(at("/work/main/var"), Some("/dev/vdc"));
        assert_eq!(at("/workshop"), Some("/dev/vda"));
        assert_eq!(at("/work/my dir/x"), Some("tmpfs"));
        assert_eq!(mount_of(&mounts, Path::new("relative")), None);
    }

    #[test]
    fn unescapes_octal_only() {
        assert_eq!(unescape(r"a\040b\011c\134d"), "a b\tc\\d");
        assert_eq!(unescape(r"tail\04"), r"tail\04");
        assert_eq!(unescape(r"\999"), r"\999");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        // 2026-11-23 14:05:59 UTC
        assert_eq!(utc(1_795_442_759), "2026-11-23 14:05 UTC");
    }

    #[test]
    fn machine_line_names_everything_known() {
        let m = Machine {
            host: Some("box".into()),
            cpu: parse_cpuinfo(CPUINFO),
            nproc: Some(2),
            memory_bytes: Some(24 << 30),
            kernel: Some("6.18.44".into()),
            virtualization: vec!["kvm VM".into()],
            data_fs: parse_mounts("/dev/vda / ext4 rw 0 0").first().cloned(),
        };
        assert_eq!(
            m.line(),
            "`box`: AMD EPYC 7B13, 2 CPUs (nproc 2), 24.0 GiB memory, kernel 6.18.44, kvm VM; \
             data dir on ext4 (`/dev/vda` at `/`, rw)"
        );
    }
}
