//! When a connection pings, gives up on a silent peer (1001), closes at
//! its token's expiry (4401), and by when it must have registered (4408):
//! one timer for all of them.

use std::time::{Duration, Instant};

/// When to ping, when to give up on a silent peer, when the token
/// expires and by when the connection must have registered. Inbound
/// traffic only moves `last_inbound`; the single timer is re-armed when it
/// fires, so a busy connection costs no timer resets.
pub(super) struct Liveness {
    ping_interval: Duration,
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
        idle_timeout: Duration,
        expires_at: Option<Instant>,
        register_by: Option<Instant>,
        now: Instant,
    ) -> Self {
        Liveness {
            ping_interval,
            idle_timeout,
            next_ping: now + ping_interval,
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
            self.next_ping = now + self.ping_interval;
            return Due::Ping;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_pings_on_schedule_and_gives_up_after_silence() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(ms(100), ms(250), None, None, t0);
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
        let mut l = Liveness::new(ms(100), ms(250), Some(t0 + ms(150)), None, t0);
        assert_eq!(l.on_timer(t0 + ms(100)), Due::Ping);
        assert_eq!(l.deadline(), t0 + ms(150));
        assert_eq!(l.on_timer(t0 + ms(150)), Due::Expired);
        // Expiry wins over a silent peer due at the same instant.
        let mut l = Liveness::new(ms(100), ms(250), Some(t0 + ms(250)), None, t0);
        assert_eq!(l.on_timer(t0 + ms(250)), Due::Expired);
    }

    #[test]
    fn liveness_closes_a_connection_not_registered_by_its_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Liveness::new(ms(100), ms(250), None, Some(t0 + ms(50)), t0);
        assert_eq!(l.deadline(), t0 + ms(50));
        assert_eq!(l.on_timer(t0 + ms(50)), Due::Unregistered);
        // Registered in time: the deadline no longer applies.
        let mut l = Liveness::new(ms(100), ms(250), None, Some(t0 + ms(50)), t0);
        assert!(!l.on_answered(true));
        assert_eq!(l.deadline(), t0 + ms(100));
        assert_eq!(l.on_timer(t0 + ms(100)), Due::Ping);
        // Due while its `register` was answered: that answer decides.
        let mut l = Liveness::new(ms(100), ms(250), None, Some(t0 + ms(50)), t0);
        l.register_overdue();
        assert_eq!(l.deadline(), t0 + ms(100));
        assert!(l.on_answered(false));
        let mut l = Liveness::new(ms(100), ms(250), None, Some(t0 + ms(50)), t0);
        l.register_overdue();
        assert!(!l.on_answered(true));
        // Unregistered but not yet due: an answer changes nothing.
        let mut l = Liveness::new(ms(100), ms(250), None, Some(t0 + ms(50)), t0);
        assert!(!l.on_answered(false));
        assert_eq!(l.deadline(), t0 + ms(50));
    }
}
