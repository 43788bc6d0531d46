//! The partial aggregates of the retained windows, per owned key group and window.
//!
//! A window collects contributions in a log and sums them into aggregates only when it
//! emits. On this kind of traffic almost every aggregate (key group, window, metric, full
//! dimension combination) holds one or two contributions, so a map looked up per
//! contribution paid a cache miss for nearly nothing; an append to the key group's current
//! window does not, and emission sorts the records into key order anyway. Windows are not
//! stored: a restore rebuilds them from the instances (see
//! [`super::ProcessEngine::restore`]).

use std::collections::VecDeque;

use super::{Aggregate, AggregateKey, LEFT, Metric, NO_STEP, Tally};

/// A window's log is summed (not emitted) once it holds this many contributions and twice
/// as many as the window has aggregates: on traffic where many contributions share an
/// aggregate, memory stays a small multiple of the aggregates, and each contribution is
/// merged a bounded number of times.
const FOLD_AT: usize = 4096;

/// A log this many times smaller than the window's aggregates is added to them in place
/// (a binary search, and an insertion for a new aggregate) instead of merged into a
/// rebuilt window.
const IN_PLACE_RATIO: usize = 4;

/// One contribution to an aggregate, not yet summed.
///
/// 32 bytes (the metric is its order, see [`Metric::from_sort_key`]): a window's log is
/// written once per contribution and sorted when it is summed.
#[derive(Clone, Copy, Debug)]
struct Delta {
    /// `metric.sort_key()`: records are emitted in this order.
    order: u64,
    /// A step's exit: the time spent in milliseconds, else 0.
    millis: i64,
    combo: u32,
    tally: Tally,
    /// A step's exit: the step it went to, else [`NO_STEP`].
    to: u16,
    /// 1 adds the contribution, -1 takes it back.
    weight: i8,
}

/// Where an aggregate goes in a window: by metric kind, then dimension combination, then
/// the metric's qualifiers (its step, outcome …), so that the aggregates one record carries
/// (one kind's, of one combination: see [`Cell`]) are next to each other.
fn position_key(order: u64, combo: u32) -> u128 {
    u128::from(order >> 56) << 96 | u128::from(combo) << 64 | u128::from(order)
}

/// A summed aggregate and its key. Its order is computed, not stored: millions of entries
/// stay in memory for the retention.
#[derive(Clone, Debug)]
pub struct Entry {
    pub combo: u32,
    pub metric: Metric,
    pub agg: Aggregate,
}

/// What one metric record carries: the aggregates of one metric kind (one variant of
/// [`Metric`]: `step`, `outcome` …) in one key group's window for one dimension combination,
/// in key order. Re-emitted whole when any of them changed, so the record replaces the one before.
pub struct Cell<'a> {
    pub key_group: u16,
    pub start: i64,
    pub aggregates: &'a [Entry],
}

impl Entry {
    fn new(metric: Metric, combo: u32) -> Entry {
        Entry {
            combo,
            metric,
            agg: Aggregate::default(),
        }
    }

    fn key(&self) -> u128 {
        position_key(self.metric.sort_key(), self.combo)
    }

    /// Whether it belongs to the same record as `other` in its window: the same kind of
    /// metric (the same variant of [`Metric`], qualifiers aside) and combination.
    fn same_cell(&self, other: &Entry) -> bool {
        self.combo == other.combo
            && std::mem::discriminant(&self.metric) == std::mem::discriminant(&other.metric)
    }

    /// Adds a contribution's value.
    fn add(&mut self, d: &Delta) {
        let agg = &mut self.agg;
        let weight = i64::from(d.weight);
        for (count, n) in agg.counts.iter_mut().zip(d.tally) {
            *count += weight * i64::from(n);
        }
        // A step's exits carry the time spent in it and where they went.
        if matches!(self.metric, Metric::Step(_)) && d.tally[LEFT] != 0 {
            let exits = agg.exits.get_or_insert_with(Box::default);
            exits.add(d.millis, d.to, weight * i64::from(d.tally[LEFT]));
        }
    }
}

/// The aggregates of one window: those summed so far in key order, and the contributions
/// since.
#[derive(Debug, Default)]
struct Window {
    /// Sorted by [`position_key`], each key once.
    summed: Vec<Entry>,
    log: Vec<Delta>,
    /// Entries of `summed` whose `dirty` flag is set.
    dirty: usize,
}

impl Window {
    /// With a log sized like its predecessor's (summed or not yet): windows of a key group see
    /// about as many contributions, and growing a vector step by step costs more than filling
    /// it.
    fn sized_like(previous: Option<&Window>) -> Window {
        let n = previous.map_or(0, |w| w.log.len().max(w.summed.len() + w.summed.len() / 8));
        Window {
            log: Vec::with_capacity(n),
            ..Window::default()
        }
    }

    /// Sums the log into the aggregates (each one it touches is marked changed); returns how
    /// many aggregates it created.
    fn fold(&mut self) -> usize {
        if self.log.is_empty() {
            return 0;
        }
        // A few late contributions to a window summed before go in place: rebuilding the
        // whole window for them (a window is emitted again for each batch of late ones) was
        // most of the summing.
        if self.log.len() * IN_PLACE_RATIO <= self.summed.len() {
            let mut log = std::mem::take(&mut self.log);
            let mut created = 0;
            for d in &log {
                // Always a metric: orders come from `Metric::sort_key`.
                let Some(metric) = Metric::from_sort_key(d.order) else {
                    continue;
                };
                let (i, new) = self.entry(metric, d.combo);
                created += usize::from(new);
                self.summed[i].add(d);
                self.mark_dirty(i);
            }
            log.clear();
            self.log = log;
            return created;
        }
        let mut log = std::mem::take(&mut self.log);
        log.sort_unstable_by_key(|d| position_key(d.order, d.combo));
        // Sized for the distinct keys, not the contributions: the window keeps this vector
        // for the retention, and room left for keys that never come is memory paged in for
        // nothing.
        let distinct = 1 + log
            .windows(2)
            .filter(|p| (p[0].order, p[0].combo) != (p[1].order, p[1].combo))
            .count();
        let mut old = std::mem::take(&mut self.summed).into_iter().peekable();
        let mut summed = Vec::with_capacity(old.len() + distinct);
        let mut created = 0;
        let mut deltas = log.iter().peekable();
        while let Some(first) = deltas.next() {
            let key = position_key(first.order, first.combo);
            while let Some(e) = old.next_if(|e| e.key() < key) {
                summed.push(e);
            }
            let mut entry = match old.next_if(|e| e.key() == key) {
                Some(entry) => entry,
                None => {
                    // Always a metric: orders come from `Metric::sort_key`.
                    let Some(metric) = Metric::from_sort_key(first.order) else {
                        continue;
                    };
                    created += 1;
                    Entry::new(metric, first.combo)
                }
            };
            entry.add(first);
            while let Some(d) = deltas.next_if(|d| position_key(d.order, d.combo) == key) {
                entry.add(d);
            }
            if !entry.agg.dirty {
                entry.agg.dirty = true;
                self.dirty += 1;
            }
            summed.push(entry);
        }
        summed.extend(old);
        self.summed = summed;
        created
    }

    /// Where a key is in `summed`, created (empty, not dirty) when missing; and whether it
    /// was created.
    fn entry(&mut self, metric: Metric, combo: u32) -> (usize, bool) {
        let key = position_key(metric.sort_key(), combo);
        match self.summed.binary_search_by_key(&key, Entry::key) {
            Ok(i) => (i, false),
            Err(i) => {
                self.summed.insert(i, Entry::new(metric, combo));
                (i, true)
            }
        }
    }

    fn mark_dirty(&mut self, i: usize) {
        let agg = &mut self.summed[i].agg;
        if !agg.dirty {
            agg.dirty = true;
            self.dirty += 1;
        }
    }
}

/// A key group's windows by start, oldest first.
type Timeline = VecDeque<(i64, Window)>;

/// Where window `start` is in a timeline, or where it would go. The two newest first: an
/// action almost always lands in the latest window or the one before.
fn position(windows: &Timeline, start: i64) -> Result<usize, usize> {
    let n = windows.len();
    for i in (n.saturating_sub(2)..n).rev() {
        let s = windows[i].0;
        if s == start {
            return Ok(i);
        }
        if s < start {
            return Err(i + 1);
        }
    }
    // Older than the two latest (a late action's, or one's history): a binary search.
    windows.binary_search_by_key(&start, |(s, _)| *s)
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
    /// Summed aggregates (contributions still in a log are not counted).
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

    /// Adds a contribution to the aggregate of `key`: `weight` times `tally` to its
    /// counters, and for a step's exit (time spent in ms, next step) the time `weight` times
    /// to its sum, its sketch and its edge to the next step. Nothing for a key group not
    /// owned.
    pub fn add(
        &mut self,
        (kg, start, metric, combo): AggregateKey,
        weight: i8,
        exit: Option<(i64, u16)>,
        tally: Tally,
    ) {
        let i = self.position_of(kg);
        let Some(windows) = self.by_key_group.get_mut(i) else {
            return;
        };
        let window = window_at(windows, start);
        window.log.push(Delta {
            order: metric.sort_key(),
            millis: exit.map_or(0, |(ms, _)| ms),
            combo,
            tally,
            to: exit.map_or(NO_STEP, |(_, to)| to),
            weight,
        });
        if window.log.len() >= FOLD_AT.max(2 * window.summed.len()) {
            self.aggregates += window.fold();
        }
    }

    /// Emits the changed aggregates of key group `kg`'s windows that start before `before`,
    /// in key order, and marks them emitted.
    pub fn emit_before(&mut self, kg: u16, before: i64, emit: &mut impl FnMut(Cell<'_>)) {
        self.emit_between(kg, i64::MIN, before, emit);
    }

    /// [`Windows::emit_before`] for the windows that start in `from..before` only.
    pub fn emit_between(
        &mut self,
        kg: u16,
        from: i64,
        before: i64,
        emit: &mut impl FnMut(Cell<'_>),
    ) {
        let i = self.position_of(kg);
        let Some(windows) = self.by_key_group.get_mut(i) else {
            return;
        };
        let first = position(windows, from).unwrap_or_else(|at| at);
        for (start, window) in windows.range_mut(first..).take_while(|(s, _)| *s < before) {
            self.aggregates += emit_window(kg, *start, window, emit);
        }
    }

    /// Drops key group `kg`'s windows that start before `before`, emitting what changed in
    /// them first.
    pub fn drop_before(&mut self, kg: u16, before: i64, emit: &mut impl FnMut(Cell<'_>)) {
        let i = self.position_of(kg);
        let Some(windows) = self.by_key_group.get_mut(i) else {
            return;
        };
        while windows.front().is_some_and(|(s, _)| *s < before) {
            let Some((start, mut window)) = windows.pop_front() else {
                break;
            };
            self.aggregates += emit_window(kg, start, &mut window, emit);
            self.aggregates -= window.summed.len();
        }
    }

    /// Every changed aggregate of every window, in key order (the end of a finite input).
    pub fn emit_all(&mut self, emit: &mut impl FnMut(Cell<'_>)) {
        let first = self.first_key_group;
        for (i, windows) in self.by_key_group.iter_mut().enumerate() {
            for (start, window) in windows.iter_mut() {
                self.aggregates += emit_window(first + i as u16, *start, window, emit);
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
        self.aggregates += window.fold();
        let (i, created) = window.entry(metric, combo);
        self.aggregates += usize::from(created);
        let existing = &mut window.summed[i].agg;
        existing.merge(&agg);
        existing.emitted |= agg.emitted;
        if agg.dirty {
            window.mark_dirty(i);
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
            self.aggregates += window.fold();
            let dirty = dirty(*start);
            window.dirty = if dirty { window.summed.len() } else { 0 };
            for entry in &mut window.summed {
                entry.agg.dirty = dirty;
                entry.agg.emitted = !dirty;
            }
        }
    }

    /// Takes every aggregate out (a reconfiguration maps them to a new definition).
    pub fn drain(&mut self) -> Vec<(AggregateKey, Aggregate)> {
        let first = self.first_key_group;
        let mut all = Vec::with_capacity(self.aggregates);
        for (i, windows) in self.by_key_group.iter_mut().enumerate() {
            for (start, mut window) in std::mem::take(windows) {
                window.fold();
                for e in window.summed {
                    all.push(((first + i as u16, start, e.metric, e.combo), e.agg));
                }
            }
        }
        self.aggregates = 0;
        all
    }

    /// The aggregate of `key` as it is now (its window's contributions summed first).
    #[cfg(test)]
    pub fn get(&mut self, (kg, start, metric, combo): &AggregateKey) -> Option<&Aggregate> {
        let i = self.position_of(*kg);
        let windows = self.by_key_group.get_mut(i)?;
        let at = position(windows, *start).ok()?;
        let window = &mut windows[at].1;
        self.aggregates += window.fold();
        let key = position_key(metric.sort_key(), *combo);
        let i = window.summed.binary_search_by_key(&key, Entry::key).ok()?;
        Some(&window.summed[i].agg)
    }

    /// Summed aggregates (not the contributions of windows that have not emitted yet).
    pub fn len(&self) -> usize {
        self.aggregates
    }

    pub fn is_empty(&self) -> bool {
        self.aggregates == 0 && self.contributions() == 0
    }

    pub fn window_count(&self) -> usize {
        self.by_key_group.iter().map(VecDeque::len).sum()
    }

    /// Contributions not summed yet.
    pub fn contributions(&self) -> usize {
        self.by_key_group
            .iter()
            .flatten()
            .map(|(_, w)| w.log.len())
            .sum()
    }

    /// Summed aggregates changed since they were emitted.
    pub fn unemitted(&self) -> usize {
        self.by_key_group
            .iter()
            .flatten()
            .map(|(_, w)| w.dirty)
            .sum()
    }
}

/// Emits the records of a window's changed aggregates in key order: each record whole (see
/// [`Cell`]), but not one that was never emitted and holds nothing; returns how many
/// aggregates summing the log created.
fn emit_window(
    key_group: u16,
    start: i64,
    window: &mut Window,
    emit: &mut impl FnMut(Cell<'_>),
) -> usize {
    let created = window.fold();
    // From one changed aggregate to the next, each taken with its cell (its neighbours of
    // the same kind and combination), until all changed ones are out: a window emitted
    // again for a few late changes is not walked cell by cell.
    let summed = &mut window.summed[..];
    let (mut at, mut left) = (0, window.dirty);
    while left > 0
        && let Some(offset) = summed
            .get(at..)
            .and_then(|s| s.iter().position(|e| e.agg.dirty))
    {
        let changed = at + offset;
        let (mut from, mut to) = (changed, changed + 1);
        while from > at && summed[from - 1].same_cell(&summed[changed]) {
            from -= 1;
        }
        while to < summed.len() && summed[to].same_cell(&summed[changed]) {
            to += 1;
        }
        let aggregates = &mut summed[from..to];
        // A record a consumer may hold is emitted again, even holding nothing.
        let emitted = aggregates.iter().any(|e| e.agg.emitted || !e.agg.is_zero());
        if emitted {
            emit(Cell {
                key_group,
                start,
                aggregates,
            });
        }
        for e in aggregates.iter_mut() {
            left = left.saturating_sub(usize::from(e.agg.dirty));
            e.agg.dirty = false;
            e.agg.emitted = emitted;
        }
        at = to;
    }
    window.dirty = 0;
    created
}

#[cfg(test)]
mod tests {
    use super::super::sketch::Sketch;
    use super::*;
    use crate::process::{Exits, ONCE};

    /// A step's exit: out of WIP, one more left.
    const EXIT: Tally = [0, -1, 1, 0];

    /// Calls `f` with each aggregate an emitted record carries, and its key.
    fn each(mut f: impl FnMut(AggregateKey, &Aggregate)) -> impl FnMut(Cell<'_>) {
        move |cell| {
            for e in cell.aggregates {
                f((cell.key_group, cell.start, e.metric, e.combo), &e.agg);
            }
        }
    }

    fn emitted(w: &mut Windows, kg: u16, before: i64) -> Vec<AggregateKey> {
        let mut keys = Vec::new();
        w.emit_before(kg, before, &mut each(|k, _| keys.push(k)));
        keys
    }

    /// The records a window emits: the metrics and the combination of each.
    fn records(w: &mut Windows, kg: u16, before: i64) -> Vec<(Vec<Metric>, u32)> {
        let mut out = Vec::new();
        w.emit_before(kg, before, &mut |cell: Cell<'_>| {
            let metrics = cell.aggregates.iter().map(|e| e.metric).collect();
            out.push((metrics, cell.aggregates[0].combo));
        });
        out
    }

    #[test]
    fn a_window_is_found_where_a_search_from_the_newest_finds_it() {
        for starts in [
            vec![],
            vec![5],
            vec![0, 10],
            vec![0, 10, 20, 40, 50, 70, 80, 90],
        ] {
            let timeline: Timeline = starts
                .iter()
                .map(|s| (*s, Window::sized_like(None)))
                .collect();
            for start in -5..100 {
                let linear = match starts.iter().rposition(|s| *s <= start) {
                    Some(i) if starts[i] == start => Ok(i),
                    Some(i) => Err(i + 1),
                    None => Err(0),
                };
                assert_eq!(position(&timeline, start), linear, "{start} in {starts:?}");
            }
        }
    }

    /// Late contributions added in place to a window summed before give what summing them
    /// all at once gives: counts, exits (sketch and next steps), contributions taken back.
    #[test]
    fn late_contributions_added_in_place_sum_as_all_at_once() {
        type Contribution = (AggregateKey, i8, Option<(i64, u16)>, Tally);
        let contributions: Vec<Contribution> = (0..200u32)
            .map(|n| {
                let metric = match n % 3 {
                    0 => Metric::Step((n % 5) as u16),
                    1 => Metric::Outcome((n % 2) as u16),
                    _ => Metric::Started,
                };
                let exit = (n % 3 == 0 && n % 2 == 0).then_some((i64::from(n) * 1_000, 1));
                let tally = match exit {
                    Some(_) => EXIT,
                    None => ONCE,
                };
                let weight = if n % 7 == 6 { -1 } else { 1 };
                ((0, 0, metric, n % 13), weight, exit, tally)
            })
            .collect();
        let mut all_at_once = Windows::new(0, 1);
        let mut late = Windows::new(0, 1);
        for (i, (key, weight, exit, tally)) in contributions.iter().enumerate() {
            all_at_once.add(*key, *weight, *exit, *tally);
            late.add(*key, *weight, *exit, *tally);
            // The window is summed (emitted) after most of them, then after each late one:
            // from then on each fold adds one contribution to many aggregates, in place.
            if i >= 150 {
                late.emit_before(0, 60_000, &mut |_: Cell<'_>| {});
            }
        }
        let mut with_exits = 0;
        for (key, _, _, _) in &contributions {
            let whole = all_at_once.get(key).map(|a| (a.counts, a.exits.clone()));
            with_exits += usize::from(whole.as_ref().is_some_and(|(_, e)| e.is_some()));
            let in_place = late.get(key).map(|a| (a.counts, a.exits.clone()));
            assert_eq!(format!("{whole:?}"), format!("{in_place:?}"), "{key:?}");
        }
        assert!(with_exits > 0);
    }

    #[test]
    fn a_record_carries_one_kind_of_one_combination_and_is_emitted_again_whole() {
        let mut w = Windows::new(0, 1);
        let entered = [1, 1, 0, 0];
        for (metric, combo) in [
            (Metric::Step(2), 1),
            (Metric::Step(0), 1),
            (Metric::Step(1), 2),
            (Metric::Outcome(0), 1),
            (Metric::Completed, 1),
            (Metric::Outcome(1), 1),
        ] {
            w.add((0, 0, metric, combo), 1, None, entered);
        }
        assert_eq!(
            records(&mut w, 0, 60),
            vec![
                (vec![Metric::Completed], 1),
                (vec![Metric::Outcome(0), Metric::Outcome(1)], 1),
                (vec![Metric::Step(0), Metric::Step(2)], 1),
                (vec![Metric::Step(1)], 2),
            ]
        );
        // A late change to one step re-emits its record with the other step, which did not
        // change; a record that comes to nothing is still emitted (empty).
        w.add((0, 0, Metric::Step(2), 1), -1, None, entered);
        w.add((0, 0, Metric::Step(1), 2), -1, None, entered);
        let mut emitted = Vec::new();
        w.emit_before(0, 60, &mut |cell: Cell<'_>| {
            let held: Vec<_> = (cell.aggregates.iter())
                .filter(|e| !e.agg.is_zero())
                .map(|e| e.metric)
                .collect();
            emitted.push((cell.aggregates[0].combo, held));
        });
        assert_eq!(
            emitted,
            vec![(1, vec![Metric::Step(0)]), (2, vec![])],
            "both records again"
        );
        assert_eq!(records(&mut w, 0, 60), vec![], "nothing changed since");
    }

    #[test]
    fn a_contribution_in_a_log_is_32_bytes_and_its_metric_comes_back_from_its_order() {
        assert_eq!(std::mem::size_of::<Delta>(), 32);
        for n in [0, 1, 7, u16::MAX] {
            let metrics = [
                Metric::Started,
                Metric::Completed,
                Metric::Abandoned,
                Metric::Wip(n),
                Metric::Entered(n),
                Metric::Duration(n),
                Metric::Transition(n, 3),
                Metric::Transition(2, n),
                Metric::Return(n, n),
                Metric::Outcome(n),
                Metric::SlaBreach(n),
                Metric::SkippedSteps,
                Metric::Variant(u32::from(n)),
                Metric::Variant(u32::MAX - u32::from(n)),
                Metric::Step(n),
            ];
            for m in metrics {
                assert_eq!(Metric::from_sort_key(m.sort_key()), Some(m));
            }
        }
        for not_a_metric in [13 << 56, u64::MAX, (3 << 56) | (1 << 40), (1 << 56) | 5] {
            assert_eq!(
                Metric::from_sort_key(not_a_metric),
                None,
                "{not_a_metric:#x}"
            );
        }
    }

    #[test]
    fn changes_are_emitted_once_in_key_order() {
        let mut w = Windows::new(10, 2);
        w.add((9, 0, Metric::Completed, 0), 1, None, ONCE);
        assert_eq!(w.window_count(), 0, "key group 9 is not owned");
        for (metric, combo) in [
            (Metric::SlaBreach(1), 3),
            (Metric::Completed, 7),
            (Metric::SlaBreach(1), 3),
        ] {
            w.add((10, 60, metric, combo), 1, None, ONCE);
        }
        w.add((11, 0, Metric::Completed, 0), 1, None, ONCE);
        assert_eq!((w.contributions(), w.window_count()), (4, 2));
        assert_eq!(emitted(&mut w, 10, 60), vec![], "window 60 is still open");
        assert_eq!(
            emitted(&mut w, 10, 120),
            vec![
                (10, 60, Metric::Completed, 7),
                (10, 60, Metric::SlaBreach(1), 3)
            ]
        );
        assert_eq!((w.len(), w.unemitted(), w.contributions()), (2, 0, 1));
        assert_eq!(emitted(&mut w, 10, 120), vec![], "emitted once");
        assert_eq!(
            w.get(&(10, 60, Metric::SlaBreach(1), 3)).unwrap().count(),
            2
        );

        // A late change is emitted again, even to nothing: a consumer holds a value.
        w.add((10, 60, Metric::Completed, 7), -1, None, ONCE);
        let mut last = Vec::new();
        w.drop_before(10, 120, &mut each(|k, a| last.push((k, a.count()))));
        assert_eq!(last, vec![((10, 60, Metric::Completed, 7), 0)]);
        assert_eq!((w.len(), w.window_count()), (0, 1));
        assert!(!w.has_window(10, 60) && w.has_window(11, 0));
    }

    #[test]
    fn late_contributions_are_summed_into_the_emitted_aggregates_in_key_order() {
        let mut w = Windows::new(0, 1);
        w.add((0, 0, Metric::Step(1), 2), 1, Some((1_500, 2)), EXIT);
        w.add((0, 0, Metric::Completed, 2), 1, None, ONCE);
        w.add((0, 0, Metric::Step(1), 2), 1, Some((3_000, 3)), EXIT);
        assert_eq!(emitted(&mut w, 0, 60).len(), 2);
        // Late: one aggregate before the others, one between, one of them changed.
        w.add((0, 0, Metric::Outcome(0), 2), 1, None, ONCE);
        w.add((0, 0, Metric::Step(1), 2), -1, Some((1_500, 2)), EXIT);
        w.add((0, 0, Metric::Completed, 1), 1, None, ONCE);
        let mut out = Vec::new();
        w.emit_before(0, 60, &mut each(|k, a| out.push((k.2, k.3, a.clone()))));
        let keys: Vec<_> = out.iter().map(|(m, c, _)| (*m, *c)).collect();
        assert_eq!(
            keys,
            vec![
                (Metric::Completed, 1),
                (Metric::Outcome(0), 2),
                (Metric::Step(1), 2)
            ]
        );
        let duration = &out[2].2;
        assert_eq!((duration.counts, duration.sum_ms()), ([0, -1, 1, 0], 3_000));
        let mut sketch = Sketch::default();
        sketch.add(3_000);
        // The exit to step 2 was taken back: only the edge to step 3 is left.
        let expected = Exits {
            sketch,
            to: smallvec::smallvec![(3, 1, 3_000)],
        };
        assert_eq!(duration.exits.as_deref(), Some(&expected));
        assert_eq!(w.len(), 4);
        assert_eq!(w.get(&(0, 0, Metric::Completed, 2)).unwrap().count(), 1);
    }

    #[test]
    fn many_contributions_to_few_aggregates_do_not_pile_up_in_the_log() {
        let mut w = Windows::new(0, 1);
        let n = 10 * FOLD_AT as i64;
        for i in 0..n {
            w.add(
                (0, 0, Metric::Step(1), (i % 3) as u32),
                1,
                Some((i, 2)),
                EXIT,
            );
            assert!(w.contributions() < FOLD_AT, "summed along the way");
        }
        assert_eq!(w.unemitted(), 3, "summed, not emitted");
        let mut out = Vec::new();
        w.emit_before(
            0,
            60,
            &mut each(|k, a| out.push((k.3, a.counts[LEFT], a.sum_ms()))),
        );
        let expected: Vec<_> = (0..3)
            .map(|c| {
                let values = (0..n).filter(|i| i % 3 == c);
                (c as u32, values.clone().count() as i64, values.sum::<i64>())
            })
            .collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn what_comes_to_nothing_before_it_is_emitted_is_not_emitted() {
        let mut w = Windows::new(0, 1);
        w.add((0, 0, Metric::Completed, 1), 1, None, ONCE);
        w.add((0, 0, Metric::Completed, 1), -1, None, ONCE);
        w.add((0, 0, Metric::Outcome(0), 1), 1, None, ONCE);
        assert_eq!(emitted(&mut w, 0, 60), vec![(0, 0, Metric::Outcome(0), 1)]);
        assert_eq!(w.unemitted(), 0);
    }

    #[test]
    fn restored_windows_emit_open_ones_only() {
        let mut w = Windows::new(0, 1);
        for start in [0, 60, 120] {
            let agg = Aggregate {
                counts: [1, 0, 0, 0],
                ..Aggregate::default()
            };
            w.put((0, start, Metric::Completed, 0), agg.clone());
            w.put((0, start, Metric::Completed, 0), agg);
        }
        w.add((0, 60, Metric::Outcome(0), 0), 1, None, ONCE);
        w.mark_restored(0, |start| start >= 60);
        assert_eq!(w.get(&(0, 0, Metric::Completed, 0)).unwrap().count(), 2);
        assert_eq!(w.unemitted(), 3);
        assert_eq!(emitted(&mut w, 0, 180).len(), 3, "the open windows");
        // A change to a closed window is emitted, even to nothing.
        w.add((0, 0, Metric::Completed, 0), -2, None, ONCE);
        assert_eq!(emitted(&mut w, 0, 60), vec![(0, 0, Metric::Completed, 0)]);
    }

    #[test]
    fn sort_keys_order_metrics_as_they_compare() {
        let metrics = [
            Metric::Variant(70_000),
            Metric::Step(3),
            Metric::Step(0),
            Metric::Transition(1, 0),
            Metric::Completed,
            Metric::Return(0, 3),
            Metric::Wip(2),
            Metric::Transition(0, 5),
            Metric::Variant(3),
            Metric::SlaBreach(1),
            Metric::SlaBreach(1),
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
