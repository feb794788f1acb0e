//! Logging setup (`RUST_LOG` filters, `LOG_FORMAT` picks text or JSON),
//! and [`LogThrottle`], for the lines a stranger can cause at will.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    // rmcp logs every stateless /mcp request at info (three lines each).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed write to stderr (its reader went away: `mcp-hub | head`,
        // a dead log shipper) is otherwise reported with eprintln!, which
        // panics and kills whatever task was logging - a connection's
        // reader, or the shutdown signal handler. Lose the line instead.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// At most one line per period for one kind of event a caller can repeat
/// at will (a bad webhook signature), so a flood costs one line per period
/// instead of one per request; the next admitted line carries how many
/// were suppressed in between. One `static` per call site, used as
/// `if let Some(suppressed) = BAD_SIGNATURE.admit() { warn!(suppressed, ..) }`.
pub struct LogThrottle {
    period_ms: u64,
    /// Milliseconds since [`epoch`] before which lines are suppressed.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

/// The monotonic clock's origin (first use).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds on the process's monotonic clock, from 1 (so 0 can mean
/// "never"): the throttles' and the listener's deadlines' clock.
pub fn monotonic_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

impl LogThrottle {
    pub const fn new(period: Duration) -> Self {
        LogThrottle {
            period_ms: period.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Some(events suppressed since the last admitted one) when this one
    /// may be logged; None (and counted) when it is to be suppressed.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(monotonic_ms())
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_then_the_suppressed_count() {
        let t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.admit_at(0), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(t.admit_at(ms), None);
        }
        assert_eq!(t.admit_at(10_000), Some(3));
        assert_eq!(t.admit_at(10_001), None);
        assert_eq!(t.admit_at(30_000), Some(1));
    }
}
