//! The process stage: joined actions → process instances → step metrics, returns, outcomes,
//! variants and SLA alerts, as tumbling-window partial aggregates per key group.
//!
//! Pure logic: no I/O. An instance lives in the key group of its instance key (an
//! application number), so everything about one instance happens in one key group, and a key
//! group's results depend only on its own actions in arrival order. Time is event time (an
//! action's first event time), per key group, like the join.
//!
//! Per action and definition: the first step whose predicate matches is the action's step
//! (none: the action is *unmatched*); the instance key is the first present `instanceKey`
//! field. An instance's metrics are derived from its actions in event-time order (see
//! [`instance`]): entering a different step closes the current one (its duration goes into
//! the step's sketch, and the edge to the new step into its exits: a transition), and counts
//! a *return* when the new step comes earlier in the definition. A final step completes the instance; `instanceTimeout` without
//! actions abandons it. An action whose tracking number the instance already has is ignored.
//!
//! Windows: each contribution goes to the tumbling window of its event time, per key group.
//! A window's changed aggregates are emitted once the key group's time passes the window's
//! end plus one window, and again (same idempotent key, full value) at the next checkpoint
//! after a late action changes them; the window is dropped after the retention.

pub mod codec;
pub mod exposition;
pub mod instance;
pub mod plan;
pub mod predicate;
pub mod reconfigure;
pub mod record;
pub mod sketch;
pub mod thread;
pub mod windows;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use weft_crds::keygroup::{KeyGroupRange, key_group};

use crate::sources::scan::same_bytes;
use crate::time::MaybeTime;

pub use instance::{
    Applied, DimensionIds, Instance, InstanceKey, Instances, SlotId, tracking_fingerprint,
};
pub use plan::{Classified, ClassifiedBatch, ProcessPlan};
use record::RecordTexts;
use sketch::Sketch;
use windows::Windows;

/// The value a dimension takes once its distinct values are used up.
pub const OTHER: &str = "other";
/// Actions kept per instance; later ones are counted and ignored.
const ACTION_LIMIT: usize = 256;

/// A metric of the stage: the key of a partial aggregate (with the dimension values), or of a
/// running total.
///
/// A step's entries, WIP, exits with their durations and edges, and starts are one aggregate,
/// [`Metric::Step`]: they are mostly counted at the same moments (entering a step is leaving
/// the one before). A record carries every step of its window, key group and combination
/// (see [`windows::Cell`]). Together this took the credit-card example at 500k actions from
/// 2.69M records to 0.86M.
/// `Started`, `Wip`, `Entered` and `Duration` remain as keys of the running totals (and of
/// checkpoints written before the step record) only; transitions are a step record's exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Metric {
    /// Total only: instances started (a step record's `started`).
    Started,
    Completed,
    Abandoned,
    /// Total only: net change of the instances in a step (a step record's `wip`).
    Wip(u16),
    /// Total only: entries into a step (a step record's `entered`).
    Entered(u16),
    /// Total only: exits from a step to another (a step record's `left`).
    Duration(u16),
    /// Neither: in checkpoints written before transitions were a step record's exits.
    Transition(u16, u16),
    Return(u16, u16),
    Outcome(u16),
    SlaBreach(u16),
    /// Instances whose first step is not the first, or that jump over a step.
    SkippedSteps,
    /// An ended instance's step sequence (an index into the definition's variant table).
    Variant(u32),
    /// A step: entries, net change of WIP, exits (with the time spent in the step) and
    /// instances started there; counters in [`Tally`] order.
    Step(u16),
}

/// What one contribution adds to its aggregate's counters (times its weight). For
/// [`Metric::Step`], `[entered, wip, left, started]`; for every other metric `[count, 0, 0, 0]`.
pub type Tally = [i8; 4];

/// The tally of a metric counted once.
pub const ONCE: Tally = [1, 0, 0, 0];
/// Positions in a step's tally.
pub const ENTERED: usize = 0;
pub const WIP: usize = 1;
pub const LEFT: usize = 2;
pub const STARTED: usize = 3;

impl Metric {
    /// A number that sorts as the metric does: the variant (in declaration order) in the top
    /// bits, then its fields (the second is at most a step, u16).
    pub fn sort_key(&self) -> u64 {
        let (variant, a, b): (u64, u64, u64) = match *self {
            Metric::Started => (0, 0, 0),
            Metric::Completed => (1, 0, 0),
            Metric::Abandoned => (2, 0, 0),
            Metric::Wip(s) => (3, s.into(), 0),
            Metric::Entered(s) => (4, s.into(), 0),
            Metric::Duration(s) => (5, s.into(), 0),
            Metric::Transition(x, y) => (6, x.into(), y.into()),
            Metric::Return(x, y) => (7, x.into(), y.into()),
            Metric::Outcome(o) => (8, o.into(), 0),
            Metric::SlaBreach(s) => (9, s.into(), 0),
            Metric::SkippedSteps => (10, 0, 0),
            Metric::Variant(v) => (11, v.into(), 0),
            Metric::Step(s) => (12, s.into(), 0),
        };
        variant << 56 | a << 16 | b
    }

    /// The metric whose [`Metric::sort_key`] this is (`None` for a number that is none).
    pub fn from_sort_key(key: u64) -> Option<Metric> {
        let a = (key >> 16) & 0xffff_ffff;
        let b = key & 0xffff;
        let one = u16::try_from(a).ok();
        let metric = match key >> 56 {
            0 => Metric::Started,
            1 => Metric::Completed,
            2 => Metric::Abandoned,
            3 => Metric::Wip(one?),
            4 => Metric::Entered(one?),
            5 => Metric::Duration(one?),
            6 => Metric::Transition(one?, b as u16),
            7 => Metric::Return(one?, b as u16),
            8 => Metric::Outcome(one?),
            9 => Metric::SlaBreach(one?),
            10 => Metric::SkippedSteps,
            11 => Metric::Variant(a as u32),
            12 => Metric::Step(one?),
            _ => return None,
        };
        (metric.sort_key() == key).then_some(metric)
    }
}

/// A partial aggregate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aggregate {
    /// `[count, 0, 0, 0]`, or a step's counters (see [`Tally`]).
    pub counts: [i64; 4],
    /// A step's exits: the time spent, and where they went.
    pub exits: Option<Box<Exits>>,
    /// Changed since it was last emitted.
    pub dirty: bool,
    /// Emitted at least once: a consumer may hold a value for its key, so it is emitted again
    /// when it changes, even to nothing. One never emitted that comes to nothing (what an
    /// instance contributed and took back before the window closed) is not emitted at all.
    pub emitted: bool,
}

/// The step an exit went to when it is not known (a reconfiguration removed it).
pub const NO_STEP: u16 = u16::MAX;

/// What a step's exits in one window add up to, besides their count: the time spent in the
/// step (a sketch) and, per next step, the exits to it and the sum of their times. The next
/// steps are the directly-follows edges (transitions) out of the step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exits {
    pub sketch: Sketch,
    /// (next step, exits to it, sum of their times in ms), by step, none all zero. Mostly
    /// one next step: held in place then.
    pub to: SmallVec<[(u16, i64, i64); 1]>,
}

impl Exits {
    /// Adds an exit after `millis` to step `to`, `weight` times (negative: takes it back).
    pub fn add(&mut self, millis: i64, to: u16, weight: i64) {
        self.sketch.add_weighted(millis, weight);
        self.add_to(to, weight, millis.saturating_mul(weight));
    }

    fn add_to(&mut self, to: u16, count: i64, sum_ms: i64) {
        if to == NO_STEP {
            return;
        }
        match self.to.binary_search_by_key(&to, |e| e.0) {
            Ok(i) => {
                let e = &mut self.to[i];
                e.1 += count;
                e.2 += sum_ms;
                if e.1 == 0 && e.2 == 0 {
                    self.to.remove(i);
                }
            }
            Err(i) if count != 0 || sum_ms != 0 => self.to.insert(i, (to, count, sum_ms)),
            Err(_) => {}
        }
    }

    pub fn merge(&mut self, other: &Exits) {
        self.sketch.merge(&other.sketch);
        for (to, count, sum_ms) in &other.to {
            self.add_to(*to, *count, *sum_ms);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sketch.is_empty() && self.to.is_empty()
    }
}

impl Aggregate {
    /// The count of a metric other than a step (a step's entries).
    pub fn count(&self) -> i64 {
        self.counts[0]
    }

    /// The time a step's exits spent in it, in milliseconds (the sketch keeps the sum).
    pub fn sum_ms(&self) -> i64 {
        self.exits.as_ref().map_or(0, |e| e.sketch.sum_ms)
    }

    /// Holds nothing: what a key without a record means.
    pub fn is_zero(&self) -> bool {
        self.counts == [0; 4] && self.exits.as_ref().is_none_or(|e| e.is_empty())
    }

    /// Adds another partial aggregate's values (not its flags).
    pub fn merge(&mut self, other: &Aggregate) {
        for (c, o) in self.counts.iter_mut().zip(other.counts) {
            *c += o;
        }
        if let Some(exits) = &other.exits {
            match &mut self.exits {
                Some(e) => e.merge(exits),
                None => self.exits = Some(exits.clone()),
            }
        }
    }
}

/// Values interned to small ids (dimension combinations, variants): aggregate keys stay
/// `Copy`, and a record names the values.
#[derive(Clone, Debug, Default)]
struct Interner<T: std::hash::Hash + Eq + Clone> {
    values: Vec<T>,
    ids: FxHashMap<T, u32>,
}

impl<T: std::hash::Hash + Eq + Clone> Interner<T> {
    fn id(&mut self, value: &T) -> u32 {
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        self.values.push(value.clone());
        let id = (self.values.len() - 1) as u32;
        self.ids.insert(value.clone(), id);
        id
    }

    fn from_values(values: Vec<T>) -> Self {
        let ids = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i as u32))
            .collect();
        Interner { values, ids }
    }
}

/// Running totals of one definition: the sum of every contribution, whatever window it went
/// to, keyed by metric (names are looked up only for the summary, in [`Totals`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub actions: u64,
    pub unmatched: u64,
    pub no_instance_key: u64,
    pub duplicates: u64,
    pub after_end: u64,
    pub over_limit: u64,
    pub late_metric_updates: u64,
    #[serde(with = "as_pairs")]
    pub metrics: FxHashMap<Metric, i64>,
    /// Per step.
    pub durations: Vec<Sketch>,
}

/// Totals over the whole run, per definition, by name (the summary's `processes` section).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub actions: u64,
    pub unmatched: u64,
    pub no_instance_key: u64,
    pub duplicates: u64,
    /// Actions for an instance that had already ended before their time.
    pub after_end: u64,
    /// Actions beyond the per-instance limit.
    pub over_limit: u64,
    pub started: i64,
    pub completed: i64,
    pub abandoned: i64,
    pub skipped_steps: i64,
    pub entered: BTreeMap<String, i64>,
    pub wip: BTreeMap<String, i64>,
    pub durations: BTreeMap<String, Sketch>,
    pub returns: BTreeMap<String, i64>,
    pub outcomes: BTreeMap<String, i64>,
    pub variants: BTreeMap<String, i64>,
    pub sla_breaches: BTreeMap<String, i64>,
    /// Contributions to windows already dropped (in the totals, in no window).
    pub late_metric_updates: u64,
}

/// Where the stage's records go.
pub trait ProcessOutput {
    fn metric(&mut self, record: &[u8]);
    fn alert(&mut self, record: &[u8]);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Sla,
    Timeout,
    Forget,
}

/// (deadline, kind, instance): fired in this order.
type Timer = (i64, TimerKind, SlotId);

#[derive(Clone, Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("key group {0} is not owned by this worker")]
    NotOwned(u16),
    #[error("{0}")]
    BadAction(String),
}

/// Adds `n` to a metric's total; a total of zero is not kept.
fn add_to_total(totals: &mut FxHashMap<Metric, i64>, metric: Metric, n: i64) {
    if n == 0 {
        return;
    }
    let total = totals.entry(metric).or_default();
    *total += n;
    if *total == 0 {
        totals.remove(&metric);
    }
}

/// Actions looked up ahead of being applied (see [`ProcessEngine::apply_many`]): enough to
/// overlap their memory reads, few enough that what they read is still in the cache.
const LOOKAHEAD: usize = 32;

/// The state of one definition over the owned key groups.
pub struct ProcessState {
    pub plan: ProcessPlan,
    /// Timers name an instance's slot, and its key is held in place (copied into the changed
    /// set when it changes): setting a timer or marking a change allocates nothing.
    instances: Instances,
    /// Changed since the last checkpoint: instance key and key group, listed when the
    /// instance's `unsaved` flag is set (a flag instead of a set: no second lookup per
    /// action), and for instances forgotten. A key may be listed twice (forgotten, then
    /// started again); the flag says whether it is still to write.
    dirty: Vec<(InstanceKey, u16)>,
    /// Per owned key group, a min-heap: cheaper than an ordered set, and a timer set twice
    /// (an ended instance's forget timer, at each late action) fires once, the second time
    /// finding its instance gone.
    timers: Vec<BinaryHeap<Reverse<Timer>>>,
    windows: Windows,
    /// Per owned key group: windows starting before this are closed.
    closed_before: Vec<i64>,
    pub names: Names,
    texts: RecordTexts,
    /// The totals; those of the step records are in `step_totals` until read (see
    /// [`ProcessState::counts`]).
    counts: Counts,
    /// Per step, what its records added to the totals of `Entered`, `Wip` and `Duration`
    /// since they were last merged into `counts`, and to `Started`: an addition to an array
    /// instead of up to four hash map updates per contribution.
    step_totals: Vec<[i64; 3]>,
    started_total: i64,
    /// Scratch vectors of [`ProcessState::contributions`], reused from action to action.
    spare: Vec<Vec<instance::Contribution>>,
    visits: Vec<instance::Visit>,
    /// Scratch: the dimension value ids of the action being applied.
    dims: Vec<u32>,
}

/// Up to this many values, a dimension's value is found by comparing it with each (see
/// [`Names::dimension_id`]).
const FEW_VALUES: usize = 8;

/// The value tables of a definition's state: dimension values, their combinations and the
/// variants (step sequences), interned to small ids.
#[derive(Clone, Debug, Default)]
pub struct Names {
    dimension_values: Vec<Vec<String>>,
    dimension_ids: Vec<FxHashMap<String, u32>>,
    combos: Interner<Vec<u32>>,
    variants: Interner<String>,
}

impl Names {
    fn new(dimensions: usize) -> Names {
        Names {
            dimension_values: vec![Vec::new(); dimensions],
            dimension_ids: vec![FxHashMap::default(); dimensions],
            ..Names::default()
        }
    }

    /// The id of a dimension value; once `max_values` distinct values are taken, new ones
    /// are `other`. A missing value is `other` too.
    fn dimension_id(&mut self, dim: usize, value: Option<&str>, max_values: usize) -> u32 {
        let value = value.unwrap_or(OTHER);
        // A dimension of a few values (channels, products) is searched in place: each action
        // looks up every dimension, and hashing the value cost more than comparing it with
        // a handful of short strings.
        let values = &self.dimension_values[dim];
        if values.len() <= FEW_VALUES {
            let found = values
                .iter()
                .position(|v| same_bytes(v.as_bytes(), value.as_bytes()));
            if let Some(id) = found {
                return id as u32;
            }
        } else if let Some(id) = self.dimension_ids[dim].get(value) {
            return *id;
        }
        let full = self.dimension_values[dim].len() >= max_values;
        let value = if full { OTHER } else { value };
        if let Some(id) = self.dimension_ids[dim].get(value) {
            return *id;
        }
        self.dimension_values[dim].push(value.to_string());
        let id = (self.dimension_values[dim].len() - 1) as u32;
        self.dimension_ids[dim].insert(value.to_string(), id);
        id
    }

    /// The dimension value ids of a combination.
    pub fn combo(&self, id: u32) -> &[u32] {
        self.combos
            .values
            .get(id as usize)
            .map_or(&[], Vec::as_slice)
    }

    pub fn variant(&self, id: u32) -> &str {
        self.variants
            .values
            .get(id as usize)
            .map_or("?", String::as_str)
    }

    pub fn dimension_value(&self, dim: usize, id: u32) -> &str {
        self.dimension_values
            .get(dim)
            .and_then(|v| v.get(id as usize))
            .map_or(OTHER, String::as_str)
    }
}

/// A partial aggregate's key: key group, window start, metric, dimension combination.
pub type AggregateKey = (u16, i64, Metric, u32);

/// What a checkpoint record holds besides instances and aggregates (which go to their own
/// column families, changes only).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProcessMeta {
    dimension_values: Vec<Vec<String>>,
    combos: Vec<Vec<u32>>,
    variants: Vec<String>,
    counts: Counts,
}

/// State changes of the process stage for a checkpoint: (key, Some(value) | None to delete).
/// Only instances: the windows are rebuilt from them on restore.
#[derive(Debug, Default)]
pub struct ProcessChanges {
    pub instances: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Replace the stored state whole: these changes are all of it.
    pub rewrite: bool,
}

impl ProcessChanges {
    /// These changes followed by `later`, as one write: a key's later value wins (the store
    /// writes changes in order), and a later rewrite replaces everything.
    pub fn then(mut self, later: ProcessChanges) -> ProcessChanges {
        if later.rewrite {
            return later;
        }
        self.instances.extend(later.instances);
        self
    }
}

impl ProcessState {
    fn new(plan: ProcessPlan, owned: KeyGroupRange) -> ProcessState {
        let dims = plan.dimensions.len();
        let steps = plan.steps.len();
        ProcessState {
            plan,
            instances: Instances::default(),
            dirty: Vec::new(),
            timers: (0..owned.len()).map(|_| BinaryHeap::new()).collect(),
            windows: Windows::new(owned.start, owned.len()),
            closed_before: vec![i64::MIN; usize::from(owned.len())],
            names: Names::new(dims),
            texts: RecordTexts::default(),
            spare: Vec::new(),
            visits: Vec::new(),
            dims: Vec::new(),
            counts: Counts {
                durations: vec![Sketch::default(); steps],
                ..Counts::default()
            },
            step_totals: vec![[0; 3]; steps],
            started_total: 0,
        }
    }

    /// The totals, with the step records' additions merged in.
    pub fn counts(&self) -> Counts {
        let mut counts = self.counts.clone();
        Self::merge_step_totals(&mut counts, &self.step_totals, self.started_total);
        counts
    }

    /// Merges the step records' additions into `counts` (before a reconfiguration maps the
    /// totals).
    fn settle_step_totals(&mut self) {
        Self::merge_step_totals(&mut self.counts, &self.step_totals, self.started_total);
        self.step_totals.iter_mut().for_each(|t| *t = [0; 3]);
        self.started_total = 0;
    }

    fn merge_step_totals(counts: &mut Counts, step_totals: &[[i64; 3]], started: i64) {
        let totals = &mut counts.metrics;
        add_to_total(totals, Metric::Started, started);
        for (s, [entered, wip, left]) in step_totals.iter().enumerate() {
            let s = s as u16;
            add_to_total(totals, Metric::Entered(s), *entered);
            add_to_total(totals, Metric::Wip(s), *wip);
            add_to_total(totals, Metric::Duration(s), *left);
        }
    }

    fn dimension_id(&mut self, dim: usize, value: Option<&str>) -> u32 {
        let max_values = self.plan.dimensions[dim].max_values;
        self.names.dimension_id(dim, value, max_values)
    }

    /// The windows, and what emitting one of their aggregates does (its record to `out`):
    /// borrowed apart, so that the windows can emit while they change.
    fn emitting<'a>(
        &'a mut self,
        buf: &'a mut Vec<u8>,
        out: &'a mut impl ProcessOutput,
    ) -> (&'a mut Windows, impl FnMut(windows::Cell<'_>) + 'a) {
        let (texts, plan, names) = (&mut self.texts, &self.plan, &self.names);
        let emit = move |cell: windows::Cell<'_>| {
            buf.clear();
            record::write_metric(buf, texts, plan, names, &cell);
            out.metric(buf);
        };
        (&mut self.windows, emit)
    }

    /// Lists a changed instance for the next checkpoint, once.
    fn mark_unsaved(&mut self, instance: &mut Instance) {
        if !instance.unsaved {
            instance.unsaved = true;
            self.dirty.push((instance.key.clone(), instance.key_group));
        }
    }

    /// How long a window is kept after it was emitted (a late action may still change it): at
    /// least the join's lateness, and ten windows.
    fn retention(&self, lateness: i64) -> i64 {
        (self.plan.window * 10).max(lateness)
    }

    /// How long an ended instance is kept (a late action may still belong to it): two
    /// windows past the retention, so that every window still kept (see
    /// [`ProcessState::dropped_before`]) holds only contributions of instances still kept, and
    /// a restore rebuilds the windows from the instances.
    fn kept(&self, lateness: i64) -> i64 {
        self.retention(lateness)
            .saturating_add(self.plan.window.saturating_mul(2))
    }

    /// Windows that start before this are dropped at time `wm`: a function of the closed
    /// windows alone, so that the windows kept at a checkpoint are what a restore at its
    /// watermark rebuilds.
    fn dropped_before(&self, wm: i64, lateness: i64) -> i64 {
        closed_before(wm, self.plan.window).saturating_sub(self.retention(lateness))
    }

    /// Takes back what an instance contributed (`old`, under its combination then) and adds
    /// what it contributes now; only the difference when the combination is the same.
    fn replace(
        &mut self,
        kg: u16,
        wm: i64,
        lateness: i64,
        old: Option<(u32, Vec<instance::Contribution>)>,
        combo: u32,
        new: Vec<instance::Contribution>,
    ) {
        match &old {
            Some((old_combo, old)) if *old_combo == combo => {
                instance::differences(old, &new, |c, w| {
                    self.apply(kg, wm, lateness, combo, c, w);
                });
            }
            Some((old_combo, old)) => {
                for c in old {
                    self.apply(kg, wm, lateness, *old_combo, *c, -1);
                }
                for c in &new {
                    self.apply(kg, wm, lateness, combo, *c, 1);
                }
            }
            None => {
                for c in &new {
                    self.apply(kg, wm, lateness, combo, *c, 1);
                }
            }
        }
        if let Some((_, old)) = old {
            self.spare.push(old);
        }
        self.spare.push(new);
    }

    /// What an instance contributes, in a vector from the spares (give it back through
    /// [`ProcessState::replace`] or `spare`).
    fn contributions(&mut self, instance: &Instance) -> Vec<instance::Contribution> {
        let mut out = self.spare.pop().unwrap_or_default();
        let variants = &mut self.names.variants;
        instance.contributions_into(
            &self.plan.steps,
            self.plan.outcomes.len(),
            &mut |v: String| variants.id(&v),
            &mut self.visits,
            &mut out,
        );
        out
    }

    /// Adds one contribution (`weight` 1) or takes it back (-1), in its window and in the
    /// totals.
    fn apply(
        &mut self,
        kg: u16,
        wm: i64,
        lateness: i64,
        combo: u32,
        contribution: instance::Contribution,
        weight: i8,
    ) {
        let (metric, _, exit, tally) = contribution;
        let w = i64::from(weight);
        let Metric::Step(step) = metric else {
            add_to_total(&mut self.counts.metrics, metric, w * i64::from(tally[0]));
            self.add_to_window(kg, wm, lateness, combo, contribution, weight, true);
            return;
        };
        if let Some(totals) = self.step_totals.get_mut(usize::from(step)) {
            totals[0] += w * i64::from(tally[ENTERED]);
            totals[1] += w * i64::from(tally[WIP]);
            totals[2] += w * i64::from(tally[LEFT]);
        }
        self.started_total += w * i64::from(tally[STARTED]);
        if tally[LEFT] != 0
            && let Some((ms, _)) = exit
            && let Some(sketch) = self.counts.durations.get_mut(usize::from(step))
        {
            sketch.add_weighted(ms, w * i64::from(tally[LEFT]));
        }
        self.add_to_window(kg, wm, lateness, combo, contribution, weight, true);
    }

    /// Adds one contribution (`weight` 1) or takes it back (-1) in its window, unless the
    /// window was dropped (then, when `count_late`, it is counted as a late update).
    #[allow(clippy::too_many_arguments)]
    fn add_to_window(
        &mut self,
        kg: u16,
        wm: i64,
        lateness: i64,
        combo: u32,
        (metric, t, exit, tally): instance::Contribution,
        weight: i8,
        count_late: bool,
    ) {
        let size = self.plan.window;
        let start = t.div_euclid(size) * size;
        // A window past its retention was dropped: the change stays in the totals only.
        if start < self.dropped_before(wm, lateness) && !self.windows.has_window(kg, start) {
            self.counts.late_metric_updates += u64::from(count_late);
            return;
        }
        self.windows
            .add((kg, start, metric, combo), weight, exit, tally);
    }

    /// The totals by name.
    pub fn totals(&self) -> Totals {
        let step = |s: u16| {
            self.plan
                .steps
                .get(usize::from(s))
                .map_or("?".to_string(), |p| p.name.clone())
        };
        let c = &self.counts();
        let mut t = Totals {
            actions: c.actions,
            unmatched: c.unmatched,
            no_instance_key: c.no_instance_key,
            duplicates: c.duplicates,
            after_end: c.after_end,
            over_limit: c.over_limit,
            late_metric_updates: c.late_metric_updates,
            ..Totals::default()
        };
        for (metric, n) in &c.metrics {
            let n = *n;
            match *metric {
                Metric::Started => t.started += n,
                Metric::Completed => t.completed += n,
                Metric::Abandoned => t.abandoned += n,
                Metric::SkippedSteps => t.skipped_steps += n,
                Metric::Wip(s) => *t.wip.entry(step(s)).or_default() += n,
                Metric::Entered(s) => *t.entered.entry(step(s)).or_default() += n,
                Metric::Return(a, b) => {
                    *t.returns
                        .entry(format!("{}->{}", step(a), step(b)))
                        .or_default() += n;
                }
                Metric::Outcome(o) => {
                    let name = self
                        .plan
                        .outcomes
                        .get(usize::from(o))
                        .map_or("?".to_string(), |(name, _)| name.clone());
                    *t.outcomes.entry(name).or_default() += n;
                }
                Metric::SlaBreach(s) => *t.sla_breaches.entry(step(s)).or_default() += n,
                Metric::Variant(v) => {
                    *t.variants
                        .entry(self.names.variant(v).to_string())
                        .or_default() += n;
                }
                // Steps are in the totals as entries, WIP and exits.
                Metric::Duration(_) | Metric::Transition(..) | Metric::Step(_) => {}
            }
        }
        for (s, sketch) in c.durations.iter().enumerate() {
            if !sketch.is_empty() {
                t.durations.insert(step(s as u16), sketch.clone());
            }
        }
        t
    }

    /// Puts an instance (restored, or mapped by a reconfiguration) in a slot of its own, with
    /// its timers.
    fn insert_instance(&mut self, idx: usize, mut instance: Instance, lateness: i64) {
        let at = self.instances.reserve(&instance.key);
        if idx < self.timers.len() {
            self.set_timers(idx, at, &mut instance, lateness);
        }
        if let Some(slot) = self.instances.get_mut(at) {
            *slot = instance;
        }
    }

    /// Sets the timers of an instance (in slot `at`) after it changed.
    fn set_timers(&mut self, idx: usize, at: SlotId, instance: &mut Instance, lateness: i64) {
        if let Some(ended) = instance.ended(&self.plan.steps) {
            let forget = ended.saturating_add(self.kept(lateness));
            self.timers[idx].push(Reverse((forget, TimerKind::Forget, at)));
            return;
        }
        if let Some(last) = instance.last_visit(&self.plan.steps)
            && let Some(sla) = self
                .plan
                .steps
                .get(usize::from(last.step))
                .and_then(|s| s.sla)
            && instance.sla_alerted.get() != Some(last.entered)
        {
            let due = last.entered.saturating_add(sla);
            if instance.armed_sla.get() != Some(due) {
                instance.armed_sla = MaybeTime::at(due);
                self.timers[idx].push(Reverse((due, TimerKind::Sla, at)));
            }
        }
        // One timeout timer per instance: when it fires early (the instance had actions since
        // it was set), it is set again for the new deadline.
        if instance.armed_timeout.is_none() {
            let timeout = instance
                .last_action()
                .saturating_add(self.plan.instance_timeout);
            instance.armed_timeout = MaybeTime::at(timeout);
            self.timers[idx].push(Reverse((timeout, TimerKind::Timeout, at)));
        }
    }
}

/// The process stage for a range of key groups.
pub struct ProcessEngine {
    owned: KeyGroupRange,
    key_groups: u16,
    /// The join's lateness: how late an action may come (ended instances and emitted
    /// windows are kept at least this long).
    lateness: i64,
    pub processes: Vec<ProcessState>,
    watermarks: Vec<i64>,
    buf: Vec<u8>,
    /// The next checkpoint rewrites the stage's state whole (after a reconfiguration).
    rewrite: bool,
}

impl ProcessEngine {
    pub fn new(
        plans: Vec<ProcessPlan>,
        key_groups: u16,
        owned: KeyGroupRange,
        lateness: i64,
    ) -> ProcessEngine {
        ProcessEngine {
            owned,
            key_groups,
            lateness,
            processes: plans
                .into_iter()
                .map(|p| ProcessState::new(p, owned))
                .collect(),
            watermarks: vec![i64::MIN; usize::from(owned.len())],
            buf: Vec::with_capacity(1024),
            rewrite: false,
        }
    }

    pub fn watermarks(&self) -> &[i64] {
        &self.watermarks
    }

    /// Instances changed since the last checkpoint: what the next one writes.
    pub fn unsaved(&self) -> usize {
        self.processes.iter().map(|s| s.dirty.len()).sum()
    }

    /// Sizes of the in-memory state, for benchmarks and logs.
    pub fn memory_report(&self) -> String {
        self.processes
            .iter()
            .map(|s| {
                format!(
                    "{}: {} instances, {} aggregates and {} contributions in {} windows, {} unemitted, {} unsaved instances, {} timers, {} combos",
                    s.plan.name,
                    s.instances.len(),
                    s.windows.len(),
                    s.windows.contributions(),
                    s.windows.window_count(),
                    s.windows.unemitted(),
                    s.dirty.len(),
                    s.timers.iter().map(BinaryHeap::len).sum::<usize>(),
                    s.names.combos.values.len(),
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Applies one action record to every definition.
    pub fn apply(
        &mut self,
        action: &str,
        out: &mut impl ProcessOutput,
    ) -> Result<(), ProcessError> {
        for p in 0..self.processes.len() {
            self.apply_to(p, action, out)?;
        }
        Ok(())
    }

    /// Applies an action record to definition `p` only (routed to it over Kafka).
    pub fn apply_to(
        &mut self,
        p: usize,
        action: &str,
        out: &mut impl ProcessOutput,
    ) -> Result<(), ProcessError> {
        let classified = self.processes[p]
            .plan
            .classify(action)
            .map_err(ProcessError::BadAction)?;
        self.apply_classified(p, classified, out)
    }

    /// The index of the definition named `name`.
    pub fn position(&self, name: &[u8]) -> Option<usize> {
        self.processes
            .iter()
            .position(|s| s.plan.name.as_bytes() == name)
    }

    /// Applies actions already classified (definition, classification) in order, stopping at
    /// the first error (after applying those before it). Each group of [`LOOKAHEAD`]
    /// actions first has its instances looked up: one action at a time, each waits in turn
    /// for the memory reads of its lookup (the table, then the instance, then its history),
    /// while independent lookups in a row overlap them.
    pub fn apply_many<'a>(
        &mut self,
        actions: impl IntoIterator<Item = Result<(usize, Classified<'a>), ProcessError>>,
        out: &mut impl ProcessOutput,
    ) -> Result<(), ProcessError> {
        let mut actions = actions.into_iter();
        let mut group = Vec::with_capacity(LOOKAHEAD);
        let mut found = Vec::with_capacity(LOOKAHEAD);
        loop {
            group.extend(actions.by_ref().take(LOOKAHEAD));
            if group.is_empty() {
                return Ok(());
            }
            found.clear();
            found.extend(group.iter().map(|a| match a {
                Ok((p, c)) => self.look_up(*p, c),
                Err(_) => None,
            }));
            // Applied where they lie: a classification is ~200 bytes, and moving each one
            // out again was a few percent of the stage.
            for (action, found) in group.iter().zip(&found) {
                let (p, c) = action.as_ref().map_err(ProcessError::clone)?;
                self.apply_found(*p, c, *found, out)?;
            }
            group.clear();
        }
    }

    /// Reads what applying `c` will read first (see [`ProcessEngine::apply_many`]), and
    /// returns where its instance was.
    fn look_up(&self, p: usize, c: &Classified<'_>) -> Option<SlotId> {
        let state = self.processes.get(p)?;
        let at = state.instances.find(c.instance.as_deref()?)?;
        // The whole history: applying compares every action's tracking number with the new
        // one's.
        let history = state
            .instances
            .get(at)
            .map(|i| i.actions.iter().fold(0, |x, a| x ^ a.tracking));
        std::hint::black_box(history);
        Some(at)
    }

    /// Applies an action already classified for definition `p`.
    pub fn apply_classified(
        &mut self,
        p: usize,
        c: Classified<'_>,
        out: &mut impl ProcessOutput,
    ) -> Result<(), ProcessError> {
        self.apply_found(p, &c, None, out)
    }

    /// [`ProcessEngine::apply_classified`], told where the instance was when it was looked up
    /// ahead: still there if that slot holds the key, else (the actions before it may have
    /// started or forgotten instances) looked up again.
    fn apply_found(
        &mut self,
        p: usize,
        c: &Classified<'_>,
        found: Option<SlotId>,
        out: &mut impl ProcessOutput,
    ) -> Result<(), ProcessError> {
        let state = &mut self.processes[p];
        state.counts.actions += 1;
        let Some(step) = c.step else {
            state.counts.unmatched += 1;
            return Ok(());
        };
        let (Some(key), Some(t)) = (&c.instance, c.time) else {
            state.counts.no_instance_key += 1;
            return Ok(());
        };
        let kg = key_group(key.as_bytes(), self.key_groups);
        if !self.owned.contains(kg) {
            return Err(ProcessError::NotOwned(kg));
        }
        let idx = usize::from(kg - self.owned.start);
        // Time first: whatever was due before this action happens before it.
        if t > self.watermarks[idx] {
            self.watermarks[idx] = t;
            self.fire(idx, out);
        }
        let wm = self.watermarks[idx];
        let lateness = self.lateness;
        let state = &mut self.processes[p];
        let tracking = c.tracking;
        let mut dims = std::mem::take(&mut state.dims);
        dims.clear();
        for (d, v) in c.dimensions.iter().enumerate() {
            let id = state.dimension_id(d, v.as_deref());
            dims.push(id);
        }
        let applied = Applied {
            time: t,
            tracking,
            step: step as u16,
            outcomes: c.outcomes,
        };

        // Taken out of its slot while it changes, and put back: no copy, no key allocation and
        // one lookup per action.
        let found = found
            .filter(|at| {
                state
                    .instances
                    .get(*at)
                    .is_some_and(|i| i.key.as_bytes() == key.as_bytes())
            })
            .or_else(|| state.instances.find(key.as_ref()));
        let taken = found
            .and_then(|at| state.instances.get_mut(at))
            .map(std::mem::take);
        let mut after_end_before = 0;
        let (mut instance, old) = match taken {
            Some(i) => {
                let duplicate = applied.tracking != 0
                    && i.actions.iter().any(|a| a.tracking == applied.tracking);
                // After completion an action is kept but does not count (see
                // `Instance::effective`); after abandonment it is refused.
                let after_end = i.abandoned.get().is_some_and(|e| t > e);
                if duplicate || after_end || i.actions.len() >= ACTION_LIMIT {
                    if duplicate {
                        state.counts.duplicates += 1;
                    } else if after_end {
                        state.counts.after_end += 1;
                    } else {
                        state.counts.over_limit += 1;
                    }
                    if let Some(slot) = found.and_then(|at| state.instances.get_mut(at)) {
                        *slot = i;
                    }
                    state.dims = dims;
                    return Ok(());
                }
                let old = state.contributions(&i);
                after_end_before = i.after_end(&state.plan.steps);
                (i, Some(old))
            }
            None => (
                Instance {
                    key: InstanceKey::new(key.as_ref()),
                    key_group: kg,
                    combo: state.names.combos.id(&dims),
                    dimensions: DimensionIds::from_slice(&dims),
                    ..Instance::default()
                },
                None,
            ),
        };
        let at = instance.actions.partition_point(|a| *a < applied);
        instance.actions.insert(at, applied);
        // An instance takes each dimension from the first action that has it.
        let old_combo = instance.combo;
        let mut changed = false;
        for (d, id) in dims.iter().enumerate() {
            // Mostly the same value: no lookup of `other` then.
            if instance.dimensions[d] == *id || c.dimensions[d].is_none() {
                continue;
            }
            let other = state.names.dimension_ids[d].get(OTHER).copied();
            if Some(instance.dimensions[d]) == other && Some(*id) != other {
                instance.dimensions[d] = *id;
                changed = true;
            }
        }
        if changed {
            instance.combo = state.names.combos.id(&instance.dimensions.to_vec());
        }
        state.dims = dims;
        let after_end = instance.after_end(&state.plan.steps);
        state.counts.after_end += after_end.saturating_sub(after_end_before) as u64;
        let new = state.contributions(&instance);
        state.replace(
            kg,
            wm,
            lateness,
            old.map(|o| (old_combo, o)),
            instance.combo,
            new,
        );
        let at = match found {
            Some(at) => at,
            None => state.instances.reserve(&instance.key),
        };
        state.set_timers(idx, at, &mut instance, lateness);
        state.mark_unsaved(&mut instance);
        if let Some(slot) = state.instances.get_mut(at) {
            *slot = instance;
        }
        self.close_windows(idx, out);
        Ok(())
    }

    /// Fires the SLA, timeout and forget timers of key group `idx` that its time has passed.
    fn fire(&mut self, idx: usize, out: &mut impl ProcessOutput) {
        let wm = self.watermarks[idx];
        let kg = self.owned.start + idx as u16;
        let lateness = self.lateness;
        for state in &mut self.processes {
            while let Some(Reverse(first)) = state.timers[idx].peek() {
                if first.0 >= wm {
                    break;
                }
                let Some(Reverse((deadline, kind, at))) = state.timers[idx].pop() else {
                    break;
                };
                // A timer is stale when its instance moved on since it was set, or is gone.
                let Some(mut instance) = state.instances.get_mut(at).map(std::mem::take) else {
                    continue;
                };
                let ended = instance.ended(&state.plan.steps);
                let current = instance.last_visit(&state.plan.steps);
                let sla = current
                    .and_then(|v| state.plan.steps.get(usize::from(v.step)))
                    .and_then(|s| s.sla);
                match (kind, current, sla) {
                    (TimerKind::Sla, Some(visit), Some(sla))
                        if ended.is_none()
                            && visit.entered.saturating_add(sla) == deadline
                            && instance.sla_alerted.get() != Some(visit.entered) =>
                    {
                        instance.sla_alerted = MaybeTime::at(visit.entered);
                        let old = state.contributions(&instance);
                        // Rare: a boxed slice, 8 bytes less in every instance than a vector.
                        let mut breaches = std::mem::take(&mut instance.breaches).into_vec();
                        breaches.push((visit.step, deadline));
                        instance.breaches = breaches.into();
                        let new = state.contributions(&instance);
                        let combo = instance.combo;
                        state.replace(kg, wm, lateness, Some((combo, old)), combo, new);
                        self.buf.clear();
                        record::write_alert(&mut self.buf, state, &instance, &visit, deadline, sla);
                        out.alert(&self.buf);
                        state.mark_unsaved(&mut instance);
                    }
                    (TimerKind::Timeout, ..)
                        if ended.is_none()
                            && instance
                                .last_action()
                                .saturating_add(state.plan.instance_timeout)
                                > deadline =>
                    {
                        instance.armed_timeout = MaybeTime::NONE;
                        state.set_timers(idx, at, &mut instance, lateness);
                    }
                    (TimerKind::Timeout, ..)
                        if ended.is_none()
                            && instance
                                .last_action()
                                .saturating_add(state.plan.instance_timeout)
                                == deadline =>
                    {
                        let old = state.contributions(&instance);
                        instance.abandoned = MaybeTime::at(deadline);
                        let new = state.contributions(&instance);
                        let combo = instance.combo;
                        state.replace(kg, wm, lateness, Some((combo, old)), combo, new);
                        state.set_timers(idx, at, &mut instance, lateness);
                        state.mark_unsaved(&mut instance);
                    }
                    (TimerKind::Forget, ..)
                        if ended.is_some_and(|e| {
                            e.saturating_add(state.kept(lateness)) == deadline
                        }) =>
                    {
                        // Gone: its stored copy is deleted.
                        state.dirty.push((instance.key.clone(), kg));
                        if let Some(slot) = state.instances.get_mut(at) {
                            *slot = instance;
                        }
                        state.instances.remove(at);
                        continue;
                    }
                    _ => {}
                }
                if let Some(slot) = state.instances.get_mut(at) {
                    *slot = instance;
                }
            }
        }
        self.close_windows(idx, out);
    }

    /// When key group `idx`'s time crosses a window boundary: emits the changed aggregates
    /// of the windows that closed (a window closes one window after its end), and drops the
    /// windows past their retention. Later changes to closed windows wait for
    /// [`ProcessEngine::emit_updates`], so that many late changes to one aggregate are one
    /// record.
    fn close_windows(&mut self, idx: usize, out: &mut impl ProcessOutput) {
        let wm = self.watermarks[idx];
        let kg = self.owned.start + idx as u16;
        for state in &mut self.processes {
            let size = state.plan.window;
            let closed = closed_before(wm, size);
            let before = state.closed_before[idx];
            if closed <= before {
                continue;
            }
            state.closed_before[idx] = closed;
            let expired_before = state.dropped_before(wm, self.lateness);
            let (windows, mut emit) = state.emitting(&mut self.buf, out);
            // The windows that close now; changes to those closed before wait.
            windows.emit_between(kg, before, closed, &mut emit);
            windows.drop_before(kg, expired_before, &mut emit);
        }
    }

    /// Emits the aggregates of closed windows changed since they were emitted (by late
    /// actions). Called before every checkpoint.
    pub fn emit_updates(&mut self, out: &mut impl ProcessOutput) {
        for state in &mut self.processes {
            let closed_before = state.closed_before.clone();
            let (windows, mut emit) = state.emitting(&mut self.buf, out);
            for (idx, closed) in closed_before.iter().enumerate() {
                let kg = self.owned.start + idx as u16;
                windows.emit_before(kg, *closed, &mut emit);
            }
        }
    }

    /// End of a finite input: every changed aggregate is emitted. Instances stay as they are
    /// (in progress); time does not run out for them as it does for the join's pending parts.
    pub fn finish(&mut self, out: &mut impl ProcessOutput) {
        for state in &mut self.processes {
            let (windows, mut emit) = state.emitting(&mut self.buf, out);
            windows.emit_all(&mut emit);
        }
    }

    /// Changes since the last checkpoint. Instance keys: the instance's key group (BE u16),
    /// the definition's index (BE u16), the instance key. Taken after
    /// [`ProcessEngine::emit_updates`] (and the outputs flushed): a restore rebuilds the
    /// closed windows as emitted.
    pub fn checkpoint_changes(&mut self) -> ProcessChanges {
        let mut changes = ProcessChanges {
            rewrite: std::mem::take(&mut self.rewrite),
            ..ProcessChanges::default()
        };
        for (p, state) in self.processes.iter_mut().enumerate() {
            for (key, kg) in std::mem::take(&mut state.dirty) {
                let value = match state.instances.get_by_key(&key) {
                    // Listed twice, written already.
                    Some(i) if !i.unsaved => continue,
                    Some(i) => {
                        i.unsaved = false;
                        let mut buf = Vec::with_capacity(128);
                        codec::encode_instance(i, &mut buf);
                        Some(buf)
                    }
                    None => None,
                };
                changes
                    .instances
                    .push((instance_key(kg, p as u16, &key), value));
            }
        }
        changes
    }

    /// The changes of a last checkpoint after which the state is never resumed (local mode
    /// at the end of its input): every stored instance is deleted instead of the changed
    /// ones written, so the finished state holds only the record's meta, whose counts are
    /// everything the summary and the totals read. Writing the 161k instances of the
    /// credit-card example at 500k actions was ~12% of a local run's CPU.
    pub fn forget_changes(&mut self) -> ProcessChanges {
        self.rewrite = false;
        for state in &mut self.processes {
            for (key, _) in std::mem::take(&mut state.dirty) {
                if let Some(i) = state.instances.get_by_key(&key) {
                    i.unsaved = false;
                }
            }
        }
        ProcessChanges {
            instances: Vec::new(),
            rewrite: true,
        }
    }

    /// Everything but the instances, for the checkpoint record.
    pub fn meta(&self) -> Vec<ProcessMeta> {
        self.processes
            .iter()
            .map(|s| ProcessMeta {
                dimension_values: s.names.dimension_values.clone(),
                combos: s.names.combos.values.clone(),
                variants: s.names.variants.values.clone(),
                counts: s.counts(),
            })
            .collect()
    }

    /// Restores from a checkpoint: the record's meta and watermarks, and every stored
    /// instance and aggregate (key, value) of the owned key groups.
    pub fn restore(
        &mut self,
        meta: Vec<ProcessMeta>,
        watermarks: &[i64],
        instances: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<(), String> {
        for (i, wm) in watermarks.iter().enumerate().take(self.watermarks.len()) {
            self.watermarks[i] = *wm;
        }
        for (state, m) in self.processes.iter_mut().zip(meta) {
            state.names.dimension_ids = m
                .dimension_values
                .iter()
                .map(|values| {
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (v.clone(), i as u32))
                        .collect()
                })
                .collect();
            state.names.dimension_values = m.dimension_values;
            state.names.combos = Interner::from_values(m.combos);
            state.names.variants = Interner::from_values(m.variants);
            state.counts = m.counts;
            state.step_totals.iter_mut().for_each(|t| *t = [0; 3]);
            state.started_total = 0;
        }
        let definition = |key: &[u8]| {
            usize::from(u16::from_be_bytes([
                key.get(2).copied().unwrap_or(0),
                key.get(3).copied().unwrap_or(0),
            ]))
        };
        for (key, value) in instances {
            let mut instance = codec::decode_instance(&value)
                .ok_or_else(|| format!("corrupt process instance {key:?}"))?;
            let idx = usize::from(instance.key_group.wrapping_sub(self.owned.start));
            let Some(state) = self.processes.get_mut(definition(&key)) else {
                continue;
            };
            if idx >= state.timers.len() {
                continue;
            }
            // Timers are not stored: set again when it is put in its slot.
            instance.armed_sla = MaybeTime::NONE;
            instance.armed_timeout = MaybeTime::NONE;
            // Nor are the windows: they are what the instances contribute. Every
            // contribution to a window still kept is an instance's still kept (see
            // `ProcessState::kept`), and the totals are in the record already.
            let wm = self.watermarks.get(idx).copied().unwrap_or(i64::MIN);
            let contributions = state.contributions(&instance);
            for c in &contributions {
                let (kg, combo) = (instance.key_group, instance.combo);
                state.add_to_window(kg, wm, self.lateness, combo, *c, 1, false);
            }
            state.spare.push(contributions);
            state.insert_instance(idx, instance, self.lateness);
        }
        for state in &mut self.processes {
            // Closed windows were emitted whole before the checkpoint; open ones not at all.
            let size = state.plan.window;
            for (idx, wm) in self.watermarks.iter().enumerate() {
                let closed = closed_before(*wm, size);
                let kg = self.owned.start + idx as u16;
                state.windows.mark_restored(kg, |start| start >= closed);
            }
        }
        Ok(())
    }
}

/// Windows that start before this are closed at time `wm` (one window after their end).
fn closed_before(wm: i64, size: i64) -> i64 {
    wm.saturating_sub(size)
        .div_euclid(size)
        .saturating_mul(size)
}

/// The state key of an instance.
pub fn instance_key(kg: u16, process: u16, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&kg.to_be_bytes());
    k.extend_from_slice(&process.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// Serializes a map with non-string keys as a list of pairs.
mod as_pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<'a, M, K, V, S>(map: &'a M, s: S) -> Result<S::Ok, S::Error>
    where
        &'a M: IntoIterator<Item = (&'a K, &'a V)>,
        K: Serialize + 'a,
        V: Serialize + 'a,
        S: Serializer,
    {
        s.collect_seq(map)
    }

    pub fn deserialize<'de, M, K, V, D>(d: D) -> Result<M, D::Error>
    where
        M: FromIterator<(K, V)>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests;
