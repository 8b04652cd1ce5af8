//! Small helpers shared by the store's modules.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The store's clock, in milliseconds since the Unix epoch: the wall clock read once when the process
/// first asks, advanced from then on by the monotonic clock.
///
/// Every time the store keeps (an item's `visible_at_ms`, a lease's expiry, a defer's `until_ms`) is
/// compared with this clock, so a wall clock stepped while the store runs (NTP, a VM resumed or
/// migrated) can neither hide an item just enqueued from the next lease nor keep an expired lease
/// from returning its item. `CLOCK_MONOTONIC` is slewed by NTP like the wall clock but never stepped;
/// a restart takes the wall clock's current reading again.
pub fn now_ms() -> i64 {
    static ANCHOR: OnceLock<(i64, Instant)> = OnceLock::new();
    let (wall_ms, at) = ANCHOR.get_or_init(|| (wall_ms(), Instant::now()));
    wall_ms.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_clock_starts_at_the_wall_clock_and_never_goes_back() {
        let before = wall_ms();
        let first = now_ms();
        assert!(
            (first - before).abs() < 60_000,
            "anchored to the wall clock: {first} vs {before}"
        );
        let mut last = first;
        for _ in 0..1000 {
            let t = now_ms();
            assert!(t >= last, "{t} after {last}");
            last = t;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(now_ms() >= first + 20, "advances with time");
    }
}
