//! A connection's timers as data, after quinn-proto's `TimerTable`: the protocol sets and
//! stops deadlines and says what each one means when it passes; the event loop only asks for
//! the earliest one (`next`) and hands the time back in. No clock is read here, so tests drive
//! time by passing whatever `Instant` they like.

use std::time::{Duration, Instant};

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The request head must be complete by then (slowloris).
    Handshake,
    /// A keep-alive HTTP connection with no request in progress is closed then.
    Idle,
    /// Nothing heard from the peer since this long: send a ping.
    Ping,
    /// A ping is out and nothing has been heard since: the peer is gone.
    PongDeadline,
    /// We closed; the peer's close frame (or FIN) must arrive by then.
    Close,
    /// Output is pending and the socket has taken none of it since this long.
    Send,
}

/// Slots in a [`TimerTable`].
const SLOTS: usize = 3;
/// The slot shared by the timers that watch the peer (see [`TimerTable`]).
const WATCH: usize = 0;

impl Timer {
    fn slot(self) -> usize {
        match self {
            Timer::Handshake | Timer::Idle | Timer::Ping | Timer::PongDeadline => WATCH,
            Timer::Close => 1,
            Timer::Send => 2,
        }
    }
}

/// Deadlines kept as whole milliseconds after `base` (0: not set), so that a connection's
/// timers cost 32 bytes rather than the 96 of six `Option<Instant>`. Deadlines are rounded up
/// to the next millisecond, so a timer never fires before its time.
///
/// `Handshake`, `Idle`, `Ping` and `PongDeadline` share one slot, since a table never needs
/// two of them at once: HTTP and WebSocket timers never meet in one table, a request head is
/// either awaited or not (`Handshake` / `Idle`), and a ping is either due or out (`Ping` /
/// `PongDeadline`). Setting one of them replaces whichever of them was set; stopping one
/// that is not the one set does nothing.
#[derive(Clone, Debug)]
pub struct TimerTable {
    base: Instant,
    at: [u32; SLOTS],
    /// Which timer the shared slot holds.
    watch: Timer,
}

impl TimerTable {
    pub fn new(now: Instant) -> Self {
        TimerTable {
            base: now,
            at: [0; SLOTS],
            watch: Timer::Handshake,
        }
    }

    /// The slot `timer` is kept in, if it holds `timer`.
    fn slot_of(&self, timer: Timer) -> Option<usize> {
        let slot = timer.slot();
        (slot != WATCH || self.watch == timer).then_some(slot)
    }

    /// The timer a slot holds.
    fn timer_in(&self, slot: usize) -> Timer {
        match slot {
            WATCH => self.watch,
            1 => Timer::Close,
            _ => Timer::Send,
        }
    }

    pub fn set(&mut self, timer: Timer, at: Instant) {
        let ms = match self.offset(at) {
            Some(ms) => ms,
            None => {
                // Far past the base (a connection open for weeks): move the base up to the
                // earliest deadline, which keeps every other one representable.
                self.rebase(at);
                self.offset(at).unwrap_or(u32::MAX)
            }
        };
        let slot = timer.slot();
        if slot == WATCH {
            self.watch = timer;
        }
        self.at[slot] = ms;
    }

    pub fn stop(&mut self, timer: Timer) {
        if let Some(slot) = self.slot_of(timer) {
            self.at[slot] = 0;
        }
    }

    pub fn get(&self, timer: Timer) -> Option<Instant> {
        match self.at[self.slot_of(timer)?] {
            0 => None,
            ms => Some(self.base + Duration::from_millis(ms.into())),
        }
    }

    pub fn is_set(&self, timer: Timer) -> bool {
        self.slot_of(timer).is_some_and(|slot| self.at[slot] != 0)
    }

    /// The earliest deadline set, if any.
    pub fn next(&self) -> Option<Instant> {
        let ms = self.at.iter().copied().filter(|&ms| ms != 0).min()?;
        Some(self.base + Duration::from_millis(ms.into()))
    }

    /// The earliest timer whose deadline is at or before `now`.
    pub fn expired(&self, now: Instant) -> Option<Timer> {
        let (i, ms) = self
            .at
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, ms)| ms != 0)
            .min_by_key(|&(_, ms)| ms)?;
        (self.base + Duration::from_millis(ms.into()) <= now).then(|| self.timer_in(i))
    }

    /// Keeps [`Timer::Send`] at `timeout` after the last write that made progress, for as long
    /// as output is pending (RFC 6455 has no rule here; a peer that reads nothing must not hold
    /// its connection and buffers for ever).
    pub fn output_flushed(
        &mut self,
        now: Instant,
        progressed: bool,
        pending: bool,
        timeout: Duration,
    ) {
        if !pending {
            self.stop(Timer::Send);
        } else if progressed || !self.is_set(Timer::Send) {
            self.set(Timer::Send, now + timeout);
        }
    }

    /// Milliseconds from the base to `at`, rounded up; at least 1 (0 means "not set").
    fn offset(&self, at: Instant) -> Option<u32> {
        let d = at.saturating_duration_since(self.base);
        let ms = d.as_secs().checked_mul(1000)? + u64::from(d.subsec_nanos().div_ceil(1_000_000));
        u32::try_from(ms.max(1)).ok()
    }

    fn rebase(&mut self, at: Instant) {
        let deadline = |t: &TimerTable, slot: usize| match t.at[slot] {
            0 => None,
            ms => Some(t.base + Duration::from_millis(ms.into())),
        };
        let mut base = at;
        for slot in 0..SLOTS {
            if let Some(d) = deadline(self, slot) {
                base = base.min(d);
            }
        }
        let old = self.clone();
        // One millisecond early, so that the earliest deadline keeps its exact value (an
        // offset of 0 would mean "not set").
        self.base = base.checked_sub(Duration::from_millis(1)).unwrap_or(base);
        for slot in 0..SLOTS {
            if let Some(d) = deadline(&old, slot) {
                self.at[slot] = self.offset(d).unwrap_or(u32::MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_deadline_and_expiry() {
        let t0 = Instant::now();
        let mut t = TimerTable::new(t0);
        assert_eq!(t.next(), None);
        assert_eq!(t.expired(t0 + Duration::from_secs(100)), None);
        t.set(Timer::Ping, t0 + Duration::from_secs(30));
        t.set(Timer::Send, t0 + Duration::from_secs(10));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(t.expired(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.expired(t0 + Duration::from_secs(10)), Some(Timer::Send));
        t.stop(Timer::Send);
        assert_eq!(t.expired(t0 + Duration::from_secs(10)), None);
        assert_eq!(t.expired(t0 + Duration::from_secs(31)), Some(Timer::Ping));
        assert!(!t.is_set(Timer::Close));
    }

    #[test]
    fn deadlines_round_up_never_early() {
        let t0 = Instant::now();
        let mut t = TimerTable::new(t0);
        let at = t0 + Duration::from_micros(1500);
        t.set(Timer::Close, at);
        let got = t.get(Timer::Close).unwrap();
        assert!(got >= at && got - at < Duration::from_millis(1));
        assert_eq!(t.expired(at), None);
        assert_eq!(t.expired(got), Some(Timer::Close));
        // A deadline at (or before) the base still counts as set, and is due at once.
        t.set(Timer::Idle, t0);
        assert_eq!(t.expired(t0 + Duration::from_millis(1)), Some(Timer::Idle));
    }

    #[test]
    fn far_deadlines_rebase_and_keep_the_others() {
        let t0 = Instant::now();
        let mut t = TimerTable::new(t0);
        let month = Duration::from_secs(60 * 86_400);
        t.set(Timer::Ping, t0 + month);
        t.set(Timer::Send, t0 + month + Duration::from_secs(5));
        assert_eq!(t.next(), Some(t0 + month));
        assert_eq!(
            t.get(Timer::Send),
            Some(t0 + month + Duration::from_secs(5))
        );
        assert_eq!(t.expired(t0 + month), Some(Timer::Ping));
    }

    #[test]
    fn timers_that_exclude_each_other_share_a_slot() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = TimerTable::new(t0);
        t.set(Timer::Ping, t0 + 30 * s);
        t.set(Timer::Send, t0 + 20 * s);
        // The ping goes out: its pong is awaited instead.
        t.stop(Timer::Ping);
        t.set(Timer::PongDeadline, t0 + 40 * s);
        assert_eq!(t.get(Timer::Ping), None);
        // Stopping the one not held leaves the other alone.
        t.stop(Timer::Ping);
        assert_eq!(t.get(Timer::PongDeadline), Some(t0 + 40 * s));
        // Heard from the peer: the next ping replaces the pong deadline.
        t.set(Timer::Ping, t0 + 50 * s);
        assert!(!t.is_set(Timer::PongDeadline));
        t.stop(Timer::PongDeadline);
        assert_eq!(t.next(), Some(t0 + 20 * s));
        assert_eq!(t.expired(t0 + 20 * s), Some(Timer::Send));
        t.stop(Timer::Send);
        assert_eq!(t.expired(t0 + 50 * s), Some(Timer::Ping));
        t.set(Timer::Close, t0 + 45 * s);
        assert_eq!(t.expired(t0 + 50 * s), Some(Timer::Close));
        assert_eq!(std::mem::size_of::<TimerTable>(), 32);
    }

    #[test]
    fn send_timer_follows_progress() {
        let t0 = Instant::now();
        let s = Duration::from_secs(30);
        let mut t = TimerTable::new(t0);
        t.output_flushed(t0, false, true, s);
        assert_eq!(t.get(Timer::Send), Some(t0 + s));
        // No progress: the deadline stays where it was.
        t.output_flushed(t0 + Duration::from_secs(5), false, true, s);
        assert_eq!(t.get(Timer::Send), Some(t0 + s));
        // Progress moves it; an empty outbox stops it.
        t.output_flushed(t0 + Duration::from_secs(6), true, true, s);
        assert_eq!(t.get(Timer::Send), Some(t0 + Duration::from_secs(6) + s));
        t.output_flushed(t0 + Duration::from_secs(7), true, false, s);
        assert_eq!(t.get(Timer::Send), None);
    }
}
