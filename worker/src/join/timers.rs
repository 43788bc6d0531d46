//! The join's timers for one key group: pending entries' lateness deadlines and dedupe
//! markers' expiries, about two per action.
//!
//! One binary heap over all of them holds every timer of the lateness horizon, and each push
//! and pop walks it through cache misses. Almost all timers are far in the future, so they
//! wait unsorted in coarse buckets by deadline (an append each); a bucket is sorted, in a
//! small heap, only when the watermark reaches it. Timers come out in exactly the order one
//! heap would give.
//!
//! Most entries complete within seconds of their first part, long before their timer is due,
//! and a timer cannot be taken out of its bucket. So a new entry's timer first waits in a
//! young queue, in arrival order, under a sequence number its entry keeps; an entry that
//! completes (or moves its deadline) cancels it there, without a lookup. Once it is
//! [`YOUNG_AGE`] old (event time) a young timer moves to the wheel unless cancelled. The
//! timers of quick completions never reach the wheel, where they would have waited an hour
//! as stale copies.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::StateKey;

/// A deadline and the entry it belongs to.
pub type Timer = (i64, StateKey);

/// How long after its first part (event time) a young timer moves to the wheel, ms.
pub const YOUNG_AGE: i64 = 60_000;

/// The sequence number of a young timer (see [`Timers::push_young`]).
pub type YoungSeq = u32;

/// A cancelled young timer's deadline (no real deadline: event times are after 2000).
const CANCELLED: i64 = i64::MIN;

/// Buckets a wheel spans at most; a timer beyond them goes straight to the heap. Few and
/// wide: every key group has its own wheel (up to 32,768 of them), and an empty bucket
/// still costs a vector header.
const BUCKETS: usize = 256;
/// Narrowest bucket, ms.
const MIN_WIDTH: i64 = 1000;
/// Emptied buckets kept for reuse (their capacity), per key group.
const SPARE_BUCKETS: usize = 8;

pub struct Timers {
    /// The timers before `near_end` (and any beyond the wheel), sorted.
    near: BinaryHeap<Reverse<Timer>>,
    near_end: i64,
    /// Bucket `i` holds the timers in `[near_end + i * width, near_end + (i + 1) * width)`.
    far: VecDeque<Vec<Timer>>,
    width: i64,
    len: usize,
    spare: Vec<Vec<Timer>>,
    /// New entries' timers, in arrival order (see the module's doc).
    young: VecDeque<Timer>,
    /// The sequence number of `young[0]`.
    young_head: YoungSeq,
    /// No young timer is due before this: the earliest deadline that went into `young` since
    /// it was last empty.
    young_min: i64,
}

impl Timers {
    /// A wheel for deadlines up to `span` ms ahead of the watermark (lateness plus dedupe).
    pub fn new(span: i64) -> Timers {
        Timers {
            near: BinaryHeap::new(),
            near_end: i64::MIN,
            far: VecDeque::new(),
            width: (span / (BUCKETS as i64 / 2)).max(MIN_WIDTH),
            len: 0,
            spare: Vec::new(),
            young: VecDeque::new(),
            young_head: 0,
            young_min: i64::MAX,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// A new entry's timer, due far later than [`YOUNG_AGE`] from now: it waits in the young
    /// queue until [`Timers::promote`] moves it on, unless [`Timers::cancel_young`] is called
    /// with the sequence number returned.
    pub fn push_young(&mut self, deadline: i64, key: StateKey) -> YoungSeq {
        self.len += 1;
        self.young_min = self.young_min.min(deadline);
        self.young.push_back((deadline, key));
        self.young_head
            .wrapping_add((self.young.len() - 1) as YoungSeq)
    }

    /// Cancels the young timer of `key` under `seq`, if it is still young: its entry no
    /// longer waits for it. (The key is checked: a sequence number that came round again
    /// names another timer.)
    pub fn cancel_young(&mut self, seq: YoungSeq, key: &StateKey) {
        let at = seq.wrapping_sub(self.young_head) as usize;
        if let Some(timer) = self.young.get_mut(at)
            && timer.1 == *key
        {
            timer.0 = CANCELLED;
        }
    }

    /// Moves the young timers whose entries' first parts are at least [`YOUNG_AGE`] old
    /// (deadline at most `ripe`) to the wheel, dropping the cancelled ones; all of them when
    /// one could fall due within [`YOUNG_AGE`] of `wm`. Before [`Timers::pop_due`] at `wm`.
    /// Returns how many were dropped.
    pub fn promote(&mut self, wm: i64, ripe: i64) -> usize {
        let all = self.young_min <= wm.saturating_add(YOUNG_AGE);
        let mut dropped = 0;
        while self.young.front().is_some_and(|(d, _)| all || *d <= ripe) {
            let Some(timer) = self.young.pop_front() else {
                break;
            };
            self.young_head = self.young_head.wrapping_add(1);
            self.len -= 1;
            if timer.0 == CANCELLED {
                dropped += 1;
            } else {
                self.push(timer.0, timer.1);
            }
        }
        if self.young.is_empty() {
            self.young_min = i64::MAX;
        }
        dropped
    }

    pub fn push(&mut self, deadline: i64, key: StateKey) {
        self.len += 1;
        // With no bucket in use the wheel starts again at this deadline's bucket (an idle key
        // group must not walk empty buckets to get there).
        if self.far.is_empty() {
            let start = deadline.div_euclid(self.width).saturating_mul(self.width);
            self.near_end = self.near_end.max(start);
        }
        let bucket = deadline
            .checked_sub(self.near_end)
            .filter(|d| *d >= 0)
            .map(|d| d / self.width)
            .and_then(|b| usize::try_from(b).ok())
            .filter(|b| *b < BUCKETS);
        let Some(bucket) = bucket else {
            self.near.push(Reverse((deadline, key)));
            return;
        };
        while self.far.len() <= bucket {
            let empty = self.spare.pop().unwrap_or_default();
            self.far.push_back(empty);
        }
        self.far[bucket].push((deadline, key));
    }

    /// The earliest timer before `wm`, taken out.
    pub fn pop_due(&mut self, wm: i64) -> Option<Timer> {
        debug_assert!(self.young_min >= wm, "young timers promoted first");
        // Every bucket that starts before `wm` may hold a due timer: into the heap with it.
        while self.near_end < wm {
            let Some(mut bucket) = self.far.pop_front() else {
                break;
            };
            self.near_end = self.near_end.saturating_add(self.width);
            self.near.extend(bucket.drain(..).map(Reverse));
            if self.spare.len() < SPARE_BUCKETS {
                self.spare.push(bucket);
            }
        }
        let Reverse((deadline, _)) = self.near.peek()?;
        if *deadline >= wm {
            return None;
        }
        self.len -= 1;
        self.near.pop().map(|Reverse(t)| t)
    }

    /// Keeps the timers `keep` says yes to; returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&Timer) -> bool) -> usize {
        self.near.retain(|Reverse(t)| keep(t));
        for bucket in &mut self.far {
            bucket.retain(&mut keep);
        }
        // Young timers keep their places (their sequence numbers): cancelled, and dropped
        // when they would move to the wheel.
        for timer in &mut self.young {
            if timer.0 != CANCELLED && !keep(timer) {
                timer.0 = CANCELLED;
            }
        }
        let before = self.len;
        self.len =
            self.near.len() + self.far.iter().map(Vec::len).sum::<usize>() + self.young.len();
        before - self.len
    }

    /// Drops every timer.
    pub fn clear(&mut self) {
        self.near.clear();
        self.far.clear();
        self.young_head = self.young_head.wrapping_add(self.young.len() as YoungSeq);
        self.young.clear();
        self.young_min = i64::MAX;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::state_key;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the pushes and watermarks, timers come out exactly as from one heap; young
        /// ones whose entries no longer wait for them never come out.
        #[test]
        fn pops_like_one_heap(
            ops in proptest::collection::vec((0u8..3, 0i64..200_000, 0u16..50), 1..400),
            span in 0i64..20_000,
        ) {
            let mut wheel = Timers::new(span);
            let mut heap: BinaryHeap<Reverse<Timer>> = BinaryHeap::new();
            let mut wm = 0i64;
            // Young timers of these keys are stale when promoted.
            let stale = |key: &StateKey| key.last() == Some(&b'7');
            let lateness = 100_000;
            for (op, step, n) in ops {
                let key = state_key(n % 3, &format!("T{n}"));
                match op {
                    0 => {
                        wm += step / 16;
                        let ripe = wm - YOUNG_AGE + lateness;
                        wheel.promote(wm, ripe);
                        loop {
                            let expected = match heap.peek() {
                                Some(Reverse((d, _))) if *d < wm => heap.pop().map(|Reverse(t)| t),
                                _ => None,
                            };
                            let got = wheel.pop_due(wm);
                            prop_assert_eq!(&got, &expected);
                            if got.is_none() {
                                break;
                            }
                        }
                    }
                    // Deadlines at or after the watermark, as the join sets them.
                    1 => {
                        wheel.push(wm + step, key.clone());
                        heap.push(Reverse((wm + step, key)));
                    }
                    _ => {
                        let seq = wheel.push_young(wm + step, key.clone());
                        if stale(&key) {
                            wheel.cancel_young(seq, &key);
                        } else {
                            heap.push(Reverse((wm + step, key)));
                        }
                    }
                }
            }
            let kept = wheel.retain(|(d, _)| d % 2 == 0);
            heap.retain(|Reverse((d, _))| d % 2 == 0);
            prop_assert!(kept <= 400);
            wheel.promote(i64::MAX, i64::MAX);
            prop_assert_eq!(wheel.len(), heap.len());
            let mut rest = Vec::new();
            while let Some(t) = wheel.pop_due(i64::MAX) {
                rest.push(t);
            }
            prop_assert_eq!(rest, heap.into_sorted_vec().into_iter().rev().map(|Reverse(t)| t).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_young_timer_cancelled_late_or_under_another_key_still_fires() {
        let mut wheel = Timers::new(7_200_000);
        let a = state_key(0, "a");
        let b = state_key(0, "b");
        let seq_a = wheel.push_young(100_000, a.clone());
        let seq_b = wheel.push_young(100_000, b.clone());
        wheel.cancel_young(seq_a, &b);
        // Ripe: both move to the wheel; cancelling after that changes nothing.
        assert_eq!(wheel.promote(50_000, 100_000), 0);
        wheel.cancel_young(seq_b, &b);
        assert_eq!(wheel.pop_due(100_001), Some((100_000, a)));
        assert_eq!(wheel.pop_due(100_001), Some((100_000, b)));
        // A cancelled one is dropped when it would move.
        let c = state_key(0, "c");
        let seq_c = wheel.push_young(300_000, c.clone());
        wheel.cancel_young(seq_c, &c);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.promote(i64::MAX, i64::MAX), 1);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn extreme_deadlines_do_not_overflow() {
        let mut wheel = Timers::new(7_200_000);
        wheel.push(i64::MAX, state_key(0, "a"));
        wheel.push(i64::MIN, state_key(0, "b"));
        wheel.push(0, state_key(0, "c"));
        assert_eq!(wheel.pop_due(1).map(|t| t.0), Some(i64::MIN));
        assert_eq!(wheel.pop_due(1).map(|t| t.0), Some(0));
        assert_eq!(wheel.pop_due(i64::MAX), None);
        assert_eq!(wheel.len(), 1);
    }
}
