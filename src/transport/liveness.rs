//! When a connection pings, gives up on a silent peer (1001), closes at
//! its token's expiry (4401), and by when it must have registered (4408):
//! one timer for all of them.
//!
//! Pings fall on a grid shared by every connection of the process
//! ([`PingGrid`]): a connection's first ping is moved back to a grid
//! instant, and the next ones follow it one interval apart, so connections
//! whose pings are due within the same step ping in the same
//! timer tick, for good. An idle connection's cost is mostly the worker
//! thread waking up for it, so tens of pings per wake-up instead of one cut
//! what holding idle connections costs (docs/performance.md). Moved back,
//! not forward: a ping is never later than without the grid, so
//! `IDLE_TIMEOUT_MS` just above `PING_INTERVAL_MS` still works.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Pings due within the same step of this grid are sent together; see the
/// module docs.
#[derive(Debug, Clone, Copy)]
pub(super) struct PingGrid {
    origin: Instant,
    step: Duration,
}

impl PingGrid {
    /// Steps per ping interval: the first ping comes up to 1/250 of the
    /// interval early (100 ms at the default 25 s), and a hub holding N
    /// connections wakes for their pings 250 times per interval, whatever N
    /// (more above 25 s, where the step stays at [`Self::MAX_STEP`]).
    const STEPS_PER_INTERVAL: u32 = 250;
    /// The grid never gets coarser than this, so one step's pings stay a
    /// short burst of work.
    const MAX_STEP: Duration = Duration::from_millis(100);

    /// The process-wide grid for `ping_interval` (its origin is shared,
    /// so equal intervals fall on the same instants).
    pub(super) fn for_interval(ping_interval: Duration) -> Self {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        PingGrid {
            origin: *ORIGIN.get_or_init(Instant::now),
            step: (ping_interval / Self::STEPS_PER_INTERVAL).min(Self::MAX_STEP),
        }
    }

    /// The last grid instant at or before `at` (never before the origin).
    fn align(&self, at: Instant) -> Instant {
        let step = self.step.as_nanos();
        if step == 0 {
            return at;
        }
        let since = at.saturating_duration_since(self.origin).as_nanos();
        // At most `since`, which came from a Duration: it fits.
        let on_grid = u64::try_from(since / step * step).unwrap_or(u64::MAX);
        self.origin + Duration::from_nanos(on_grid)
    }
}

/// When to ping, when to give up on a silent peer, when the token
/// expires and by when the connection must have registered. Inbound
/// traffic only moves `last_inbound`; the single timer is re-armed when it
/// fires, so a busy connection costs no timer resets.
pub(super) struct Liveness {
    ping_interval: Duration,
    grid: PingGrid,
    idle_timeout: Duration,
    next_ping: Instant,
    last_inbound: Instant,
    /// The token's `exp` (None without a token: never).
    expires_at: Option<Instant>,
    registration: Registration,
}

/// Where the connection is with its `register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// Not registered; closed (4408) if still not at this instant.
    Due(Instant),
    /// The deadline passed while a request (its `register`) was being
    /// answered: that answer decides.
    Overdue,
    Done,
}

/// What the liveness timer asks for when it fires.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    Nothing,
    Ping,
    Idle,
    Expired,
    Unregistered,
}

impl Liveness {
    /// `register_by`: None when the connection needs no `register` deadline.
    pub(super) fn new(
        ping_interval: Duration,
        grid: PingGrid,
        idle_timeout: Duration,
        expires_at: Option<Instant>,
        register_by: Option<Instant>,
        now: Instant,
    ) -> Self {
        Liveness {
            ping_interval,
            grid,
            idle_timeout,
            next_ping: grid.align(now + ping_interval),
            last_inbound: now,
            expires_at,
            registration: register_by.map_or(Registration::Done, Registration::Due),
        }
    }

    /// The next instant the timer must fire.
    pub(super) fn deadline(&self) -> Instant {
        let mut at = self.next_ping.min(self.last_inbound + self.idle_timeout);
        if let Some(exp) = self.expires_at {
            at = at.min(exp);
        }
        if let Registration::Due(by) = self.registration {
            at = at.min(by);
        }
        at
    }

    pub(super) fn on_inbound(&mut self, now: Instant) {
        self.last_inbound = now;
    }

    /// An inline request was answered; true when the connection missed its
    /// registration deadline (the request was not a successful `register`).
    pub(super) fn on_answered(&mut self, registered: bool) -> bool {
        if registered {
            self.registration = Registration::Done;
        }
        self.registration == Registration::Overdue
    }

    /// The deadline passed while a request was being answered.
    pub(super) fn register_overdue(&mut self) {
        self.registration = Registration::Overdue;
    }

    pub(super) fn on_timer(&mut self, now: Instant) -> Due {
        if self.expires_at.is_some_and(|exp| now >= exp) {
            return Due::Expired;
        }
        if matches!(self.registration, Registration::Due(by) if now >= by) {
            return Due::Unregistered;
        }
        if now >= self.last_inbound + self.idle_timeout {
            return Due::Idle;
        }
        if now >= self.next_ping {
            // One interval after the last (on the grid, like the first);
            // a timer that fired very late starts again from now.
            let next = self.next_ping + self.ping_interval;
            self.next_ping = if next > now {
                next
            } else {
                self.grid.align(now + self.ping_interval)
            };
            return Due::Ping;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No grid: pings exactly one interval apart.
    fn exact(origin: Instant) -> PingGrid {
        PingGrid {
            origin,
            step: Duration::ZERO,
        }
    }

    #[test]
    fn pings_due_within_one_step_of_the_grid_fall_on_the_same_instant() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let grid = PingGrid {
            origin: t0,
            step: ms(10),
        };
        // Opened 3 and 7 ms into a step: both first ping at the step's
        // start, never later than one interval.
        let mut a = Liveness::new(ms(100), grid, ms(101), None, None, t0 + ms(3));
        let b = Liveness::new(ms(100), grid, ms(101), None, None, t0 + ms(7));
        assert_eq!(a.deadline(), t0 + ms(100));
        assert_eq!(b.deadline(), t0 + ms(100));
        // Then exactly one interval apart, though the timer fired late.
        assert_eq!(a.on_timer(t0 + ms(102)), Due::Ping);
        a.on_inbound(t0 + ms(103));
        assert_eq!(a.deadline(), t0 + ms(200));
        // A timer far behind starts again from now, on the grid.
        a.on_inbound(t0 + ms(300));
        assert_eq!(a.on_timer(t0 + ms(333)), Due::Ping);
        assert_eq!(a.next_ping, t0 + ms(430));
        // An interval that is no whole number of steps keeps its length.
        let mut c = Liveness::new(ms(105), grid, ms(200), None, None, t0 + ms(3));
        assert_eq!(c.deadline(), t0 + ms(100));
        assert_eq!(c.on_timer(t0 + ms(100)), Due::Ping);
        c.on_inbound(t0 + ms(101));
        assert_eq!(c.deadline(), t0 + ms(205));
        // The default interval's step: 100 ms.
        let default = PingGrid::for_interval(Duration::from_secs(25));
        assert_eq!(default.step, ms(100));
        assert_eq!(
            PingGrid::for_interval(ms(100)).step,
            Duration::from_micros(400)
        );
    }

    #[test]
    fn liveness_pings_on_schedule_and_gives_up_after_silence() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(ms(100), exact(t0), ms(250), None, None, t0);
        assert_eq!(l.deadline(), t0 + ms(100));
        assert_eq!(l.on_timer(t0 + ms(50)), Due::Nothing);
        assert_eq!(l.on_timer(t0 + ms(100)), Due::Ping);
        assert_eq!(l.deadline(), t0 + ms(200));
        // Traffic (a pong) keeps the connection; pings go on regardless.
        l.on_inbound(t0 + ms(180));
        assert_eq!(l.on_timer(t0 + ms(200)), Due::Ping);
        assert_eq!(l.on_timer(t0 + ms(300)), Due::Ping);
        assert_eq!(l.deadline(), t0 + ms(400));
        assert_eq!(l.on_timer(t0 + ms(429)), Due::Ping);
        assert_eq!(l.deadline(), t0 + ms(430));
        assert_eq!(l.on_timer(t0 + ms(430)), Due::Idle);
    }

    #[test]
    fn liveness_fires_at_token_expiry_first() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(ms(100), exact(t0), ms(250), Some(t0 + ms(150)), None, t0);
        assert_eq!(l.on_timer(t0 + ms(100)), Due::Ping);
        assert_eq!(l.deadline(), t0 + ms(150));
        assert_eq!(l.on_timer(t0 + ms(150)), Due::Expired);
        // Expiry wins over a silent peer due at the same instant.
        let mut l = Liveness::new(ms(100), exact(t0), ms(250), Some(t0 + ms(250)), None, t0);
        assert_eq!(l.on_timer(t0 + ms(250)), Due::Expired);
    }

    #[test]
    fn liveness_closes_a_connection_not_registered_by_its_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(ms(100), exact(t0), ms(250), None, Some(t0 + ms(50)), t0);
        assert_eq!(l.deadline(), t0 + ms(50));
        assert_eq!(l.on_timer(t0 + ms(50)), Due::Unregistered);
        // Registered in time: the deadline no longer applies.
        let mut l = Liveness::new(ms(100), exact(t0), ms(250), None, Some(t0 + ms(50)), t0);
        assert!(!l.on_answered(true));
        assert_eq!(l.deadline(), t0 + ms(100));
        assert_eq!(l.on_timer(t0 + ms(100)), Due::Ping);
        // Due while its `register` was answered: that answer decides.
        let mut l = Liveness::new(ms(100), exact(t0), ms(250), None, Some(t0 + ms(50)), t0);
        l.register_overdue();
        assert_eq!(l.deadline(), t0 + ms(100));
        assert!(l.on_answered(false));
        let mut l = Liveness::new(ms(100), exact(t0), ms(250), None, Some(t0 + ms(50)), t0);
        l.register_overdue();
        assert!(!l.on_answered(true));
        // Unregistered but not yet due: an answer changes nothing.
        let mut l = Liveness::new(ms(100), exact(t0), ms(250), None, Some(t0 + ms(50)), t0);
        assert!(!l.on_answered(false));
        assert_eq!(l.deadline(), t0 + ms(50));
    }
}
