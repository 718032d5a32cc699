//! CDI's progress line, logged at every whole percent:
//!
//! ```text
//! Transferred 1073741824/10737418240 bytes (10%) at 107374182 bytes/second overall, last 1% was 107374182 bytes at 112000000 bytes/second
//! ```
//!
//! Like CDI, one line is logged when the integer percent (floored) rises above the last
//! one logged, so 0% is never logged and a sample that jumps several percent logs one
//! line ("last 1%" then covers the whole jump, as in CDI). Rates are whole bytes per
//! second over real (not whole-second) elapsed time; a rate over no elapsed time is
//! left out, as CDI leaves it out.

use std::fmt;
use std::time::Instant;

use super::metrics::percent;

/// One progress line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressLine {
    /// Bytes covered.
    pub done: u64,
    /// Bytes to cover.
    pub total: u64,
    /// Whole percent, floored, at most 100.
    pub percent: u64,
    /// Bytes/s since the start (`None` when no time has passed).
    pub overall_rate: Option<u64>,
    /// Bytes since the previous line.
    pub last_bytes: u64,
    /// Bytes/s since the previous line (`None` when no time has passed).
    pub last_rate: Option<u64>,
}

impl fmt::Display for ProgressLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Transferred {}/{} bytes ({}%)",
            self.done, self.total, self.percent
        )?;
        if let Some(r) = self.overall_rate {
            write!(f, " at {r} bytes/second overall")?;
        }
        if let Some(r) = self.last_rate {
            write!(
                f,
                ", last 1% was {} bytes at {r} bytes/second",
                self.last_bytes
            )?;
        }
        Ok(())
    }
}

/// Decides when to log: feed it the covered bytes, the total and the time.
#[derive(Debug, Clone)]
pub struct PercentTracker {
    start: Instant,
    last_percent: u64,
    last_bytes: u64,
    last_time: Instant,
}

fn rate(bytes: u64, from: Instant, to: Instant) -> Option<u64> {
    let secs = to.checked_duration_since(from)?.as_secs_f64();
    (secs > 0.0).then(|| crate::num::u64_floor(bytes as f64 / secs))
}

impl PercentTracker {
    /// A tracker whose copy started at `start`.
    pub fn new(start: Instant) -> Self {
        PercentTracker {
            start,
            last_percent: 0,
            last_bytes: 0,
            last_time: start,
        }
    }

    /// The line to log for this sample, if a new whole percent was reached.
    pub fn feed(&mut self, done: u64, total: u64, now: Instant) -> Option<ProgressLine> {
        let pct = percent(done, total)?;
        if pct <= self.last_percent {
            return None;
        }
        let last_bytes = done.saturating_sub(self.last_bytes);
        let line = ProgressLine {
            done,
            total,
            percent: pct,
            overall_rate: rate(done, self.start, now),
            last_bytes,
            last_rate: rate(last_bytes, self.last_time, now),
        };
        self.last_percent = pct;
        self.last_bytes = done;
        self.last_time = now;
        Some(line)
    }
}

/// Log a line through `tracing` at info, with the numbers as fields too.
pub fn log_line(line: &ProgressLine) {
    tracing::info!(
        done = line.done,
        total = line.total,
        percent = line.percent,
        overall_rate = line.overall_rate,
        last_bytes = line.last_bytes,
        last_rate = line.last_rate,
        "{line}"
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn line_wording() {
        let l = ProgressLine {
            done: GIB,
            total: 10 * GIB,
            percent: 10,
            overall_rate: Some(107374182),
            last_bytes: 107374182,
            last_rate: Some(112000000),
        };
        assert_eq!(
            l.to_string(),
            "Transferred 1073741824/10737418240 bytes (10%) at 107374182 bytes/second overall, \
             last 1% was 107374182 bytes at 112000000 bytes/second"
        );
        let l = ProgressLine {
            overall_rate: None,
            last_rate: None,
            ..l
        };
        assert_eq!(
            l.to_string(),
            "Transferred 1073741824/10737418240 bytes (10%)"
        );
    }

    #[test]
    fn a_line_at_every_whole_percent() {
        let t0 = Instant::now();
        let mut t = PercentTracker::new(t0);
        let total = 100 * GIB;
        let mut lines = Vec::new();
        // 1 GiB/s, sampled every 200 ms (≈ 0.2% per sample).
        let mut done = 0;
        let mut ms = 0;
        while done < total {
            ms += 200;
            done = (done + GIB / 5).min(total);
            if let Some(l) = t.feed(done, total, t0 + Duration::from_millis(ms)) {
                lines.push(l);
            }
        }
        assert_eq!(lines.len(), 100);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l.percent, i as u64 + 1);
            assert_eq!(l.total, total);
            // 1 GiB/s overall, give or take one sample's rounding.
            let r = l.overall_rate.unwrap();
            assert!(r.abs_diff(GIB) < GIB / 50, "{r}");
        }
        assert_eq!(lines.last().unwrap().done, total);
        // No more lines once at 100%.
        assert!(
            t.feed(total, total, t0 + Duration::from_secs(999))
                .is_none()
        );
    }

    #[test]
    fn last_percent_figures() {
        let t0 = Instant::now();
        let mut t = PercentTracker::new(t0);
        let s = Duration::from_secs;
        assert!(t.feed(0, 1000, t0).is_none()); // 0% never logged
        assert!(t.feed(9, 1000, t0 + s(1)).is_none());
        let l = t.feed(10, 1000, t0 + s(2)).unwrap();
        assert_eq!(l.percent, 1);
        assert_eq!(l.overall_rate, Some(5));
        assert_eq!((l.last_bytes, l.last_rate), (10, Some(5)));
        assert!(t.feed(19, 1000, t0 + s(3)).is_none());
        let l = t.feed(20, 1000, t0 + s(4)).unwrap();
        assert_eq!(l.percent, 2);
        assert_eq!(l.overall_rate, Some(5));
        assert_eq!((l.last_bytes, l.last_rate), (10, Some(5)));
        // A jump of several percent logs one line covering the jump.
        let l = t.feed(500, 1000, t0 + s(8)).unwrap();
        assert_eq!(l.percent, 50);
        assert_eq!((l.last_bytes, l.last_rate), (480, Some(120)));
        assert_eq!(
            l.to_string(),
            "Transferred 500/1000 bytes (50%) at 62 bytes/second overall, last 1% was 480 bytes at 120 bytes/second"
        );
    }

    #[test]
    fn no_time_no_rate_and_no_total_no_line() {
        let t0 = Instant::now();
        let mut t = PercentTracker::new(t0);
        assert!(t.feed(5, 0, t0).is_none());
        let l = t.feed(1000, 1000, t0).unwrap();
        assert_eq!(l.percent, 100);
        assert_eq!((l.overall_rate, l.last_rate), (None, None));
        assert_eq!(l.to_string(), "Transferred 1000/1000 bytes (100%)");
    }

    #[test]
    fn done_past_total_caps_at_100() {
        let t0 = Instant::now();
        let mut t = PercentTracker::new(t0);
        let l = t.feed(1500, 1000, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(l.percent, 100);
        assert_eq!(l.done, 1500);
    }
}
