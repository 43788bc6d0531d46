//! The partial aggregates of the retained windows, per owned key group and window.
//!
//! One small map per (key group, window) instead of one map over everything: an action
//! touches the few aggregates of its key group's current window, which stay in cache, and a
//! window is emitted and dropped as a unit. Windows are not stored: a restore rebuilds them
//! from the instances (see [`super::ProcessEngine::restore`]).

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::{Aggregate, AggregateKey, Metric};

/// The aggregates of one window. Slots are appended as aggregates appear; which of them are
/// unemitted is told by each aggregate's `dirty` flag, and found through the candidates:
/// every slot from `emitted_len` on, since a new aggregate is unemitted, and the older slots
/// listed in `unemitted` when their flag was set again. Most aggregates of a window are new,
/// so most of them are never listed.
#[derive(Debug, Default)]
struct Window {
    index: FxHashMap<(Metric, u32), u32>,
    slots: Vec<(Metric, u32, Aggregate)>,
    /// Slots before this were all looked at by the last emission.
    emitted_len: u32,
    /// Older slots changed since they were emitted (each listed once: when `dirty` is set).
    unemitted: Vec<u32>,
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

    /// The slot of an aggregate, created (empty, not dirty) when missing.
    fn slot(&mut self, metric: Metric, combo: u32) -> (u32, bool) {
        if let Some(slot) = self.index.get(&(metric, combo)) {
            return (*slot, false);
        }
        let slot = self.slots.len() as u32;
        self.slots.push((metric, combo, Aggregate::default()));
        self.index.insert((metric, combo), slot);
        (slot, true)
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

    /// The unemitted slots, in key order; afterwards none is listed.
    fn take_unemitted(&mut self) -> Vec<u32> {
        let listed = std::mem::take(&mut self.unemitted);
        let fresh = self.emitted_len..self.slots.len() as u32;
        self.emitted_len = self.slots.len() as u32;
        let mut keyed: Vec<(u64, u32, u32)> = listed
            .into_iter()
            .chain(fresh)
            .filter_map(|slot| {
                let (metric, combo, agg) = &self.slots[slot as usize];
                agg.dirty.then(|| (metric.sort_key(), *combo, slot))
            })
            .collect();
        // Packed keys beside the slot numbers: comparing through the slots was a quarter of
        // emitting.
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
    aggregates: usize,
}

impl Windows {
    pub fn new(first_key_group: u16, key_groups: u16) -> Windows {
        Windows {
            first_key_group,
            by_key_group: (0..key_groups).map(|_| VecDeque::new()).collect(),
            aggregates: 0,
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

    /// The aggregate of `key`, created when missing, marked changed (to emit). `None` for a
    /// key group not owned.
    pub fn change(&mut self, (kg, start, metric, combo): AggregateKey) -> Option<&mut Aggregate> {
        let i = self.position_of(kg);
        let window = window_at(self.by_key_group.get_mut(i)?, start);
        let (slot, created) = window.slot(metric, combo);
        self.aggregates += usize::from(created);
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
            emit_window(kg, *start, window, emit);
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
            emit_window(kg, start, &mut window, emit);
            self.aggregates -= window.slots.len();
        }
    }

    /// Every changed aggregate of every window, in key order (the end of a finite input).
    pub fn emit_all(&mut self, emit: &mut impl FnMut(AggregateKey, &Aggregate)) {
        let first = self.first_key_group;
        for (i, windows) in self.by_key_group.iter_mut().enumerate() {
            for (start, window) in windows.iter_mut() {
                emit_window(first + i as u16, *start, window, emit);
            }
        }
    }

    /// Adds an aggregate (mapped by a reconfiguration, or in a test) to the one of the same
    /// key, created when missing; the flags are or-ed.
    pub fn put(&mut self, (kg, start, metric, combo): AggregateKey, agg: Aggregate) {
        let i = self.position_of(kg);
        let Some(windows) = self.by_key_group.get_mut(i) else {
            return;
        };
        let window = window_at(windows, start);
        let (slot, created) = window.slot(metric, combo);
        self.aggregates += usize::from(created);
        let existing = &mut window.slots[slot as usize].2;
        existing.merge(&agg);
        existing.emitted |= agg.emitted;
        if agg.dirty {
            window.mark_dirty(slot);
        }
    }

    /// Sets, in every window of key group `kg`, every aggregate's `dirty` flag to `dirty(start)`
    /// and its `emitted` flag to the opposite (a restore: closed windows were emitted whole,
    /// open ones not at all).
    pub fn mark_restored(&mut self, kg: u16, dirty: impl Fn(i64) -> bool) {
        let i = self.position_of(kg);
        let Some(windows) = self.by_key_group.get_mut(i) else {
            return;
        };
        for (start, window) in windows.iter_mut() {
            let dirty = dirty(*start);
            window.unemitted.clear();
            window.emitted_len = if dirty { 0 } else { window.slots.len() as u32 };
            for (_, _, agg) in &mut window.slots {
                agg.dirty = dirty;
                agg.emitted = !dirty;
            }
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
}

/// Emits a window's changed aggregates sorted by (metric, combination), but not one that was
/// never emitted and holds nothing.
fn emit_window(
    kg: u16,
    start: i64,
    window: &mut Window,
    emit: &mut impl FnMut(AggregateKey, &Aggregate),
) {
    if window.unemitted_bound() == 0 {
        return;
    }
    for slot in window.take_unemitted() {
        let (metric, combo, agg) = &mut window.slots[slot as usize];
        agg.dirty = false;
        if agg.emitted || !agg.is_zero() {
            emit((kg, start, *metric, *combo), agg);
            agg.emitted = true;
        }
    }
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
    fn changes_are_emitted_once_in_key_order() {
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
        assert_eq!((w.len(), w.window_count(), w.unemitted()), (3, 2, 3));
        assert_eq!(emitted(&mut w, 10, 60), vec![], "window 60 is still open");
        assert_eq!(
            emitted(&mut w, 10, 120),
            vec![(10, 60, Metric::Started, 7), (10, 60, Metric::Wip(1), 3)]
        );
        assert_eq!(emitted(&mut w, 10, 120), vec![], "emitted once");
        assert_eq!(w.get(&(10, 60, Metric::Wip(1), 3)).unwrap().count, 2);

        // A late change is emitted again, even to nothing: a consumer holds a value.
        w.change((10, 60, Metric::Started, 7)).unwrap().count -= 1;
        let mut last = Vec::new();
        w.drop_before(10, 120, &mut |k, a| last.push((k, a.count)));
        assert_eq!(last, vec![((10, 60, Metric::Started, 7), 0)]);
        assert_eq!((w.len(), w.window_count()), (1, 1));
        assert!(!w.has_window(10, 60) && w.has_window(11, 0));
    }

    #[test]
    fn what_comes_to_nothing_before_it_is_emitted_is_not_emitted() {
        let mut w = Windows::new(0, 1);
        w.change((0, 0, Metric::Started, 1)).unwrap().count += 1;
        w.change((0, 0, Metric::Started, 1)).unwrap().count -= 1;
        w.change((0, 0, Metric::Entered(0), 1)).unwrap().count += 1;
        assert_eq!(emitted(&mut w, 0, 60), vec![(0, 0, Metric::Entered(0), 1)]);
        assert_eq!(w.unemitted(), 0);
    }

    #[test]
    fn restored_windows_emit_open_ones_only() {
        let mut w = Windows::new(0, 1);
        for start in [0, 60, 120] {
            let agg = Aggregate {
                count: 1,
                ..Aggregate::default()
            };
            w.put((0, start, Metric::Started, 0), agg.clone());
            w.put((0, start, Metric::Started, 0), agg);
        }
        w.mark_restored(0, |start| start >= 60);
        assert_eq!(w.get(&(0, 0, Metric::Started, 0)).unwrap().count, 2);
        assert_eq!(w.unemitted(), 2);
        assert_eq!(emitted(&mut w, 0, 180).len(), 2, "the open windows");
        // A change to a closed window is emitted, even to nothing.
        w.change((0, 0, Metric::Started, 0)).unwrap().count -= 2;
        assert_eq!(emitted(&mut w, 0, 60), vec![(0, 0, Metric::Started, 0)]);
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
