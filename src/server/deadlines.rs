//! The loop's timer heap: for each client, an entry no later than its earliest deadline.
//!
//! An entry is 8 bytes, a deadline in whole milliseconds after the heap's epoch and the
//! client's slab key, because there is one per connection (10 000 idle connections are 10 000
//! entries). Deadlines are rounded up, so an entry never fires before the deadline it stands
//! for; the epoch moves forward before the milliseconds could overflow.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// A deadline as the heap keeps it: milliseconds after the epoch, rounded up, at least 1 (so
/// that `Option<Stamp>` is 4 bytes).
pub(super) type Stamp = NonZeroU32;

/// Stamps are rebased once the epoch is this far behind: half the range, so that a deadline
/// up to 24 days ahead always has an exact stamp.
const REBASE_AFTER_MS: u64 = 1 << 31;

pub(super) struct Deadlines {
    epoch: Instant,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
}

impl Deadlines {
    pub(super) fn new(now: Instant) -> Self {
        Deadlines {
            epoch: now,
            heap: BinaryHeap::new(),
        }
    }

    /// `at` as a stamp: rounded up to the millisecond, so never early. A deadline beyond the
    /// range (49 days after the epoch) gets the last stamp, which fires early and is re-armed.
    pub(super) fn stamp(&self, at: Instant) -> Stamp {
        let d = at.saturating_duration_since(self.epoch);
        let ms = d.as_secs().saturating_mul(1000) + u64::from(d.subsec_nanos().div_ceil(1_000_000));
        let ms = u32::try_from(ms).unwrap_or(u32::MAX);
        NonZeroU32::new(ms).unwrap_or(NonZeroU32::MIN)
    }

    /// The moment a stamp stands for.
    pub(super) fn instant(&self, stamp: Stamp) -> Instant {
        self.epoch + Duration::from_millis(stamp.get().into())
    }

    /// Slab keys are below the number of open descriptors, far below `u32::MAX`.
    pub(super) fn push(&mut self, at: Stamp, key: usize) {
        debug_assert!(u32::try_from(key).is_ok());
        self.heap.push(Reverse((at.get(), key as u32)));
    }

    /// The earliest entry's moment.
    pub(super) fn next(&self) -> Option<Instant> {
        let &Reverse((ms, _)) = self.heap.peek()?;
        Some(self.instant(NonZeroU32::new(ms)?))
    }

    /// Takes the earliest entry if it is due at `now`: its stamp and key.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Stamp, usize)> {
        let &Reverse((ms, key)) = self.heap.peek()?;
        if self.epoch + Duration::from_millis(ms.into()) > now {
            return None;
        }
        self.heap.pop();
        Some((NonZeroU32::new(ms)?, key as usize))
    }

    /// Moves the epoch up to `now` once it is [`REBASE_AFTER_MS`] behind, shifting every
    /// entry; the caller applies the returned [`Rebase`] to the stamps it keeps
    /// (`Client::armed`), so that they still equal their entries. Order is kept; entries that
    /// were due stay due.
    pub(super) fn rebase(&mut self, now: Instant) -> Option<Rebase> {
        let behind = now.saturating_duration_since(self.epoch);
        let behind_ms = u64::try_from(behind.as_millis()).unwrap_or(u64::MAX);
        if behind_ms <= REBASE_AFTER_MS {
            return None;
        }
        // One millisecond short of `now`, so that an entry that was due is due at once.
        let shift = Rebase(behind_ms - 1);
        self.epoch += Duration::from_millis(shift.0);
        let entries = std::mem::take(&mut self.heap).into_vec();
        self.heap = entries
            .into_iter()
            .map(|Reverse((ms, key))| {
                let s = NonZeroU32::new(ms).unwrap_or(NonZeroU32::MIN);
                Reverse((shift.apply(s).get(), key))
            })
            .collect();
        Some(shift)
    }
}

/// How far the epoch moved, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rebase(u64);

impl Rebase {
    /// A stamp from before the move, as it reads after it (at least 1: due ones stay due).
    pub(super) fn apply(self, s: Stamp) -> Stamp {
        let ms = u64::from(s.get()).saturating_sub(self.0);
        NonZeroU32::new(ms as u32).unwrap_or(NonZeroU32::MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn entries_come_out_in_order_and_never_early() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0);
        let at = |us| t0 + Duration::from_micros(us);
        for (us, key) in [(5_500, 1), (1_200, 2), (30_000_000, 3), (1_000, 4)] {
            d.push(d.stamp(at(us)), key);
        }
        assert_eq!(d.next(), Some(at(1_000)));
        assert_eq!(d.pop_due(at(999)), None);
        assert_eq!(d.pop_due(at(1_000)).map(|e| e.1), Some(4));
        // 1.2 ms is kept as 2 ms: due then, not before.
        assert_eq!(d.pop_due(at(1_999)), None);
        let (s, key) = d.pop_due(at(2_000)).unwrap();
        assert_eq!((key, d.instant(s)), (2, at(2_000)));
        assert_eq!(d.pop_due(at(6_000)).map(|e| e.1), Some(1));
        assert_eq!(d.pop_due(at(6_000)), None);
        assert_eq!(d.next(), Some(at(30_000_000)));
        // A deadline at or before the epoch is due at once.
        assert_eq!(d.stamp(t0).get(), 1);
    }

    #[test]
    fn rebase_keeps_order_and_the_stamps_kept_outside() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0);
        assert!(d.rebase(t0 + 24 * DAY).is_none());
        let now = t0 + 25 * DAY;
        let soon = now + Duration::from_millis(1500);
        let later = now + 20 * DAY;
        let (a, b, c) = (d.stamp(soon), d.stamp(later), d.stamp(now));
        d.push(a, 1);
        d.push(b, 2);
        d.push(c, 3);
        let map = d.rebase(now).expect("25 days behind");
        assert!(d.rebase(now).is_none());
        // The due entry is still due; the others keep their moments and order.
        let (s, key) = d.pop_due(now).unwrap();
        assert_eq!((key, s), (3, map.apply(c)));
        assert_eq!(d.next(), Some(soon));
        assert_eq!(d.pop_due(soon), Some((map.apply(a), 1)));
        assert_eq!(d.instant(map.apply(b)), later);
        assert_eq!(d.pop_due(later), Some((map.apply(b), 2)));
    }

    #[test]
    fn far_deadlines_fire_early_never_late_and_a_long_sleep_is_survived() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0);
        let far = t0 + 60 * DAY;
        let s = d.stamp(far);
        assert_eq!(s.get(), u32::MAX);
        assert!(d.instant(s) < far);
        d.push(s, 7);
        // The loop slept past the range: everything kept is due, then the epoch moves up.
        let now = t0 + 55 * DAY;
        let map = d.rebase(now).unwrap();
        assert_eq!(d.pop_due(now), Some((map.apply(s), 7)));
        assert!(d.stamp(far) > NonZeroU32::MIN);
        assert_eq!(d.instant(d.stamp(far)), far);
    }
}
