//! The partial aggregates of the retained windows, per owned key group and window.
//!
//! One small map per (key group, window) instead of one map over everything: an action
//! touches the few aggregates of its key group's current window, which stay in cache, and a
//! window is emitted, saved and dropped as a unit (its stored aggregates go by one range
//! delete, not one delete per aggregate).

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::{Aggregate, AggregateKey, Metric};

/// The aggregates of one window. Slots are appended as aggregates appear; which of them are
/// unemitted or unsaved is told by each aggregate's flags, and found through two candidate
/// sets: every slot from `emitted_len` (`saved_len`) on, since a new aggregate is both, and
/// the older slots listed in `unemitted` (`unsaved`) when their flag was set again. Most
/// aggregates of a window are new, so most of them are never listed.
#[derive(Debug, Default)]
struct Window {
    index: FxHashMap<(Metric, u32), u32>,
    slots: Vec<(Metric, u32, Aggregate)>,
    /// Slots before this were all looked at by the last emission.
    emitted_len: u32,
    /// Older slots changed since they were emitted (each listed once: when `dirty` is set).
    unemitted: Vec<u32>,
    /// Slots before this were all looked at by the last checkpoint.
    saved_len: u32,
    /// Older slots changed since the last checkpoint (each listed once: when `unsaved` is
    /// set).
    unsaved: Vec<u32>,
}

impl Window {
    /// Sized like its predecessor: windows of a key group hold about as many aggregates, and
    /// growing a map and a vector slot by slot cost more than filling them.
    fn sized_like(previous: Option<&Window>) -> Window {
        let n = previous.map_or(0, |w| w.slots.len());
        Window {
            index: FxHashMap::with_capacity_and_hasher(n, Default::default()),
            slots: Vec::with_capacity(n),
            ..Window::default()
        }
    }

    /// A new slot holding `agg` (flags as they are: the caller marks it).
    fn push(&mut self, metric: Metric, combo: u32, agg: Aggregate) -> u32 {
        let slot = self.slots.len() as u32;
        self.slots.push((metric, combo, agg));
        self.index.insert((metric, combo), slot);
        slot
    }

    /// Sets the slot's `unsaved` flag; true when it was not set.
    fn mark_unsaved(&mut self, slot: u32) -> bool {
        let agg = &mut self.slots[slot as usize].2;
        if agg.unsaved {
            return false;
        }
        agg.unsaved = true;
        if slot < self.saved_len {
            self.unsaved.push(slot);
        }
        true
    }

    /// Sets the slot's `dirty` flag.
    fn mark_dirty(&mut self, slot: u32) {
        let agg = &mut self.slots[slot as usize].2;
        if !agg.dirty {
            agg.dirty = true;
            if slot < self.emitted_len {
                self.unemitted.push(slot);
            }
        }
    }

    /// The slots that may be unemitted, in key order; afterwards none is listed.
    fn take_unemitted(&mut self) -> Vec<u32> {
        let listed = std::mem::take(&mut self.unemitted);
        let fresh = self.emitted_len..self.slots.len() as u32;
        self.emitted_len = self.slots.len() as u32;
        self.in_key_order(listed.into_iter().chain(fresh), |a| a.dirty)
    }

    /// The slots that may be unsaved, in key order; afterwards none is listed.
    fn take_unsaved(&mut self) -> Vec<u32> {
        let listed = std::mem::take(&mut self.unsaved);
        let fresh = self.saved_len..self.slots.len() as u32;
        self.saved_len = self.slots.len() as u32;
        self.in_key_order(listed.into_iter().chain(fresh), |a| a.unsaved)
    }

    /// Those of `slots` whose aggregate passes `keep`, sorted by (metric, combination).
    /// Sorted as packed keys beside the slot numbers: comparing through the slots was a
    /// quarter of emitting.
    fn in_key_order(
        &self,
        slots: impl Iterator<Item = u32>,
        keep: impl Fn(&Aggregate) -> bool,
    ) -> Vec<u32> {
        let mut keyed: Vec<(u64, u32, u32)> = slots
            .filter_map(|slot| {
                let (metric, combo, agg) = &self.slots[slot as usize];
                keep(agg).then(|| (metric.sort_key(), *combo, slot))
            })
            .collect();
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, _, slot)| slot).collect()
    }

    /// How many slots may be unemitted (an upper bound).
    fn unemitted_bound(&self) -> usize {
        self.unemitted.len() + self.slots.len() - self.emitted_len as usize
    }
}

/// A key group's windows by start, oldest first.
type Timeline = VecDeque<(i64, Window)>;

/// Where window `start` is in a timeline, or where it would go. Searched from the newest: an
/// action almost always lands in the latest window or the one before.
fn position(windows: &Timeline, start: i64) -> Result<usize, usize> {
    let mut i = windows.len();
    while i > 0 {
        let s = windows[i - 1].0;
        if s == start {
            return Ok(i - 1);
        }
        if s < start {
            return Err(i);
        }
        i -= 1;
    }
    Err(0)
}

/// The window `start` of a timeline, created when missing.
fn window_at(windows: &mut Timeline, start: i64) -> &mut Window {
    let i = match position(windows, start) {
        Ok(i) => i,
        Err(i) => {
            let window = Window::sized_like(windows.back().map(|(_, w)| w));
            windows.insert(i, (start, window));
            i
        }
    };
    &mut windows[i].1
}

/// The windows of a range of key groups.
#[derive(Debug)]
pub struct Windows {
    first_key_group: u16,
    by_key_group: Vec<Timeline>,
    /// Windows dropped since the last checkpoint (key group, start).
    dropped: Vec<(u16, i64)>,
    aggregates: usize,
    unsaved: usize,
}

impl Windows {
    pub fn new(first_key_group: u16, key_groups: u16) -> Windows {
        Windows {
            first_key_group,
            by_key_group: (0..key_groups).map(|_| VecDeque::new()).collect(),
            dropped: Vec::new(),
            aggregates: 0,
            unsaved: 0,
        }
    }

    /// Where key group `kg` is in `by_key_group` (out of range when not owned).
    fn position_of(&self, kg: u16) -> usize {
        usize::from(kg.wrapping_sub(self.first_key_group))
    }

    pub fn has_window(&self, kg: u16, start: i64) -> bool {
        self.by_key_group
            .get(self.position_of(kg))
            .is_some_and(|w| position(w, start).is_ok())
    }

    /// The aggregate of `key`, created when missing, marked changed (to emit and to save).
    /// `None` for a key group not owned.
    pub fn change(&mut self, (kg, start, metric, combo): AggregateKey) -> Option<&mut Aggregate> {
        let i = self.position_of(kg);
        let window = window_at(self.by_key_group.get_mut(i)?, start);
        let slot = match window.index.get(&(metric, combo)) {
            Some(slot) => *slot,
            None => {
                self.aggregates += 1;
                window.push(metric, combo, Aggregate::default())
            }
        };
        if window.mark_unsaved(slot) {
            self.unsaved += 1;
        }
        window.mark_dirty(slot);
        Some(&mut window.slots[slot as usize].2)
    }

    /// Emits the changed aggregates of key group `kg`'s windows that start before `before`,
    /// in key order, and marks them emitted.
    pub fn emit_before(
        &mut self,
        kg: u16,
        before: i64,
        emit: &mut impl FnMut(AggregateKey, &Aggregate),
    ) {
        let i = self.position_of(kg);
        let Some(windows) = self.by_key_group.get_mut(i) else {
            return;
        };
        for (start, window) in windows.iter_mut().take_while(|(s, _)| *s < before) {
            self.unsaved += emit_window(kg, *start, window, emit);
        }
    }

    /// Drops key group `kg`'s windows that start before `before`, emitting what changed in
    /// them first.
    pub fn drop_before(
        &mut self,
        kg: u16,
        before: i64,
        emit: &mut impl FnMut(AggregateKey, &Aggregate),
    ) {
        let i = self.position_of(kg);
        let Some(windows) = self.by_key_group.get_mut(i) else {
            return;
        };
        while windows.front().is_some_and(|(s, _)| *s < before) {
            let Some((start, mut window)) = windows.pop_front() else {
                break;
            };
            self.unsaved += emit_window(kg, start, &mut window, emit);
            self.aggregates -= window.slots.len();
            self.unsaved -= window.slots.iter().filter(|(_, _, a)| a.unsaved).count();
            self.dropped.push((kg, start));
        }
    }

    /// Every changed aggregate of every window, in key order (the end of a finite input).
    pub fn emit_all(&mut self, emit: &mut impl FnMut(AggregateKey, &Aggregate)) {
        let first = self.first_key_group;
        let mut newly_unsaved = 0;
        for (i, windows) in self.by_key_group.iter_mut().enumerate() {
            for (start, window) in windows.iter_mut() {
                newly_unsaved += emit_window(first + i as u16, *start, window, emit);
            }
        }
        self.unsaved += newly_unsaved;
    }

    /// Aggregates changed since the last checkpoint, and the windows dropped since; both
    /// count as saved afterwards. `closed_before`: per key group, where open windows start.
    pub fn take_unsaved(
        &mut self,
        closed_before: &[i64],
        save: &mut impl FnMut(AggregateKey, &Aggregate),
    ) -> Vec<(u16, i64)> {
        let first = self.first_key_group;
        for (i, windows) in self.by_key_group.iter_mut().enumerate() {
            let closed = closed_before.get(i).copied().unwrap_or(i64::MIN);
            for (start, window) in windows.iter_mut() {
                for slot in window.take_unsaved() {
                    let (metric, combo, agg) = &mut window.slots[slot as usize];
                    agg.unsaved = false;
                    agg.stored_dirty = agg.dirty && *start < closed;
                    save((first + i as u16, *start, *metric, *combo), agg);
                }
            }
        }
        self.unsaved = 0;
        std::mem::take(&mut self.dropped)
    }

    /// Puts an aggregate read from the store (or merged in by a reconfiguration) in place,
    /// adding it to one of the same key. It counts as unsaved when `unsaved` is set.
    pub fn put(&mut self, (kg, start, metric, combo): AggregateKey, mut agg: Aggregate) {
        let i = self.position_of(kg);
        let Some(windows) = self.by_key_group.get_mut(i) else {
            return;
        };
        let (dirty, unsaved) = (agg.dirty, agg.unsaved);
        (agg.dirty, agg.unsaved) = (false, false);
        let window = window_at(windows, start);
        let slot = match window.index.get(&(metric, combo)) {
            Some(slot) => {
                window.slots[*slot as usize].2.merge(&agg);
                *slot
            }
            None => {
                self.aggregates += 1;
                window.push(metric, combo, agg)
            }
        };
        if dirty {
            window.mark_dirty(slot);
        }
        if unsaved && window.mark_unsaved(slot) {
            self.unsaved += 1;
        }
    }

    /// Takes every aggregate out (a reconfiguration maps them to a new definition).
    pub fn drain(&mut self) -> Vec<(AggregateKey, Aggregate)> {
        let first = self.first_key_group;
        let mut all = Vec::with_capacity(self.aggregates);
        for (i, windows) in self.by_key_group.iter_mut().enumerate() {
            for (start, window) in std::mem::take(windows) {
                for (metric, combo, agg) in window.slots {
                    all.push(((first + i as u16, start, metric, combo), agg));
                }
            }
        }
        self.aggregates = 0;
        self.unsaved = 0;
        all
    }

    #[cfg(test)]
    pub fn get(&self, (kg, start, metric, combo): &AggregateKey) -> Option<&Aggregate> {
        let windows = self.by_key_group.get(self.position_of(*kg))?;
        let window = &windows[position(windows, *start).ok()?].1;
        let slot = window.index.get(&(*metric, *combo))?;
        Some(&window.slots[*slot as usize].2)
    }

    pub fn len(&self) -> usize {
        self.aggregates
    }

    pub fn is_empty(&self) -> bool {
        self.aggregates == 0
    }

    pub fn window_count(&self) -> usize {
        self.by_key_group.iter().map(VecDeque::len).sum()
    }

    pub fn unemitted(&self) -> usize {
        self.by_key_group
            .iter()
            .flatten()
            .flat_map(|(_, w)| &w.slots)
            .filter(|(_, _, a)| a.dirty)
            .count()
    }

    /// Aggregates changed since the last checkpoint, and windows dropped since.
    pub fn unsaved(&self) -> usize {
        self.unsaved + self.dropped.len()
    }
}

/// Emits a window's changed aggregates sorted by (metric, combination); returns how many of
/// them became unsaved.
fn emit_window(
    kg: u16,
    start: i64,
    window: &mut Window,
    emit: &mut impl FnMut(AggregateKey, &Aggregate),
) -> usize {
    if window.unemitted_bound() == 0 {
        return 0;
    }
    let mut newly_unsaved = 0;
    for slot in window.take_unemitted() {
        let (metric, combo, agg) = &mut window.slots[slot as usize];
        emit((kg, start, *metric, *combo), agg);
        agg.dirty = false;
        if agg.stored_dirty && window.mark_unsaved(slot) {
            newly_unsaved += 1;
        }
    }
    newly_unsaved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emitted(w: &mut Windows, kg: u16, before: i64) -> Vec<AggregateKey> {
        let mut keys = Vec::new();
        w.emit_before(kg, before, &mut |k, _| keys.push(k));
        keys
    }

    #[test]
    fn changes_are_emitted_once_in_key_order_and_saved() {
        let mut w = Windows::new(10, 2);
        assert!(w.change((9, 0, Metric::Started, 0)).is_none(), "not owned");
        for (metric, combo) in [
            (Metric::Wip(1), 3),
            (Metric::Started, 7),
            (Metric::Wip(1), 3),
        ] {
            w.change((10, 60, metric, combo)).unwrap().count += 1;
        }
        w.change((11, 0, Metric::Started, 0)).unwrap().count += 1;
        assert_eq!((w.len(), w.window_count(), w.unsaved()), (3, 2, 3));
        assert_eq!(emitted(&mut w, 10, 60), vec![], "window 60 is still open");
        assert_eq!(
            emitted(&mut w, 10, 120),
            vec![(10, 60, Metric::Started, 7), (10, 60, Metric::Wip(1), 3)]
        );
        assert_eq!(emitted(&mut w, 10, 120), vec![], "emitted once");
        assert_eq!(w.get(&(10, 60, Metric::Wip(1), 3)).unwrap().count, 2);

        let mut saved = Vec::new();
        assert_eq!(
            w.take_unsaved(&[120, 0], &mut |k, a| saved.push((k, a.count))),
            vec![]
        );
        assert_eq!(saved.len(), 3);
        assert_eq!(w.unsaved(), 0);

        // A late change is emitted again. Saved before it was emitted, it is saved again
        // after (emitting an aggregate saved as emitted, or in an open window, saves
        // nothing).
        w.change((10, 60, Metric::Started, 7)).unwrap().count += 1;
        let mut flags = Vec::new();
        w.take_unsaved(&[120, 0], &mut |k, a| flags.push((k, a.stored_dirty)));
        assert_eq!(flags, vec![((10, 60, Metric::Started, 7), true)]);
        assert_eq!(emitted(&mut w, 10, 120).len(), 1);
        assert_eq!(w.unsaved(), 1);
        w.take_unsaved(&[120, 0], &mut |_, a| assert!(!a.stored_dirty));
        w.change((10, 60, Metric::Started, 7)).unwrap().count += 1;
        // Saved unemitted, then dropped (emitted on the way out): nothing left to save.
        w.take_unsaved(&[120, 0], &mut |_, _| {});
        let mut last = Vec::new();
        w.drop_before(10, 120, &mut |k, a| last.push((k, a.count)));
        assert_eq!(last, vec![((10, 60, Metric::Started, 7), 3)]);
        assert_eq!((w.len(), w.window_count(), w.unsaved()), (1, 1, 1));
        assert_eq!(w.take_unsaved(&[180, 0], &mut |_, _| {}), vec![(10, 60)]);
        assert!(!w.has_window(10, 60) && w.has_window(11, 0));
    }

    #[test]
    fn restored_aggregates_are_neither_emitted_nor_saved_until_they_change() {
        let mut w = Windows::new(0, 1);
        for combo in 0..4 {
            let agg = Aggregate {
                count: 1,
                ..Aggregate::default()
            };
            w.put((0, 0, Metric::Started, combo), agg);
        }
        w.change((0, 0, Metric::Started, 2)).unwrap().count += 1;
        w.change((0, 0, Metric::Entered(0), 9)).unwrap().count += 1;
        assert_eq!((w.len(), w.unemitted(), w.unsaved()), (5, 2, 2));
        let mut saved = Vec::new();
        w.take_unsaved(&[0], &mut |k, a| saved.push((k.2, k.3, a.count)));
        assert_eq!(
            saved,
            vec![(Metric::Started, 2, 2), (Metric::Entered(0), 9, 1)]
        );
        assert_eq!(
            emitted(&mut w, 0, 60),
            vec![(0, 0, Metric::Started, 2), (0, 0, Metric::Entered(0), 9)]
        );
        assert_eq!((w.unemitted(), w.unsaved()), (0, 0));
    }

    #[test]
    fn sort_keys_order_metrics_as_they_compare() {
        let metrics = [
            Metric::Variant(70_000),
            Metric::Transition(1, 0),
            Metric::Started,
            Metric::Return(0, 3),
            Metric::Wip(2),
            Metric::Transition(0, 5),
            Metric::Variant(3),
            Metric::SlaBreach(1),
            Metric::Wip(1),
            Metric::SkippedSteps,
            Metric::Outcome(0),
            Metric::Duration(4),
            Metric::Entered(u16::MAX),
            Metric::Completed,
            Metric::Abandoned,
        ];
        let mut by_ord = metrics.to_vec();
        by_ord.sort();
        let mut by_key = metrics.to_vec();
        by_key.sort_by_key(Metric::sort_key);
        assert_eq!(by_ord, by_key);
    }
}
