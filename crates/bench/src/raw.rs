//! The disk's own rate: 4 KiB appended then fsynced, each writer on its own file, no batching.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::Sample;

/// Runs `writers` threads for `duration`, each appending 4 KiB and fsyncing, in files under `dir`.
pub fn append_fsync(dir: &Path, writers: usize, duration: Duration) -> anyhow::Result<Sample> {
    let stop = Arc::new(AtomicBool::new(false));
    let block = vec![b'r'; 4096];
    let mut threads = Vec::new();
    for w in 0..writers {
        let path = dir.join(format!("raw-{w}.dat"));
        let stop = stop.clone();
        let block = block.clone();
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<Histogram<u64>> {
                let mut file = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&path)?;
                let mut hist = Histogram::<u64>::new(3)?;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    file.write_all(&block)?;
                    file.sync_all()?;
                    hist.record(t.elapsed().as_micros() as u64)?;
                }
                drop(file);
                std::fs::remove_file(&path)?;
                Ok(hist)
            },
        ));
    }
    let start = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new(3)?;
    for t in threads {
        let hist = t
            .join()
            .map_err(|_| anyhow::anyhow!("a raw writer panicked"))??;
        total.add(&hist)?;
    }
    Ok(Sample::from_histogram(&total, start.elapsed()))
}
