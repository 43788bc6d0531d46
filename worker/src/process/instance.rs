//! A process instance and what it contributes to the metrics, derived from its history.
//!
//! Actions reach the process stage in completion order, not event-time order: a part that
//! arrives 40 minutes late completes its action 40 minutes late. So an instance keeps its
//! applied actions sorted by event time, and its metrics are a pure function of that history
//! ([`Instance::contributions`]). When an action lands in the middle of the history, the
//! stage takes back what the old history contributed and adds what the new one does; all
//! aggregates are sums, so taking back is adding with a negative weight. The results are
//! those of processing the actions in event-time order, whatever order they came in.

use std::sync::Arc;

use hashbrown::HashTable;
use smallvec::SmallVec;

use super::plan::StepPlan;
use super::{ENTERED, LEFT, Metric, ONCE, STARTED, Tally, WIP};
use crate::time::MaybeTime;

/// One action applied to an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Applied {
    pub time: i64,
    /// The tracking number's [`tracking_fingerprint`] (0: the action has none): all an
    /// instance needs to recognise a replayed action, with no string per action.
    pub tracking: u64,
    pub step: u16,
    /// Bit per outcome the action satisfies.
    pub outcomes: u64,
}

/// A tracking number as an instance keeps it: a 64-bit hash, never 0 (0 is "none"). Two
/// tracking numbers of one instance (at most a few hundred actions) sharing it would make the
/// second look like a replay of the first: ~10⁻¹⁵ per instance.
pub fn tracking_fingerprint(tracking_number: &str) -> u64 {
    if tracking_number.is_empty() {
        return 0;
    }
    xxhash_rust::xxh3::xxh3_64(tracking_number.as_bytes()).max(1)
}

/// An instance's dimension value ids.
pub type DimensionIds = SmallVec<[u32; 4]>;

/// An instance's key, held in the instance itself when it is short (an application number
/// is): finding an instance then reads the instance's own memory only, not a string
/// elsewhere as well. Longer keys are shared.
#[derive(Clone, PartialEq, Eq)]
pub enum InstanceKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Shared(Arc<str>),
}

/// The longest key held inline (the enum stays 24 bytes, as an `Arc<str>` with its tag).
const INLINE_KEY: usize = 22;

impl InstanceKey {
    pub fn new(key: &str) -> InstanceKey {
        let mut bytes = [0; INLINE_KEY];
        match bytes.get_mut(..key.len()) {
            Some(prefix) => {
                prefix.copy_from_slice(key.as_bytes());
                InstanceKey::Inline {
                    len: key.len() as u8,
                    bytes,
                }
            }
            None => InstanceKey::Shared(Arc::from(key)),
        }
    }

    /// The key's bytes, without [`InstanceKey::as_str`]'s UTF-8 check: what lookups hash
    /// and compare.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            InstanceKey::Inline { len, bytes } => {
                bytes.get(..usize::from(*len)).unwrap_or_default()
            }
            InstanceKey::Shared(key) => key.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole, so always UTF-8.
            InstanceKey::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            InstanceKey::Shared(key) => key,
        }
    }
}

impl Default for InstanceKey {
    fn default() -> InstanceKey {
        InstanceKey::new("")
    }
}

impl std::ops::Deref for InstanceKey {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for InstanceKey {
    fn from(key: &str) -> InstanceKey {
        InstanceKey::new(key)
    }
}

/// A stay in one step: consecutive actions of the same step are one visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visit {
    pub step: u16,
    pub entered: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Instance {
    pub key: InstanceKey,
    pub key_group: u16,
    /// Sorted by (time, tracking number's fingerprint).
    pub actions: Vec<Applied>,
    /// Dimension value ids (per dimension, an index into its value table). In place for up
    /// to four dimensions: every action compares them, and a vector elsewhere was a cache
    /// miss each time.
    pub dimensions: DimensionIds,
    /// The id of that combination.
    pub combo: u32,
    /// When `instanceTimeout` passed without an action (unless it completed).
    pub abandoned: MaybeTime,
    /// Entry time of the visit whose SLA breach was alerted.
    pub sla_alerted: MaybeTime,
    /// SLA breaches alerted: (step, deadline). They count as they were seen at the time,
    /// whatever later actions reveal, so they are part of the history.
    pub breaches: Box<[(u16, i64)]>,
    /// Deadlines of the SLA and timeout timers set (timers live in memory only).
    pub armed_sla: MaybeTime,
    pub armed_timeout: MaybeTime,
    /// Changed since the last checkpoint (and listed in the stage's changed set).
    pub unsaved: bool,
}

/// One contribution to the metrics: its aggregate's metric, its time (which picks the
/// window), for a step's exit the time spent in the step (ms) and the step it went to, and
/// what it adds to the aggregate's counters.
pub type Contribution = (Metric, i64, Option<(i64, u16)>, Tally);

impl Instance {
    /// The actions that count: up to the end of the first visit to a final step. Actions
    /// after it (a late duplicate request, a retry after activation) are kept, so that the
    /// history, and with it every metric, is the same whatever order the actions came in.
    pub fn effective(&self, steps: &[StepPlan]) -> &[Applied] {
        let is_final = |a: &Applied| steps.get(usize::from(a.step)).is_some_and(|s| s.is_final);
        let Some(first) = self.actions.iter().position(is_final) else {
            return &self.actions;
        };
        let step = self.actions[first].step;
        let end = first
            + self.actions[first..]
                .iter()
                .take_while(|a| a.step == step)
                .count();
        &self.actions[..end]
    }

    /// Actions after the instance completed (not counted).
    pub fn after_end(&self, steps: &[StepPlan]) -> usize {
        self.actions.len() - self.effective(steps).len()
    }

    pub fn visits(&self, steps: &[StepPlan]) -> Vec<Visit> {
        let mut visits = Vec::new();
        self.visits_into(steps, &mut visits);
        visits
    }

    fn visits_into(&self, steps: &[StepPlan], visits: &mut Vec<Visit>) {
        visits.clear();
        for a in self.effective(steps) {
            if visits.last().is_none_or(|v| v.step != a.step) {
                visits.push(Visit {
                    step: a.step,
                    entered: a.time,
                });
            }
        }
    }

    pub fn last_action(&self) -> i64 {
        self.actions.last().map_or(i64::MIN, |a| a.time)
    }

    /// The latest visit that counts (the trailing run of actions of one step), without
    /// building the whole list.
    pub fn last_visit(&self, steps: &[StepPlan]) -> Option<Visit> {
        let actions = self.effective(steps);
        let last = actions.last()?;
        let entered = actions
            .iter()
            .rev()
            .take_while(|a| a.step == last.step)
            .last()
            .map_or(last.time, |a| a.time);
        Some(Visit {
            step: last.step,
            entered,
        })
    }

    /// When the instance completed: its first visit to a final step.
    pub fn completed(&self, steps: &[StepPlan]) -> Option<i64> {
        completion(self.last_visit(steps)?, steps)
    }

    pub fn ended(&self, steps: &[StepPlan]) -> Option<i64> {
        self.completed(steps).or(self.abandoned.get())
    }

    /// The step sequence, `apply>review>apply>review>issue`.
    pub fn variant(&self, steps: &[StepPlan]) -> String {
        variant_of(&self.visits(steps), steps)
    }

    /// Everything the instance contributes, sorted. `variant` interns a step sequence.
    pub fn contributions(
        &self,
        steps: &[StepPlan],
        outcomes: usize,
        variant: &mut impl FnMut(String) -> u32,
    ) -> Vec<Contribution> {
        let mut out = Vec::new();
        self.contributions_into(steps, outcomes, variant, &mut Vec::new(), &mut out);
        out
    }

    /// [`Instance::contributions`] into `out` (cleared first), with `visits` as scratch: the
    /// stage computes them twice per action and reuses both.
    pub fn contributions_into(
        &self,
        steps: &[StepPlan],
        outcomes: usize,
        variant: &mut impl FnMut(String) -> u32,
        visits: &mut Vec<Visit>,
        out: &mut Vec<Contribution>,
    ) {
        out.clear();
        self.visits_into(steps, visits);
        let visits = &visits[..];
        let Some(first) = visits.first() else {
            return;
        };
        let completed = visits.last().and_then(|v| completion(*v, steps));
        let ended = completed.or(self.abandoned.get());
        // Pushed in the order they sort in (the metric kinds in `Metric`'s order, a step's by
        // time), so that the sort at the end mostly only checks it: sorting them had been
        // ~5% of the process thread's instructions.
        if let Some(end) = ended {
            let how = if completed.is_some() {
                Metric::Completed
            } else {
                Metric::Abandoned
            };
            out.push((how, end, None, ONCE));
        }
        let mut skipped = first.step > 0;
        for pair in visits.windows(2) {
            let (visit, next) = (pair[0], pair[1]);
            if next.step < visit.step {
                out.push((
                    Metric::Return(visit.step, next.step),
                    next.entered,
                    None,
                    ONCE,
                ));
            }
            skipped |= next.step > visit.step + 1;
        }
        for o in 0..outcomes.min(64) {
            if let Some(a) = self.actions.iter().find(|a| a.outcomes & (1 << o) != 0) {
                out.push((Metric::Outcome(o as u16), a.time, None, ONCE));
            }
        }
        for (step, deadline) in &self.breaches {
            out.push((Metric::SlaBreach(*step), *deadline, None, ONCE));
        }
        if skipped {
            out.push((Metric::SkippedSteps, first.entered, None, ONCE));
        }
        if let Some(end) = ended {
            out.push((
                Metric::Variant(variant(variant_of(visits, steps))),
                end,
                None,
                ONCE,
            ));
        }
        for (i, visit) in visits.iter().enumerate() {
            let step = Metric::Step(visit.step);
            let next = visits.get(i + 1);
            // Entering a final step ends the instance: it is not in progress there.
            let is_completing = completed.is_some() && i + 1 == visits.len();
            let mut entry: Tally = [0; 4];
            entry[ENTERED] = 1;
            entry[WIP] = i8::from(!is_completing);
            entry[STARTED] = i8::from(i == 0);
            out.push((step, visit.entered, None, entry));
            if let Some(next) = next {
                // Leaving for the next step: the time spent, and the edge to it.
                let millis = next.entered - visit.entered;
                let mut exit: Tally = [0; 4];
                exit[WIP] = -1;
                exit[LEFT] = 1;
                out.push((step, next.entered, Some((millis, next.step)), exit));
            } else if let (false, Some(end)) = (is_completing, ended) {
                // Abandoned here.
                let mut gone: Tally = [0; 4];
                gone[WIP] = -1;
                out.push((step, end, None, gone));
            }
        }
        out.sort_unstable();
    }
}

/// When a visit completes its instance: it is to a final step.
fn completion(visit: Visit, steps: &[StepPlan]) -> Option<i64> {
    steps
        .get(usize::from(visit.step))
        .is_some_and(|s| s.is_final)
        .then_some(visit.entered)
}

fn variant_of(visits: &[Visit], steps: &[StepPlan]) -> String {
    visits
        .iter()
        .map(|v| {
            steps
                .get(usize::from(v.step))
                .map_or("?", |s| s.name.as_str())
        })
        .collect::<Vec<_>>()
        .join(">")
}

/// What changes from `old` to `new` (both sorted): the contributions to take back (weight
/// -1) and to add (weight +1), leaving out those in both; each passed to `out`.
pub fn differences(
    old: &[Contribution],
    new: &[Contribution],
    mut out: impl FnMut(Contribution, i8),
) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                out(*a, -1);
                i += 1;
            }
            (Some(_), Some(b)) => {
                out(*b, 1);
                j += 1;
            }
            (Some(a), None) => {
                out(*a, -1);
                i += 1;
            }
            (None, Some(b)) => {
                out(*b, 1);
                j += 1;
            }
            (None, None) => break,
        }
    }
}

/// Where an instance is in [`Instances`]: its slot, and the slot's generation (a slot is
/// reused after its instance is forgotten; a timer naming the old generation is stale).
pub type SlotId = (u32, u32);

/// The instances of a definition in a slab. The table finds an instance's slot once per
/// action; the instance is then reached by index, and timers name a slot instead of
/// carrying (and comparing) the key. The table holds slots with 32 bits of their key's hash:
/// a probe compares keys (in the instances, inline) only when those bits match, and growing
/// the table reads no instance.
#[derive(Debug, Default)]
pub struct Instances {
    slots: HashTable<(u32, u32)>,
    entries: Chunked<(u32, Instance)>,
    free: Vec<u32>,
}

/// Entries per chunk of [`Chunked`].
const CHUNK: usize = 4096;

/// A vector in chunks of [`CHUNK`] entries: growing never moves the entries already there.
/// One vector grew by doubling, copying every instance each time into fresh memory (with
/// mimalloc a large reallocation copies; ~10% of the process thread at 500k actions).
#[derive(Debug)]
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    fn push(&mut self, value: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(value);
            self.len += 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }
}

/// 32 bits of a key's hash, as the table keeps it.
fn key_hash(key: &[u8]) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) >> 32) as u32
}

/// The table's 64-bit hash of a kept 32-bit one (spread over the bits hashbrown uses: the
/// top seven and the low ones).
fn table_hash(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Instances {
    pub fn find(&self, key: &str) -> Option<SlotId> {
        let hash = key_hash(key.as_bytes());
        let entries = &self.entries;
        let &(slot, _) = self.slots.find(table_hash(hash), |&(slot, h)| {
            h == hash
                && entries
                    .get(slot as usize)
                    .is_some_and(|(_, i)| i.key.as_bytes() == key.as_bytes())
        })?;
        Some((slot, self.entries.get(slot as usize)?.0))
    }

    /// The instance in a slot, if the slot still holds that generation.
    pub fn get(&self, (slot, generation): SlotId) -> Option<&Instance> {
        match self.entries.get(slot as usize) {
            Some((g, instance)) if *g == generation => Some(instance),
            _ => None,
        }
    }

    /// The instance in a slot, if the slot still holds that generation.
    pub fn get_mut(&mut self, (slot, generation): SlotId) -> Option<&mut Instance> {
        match self.entries.get_mut(slot as usize) {
            Some((g, instance)) if *g == generation => Some(instance),
            _ => None,
        }
    }

    /// Takes a slot for an instance with `key` (not in the table yet), holding an empty
    /// instance with that key until the instance is put there.
    pub fn reserve(&mut self, key: &InstanceKey) -> SlotId {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.entries.push((0, Instance::default()));
                (self.entries.len() - 1) as u32
            }
        };
        let hash = key_hash(key.as_bytes());
        self.slots
            .insert_unique(table_hash(hash), (slot, hash), |&(_, h)| table_hash(h));
        // The slot was just pushed or taken from the free list: it exists.
        let Some((generation, instance)) = self.entries.get_mut(slot as usize) else {
            return (slot, 0);
        };
        instance.key = key.clone();
        (slot, *generation)
    }

    /// Forgets the instance in a slot.
    pub fn remove(&mut self, at: SlotId) -> Option<Instance> {
        let instance = std::mem::take(self.get_mut(at)?);
        let hash = key_hash(instance.key.as_bytes());
        if let Ok(entry) = self
            .slots
            .find_entry(table_hash(hash), |&(slot, _)| slot == at.0)
        {
            entry.remove();
        }
        if let Some((generation, _)) = self.entries.get_mut(at.0 as usize) {
            *generation = generation.wrapping_add(1);
        }
        self.free.push(at.0);
        Some(instance)
    }

    pub fn get_by_key(&mut self, key: &str) -> Option<&mut Instance> {
        let at = self.find(key)?;
        self.get_mut(at)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Takes every instance out.
    pub fn take_all(&mut self) -> Vec<Instance> {
        let slots = std::mem::take(&mut self.slots);
        let mut entries = std::mem::take(&mut self.entries);
        self.free.clear();
        slots
            .into_iter()
            .filter_map(|(slot, _)| {
                entries
                    .get_mut(slot as usize)
                    .map(|e| std::mem::take(&mut e.1))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stage moves an instance out of its slot and back for every action: at most 128
    /// bytes, the moves are inline vector moves, not `memcpy` calls.
    #[test]
    fn an_instance_fits_in_128_bytes() {
        assert!(std::mem::size_of::<Instance>() <= 128);
    }

    fn instance(key: &str, time: i64) -> Instance {
        Instance {
            key: key.into(),
            actions: vec![Applied {
                time,
                tracking: tracking_fingerprint(&format!("T-{time}")),
                step: 0,
                outcomes: 0,
            }],
            ..Instance::default()
        }
    }

    #[test]
    fn a_forgotten_instance_s_slot_is_reused_under_a_new_generation() {
        let mut instances = Instances::default();
        let a = instances.reserve(&"A".into());
        *instances.get_mut(a).unwrap() = instance("A", 1);
        let b = instances.reserve(&"B".into());
        *instances.get_mut(b).unwrap() = instance("B", 2);
        assert_eq!(
            (instances.find("A"), instances.find("B")),
            (Some(a), Some(b))
        );

        assert_eq!(instances.remove(a).map(|i| i.last_action()), Some(1));
        assert_eq!(instances.find("A"), None);
        assert!(instances.get_mut(a).is_none(), "a timer naming it is stale");
        assert!(instances.remove(a).is_none(), "removed once");

        let c = instances.reserve(&"C".into());
        assert_eq!(c.0, a.0, "the slot is reused");
        assert_ne!(c.1, a.1, "under a new generation");
        *instances.get_mut(c).unwrap() = instance("C", 3);
        assert!(
            instances.get_mut(a).is_none(),
            "the old timer is still stale"
        );
        assert_eq!(instances.get_by_key("C").map(|i| i.last_action()), Some(3));
        assert_eq!(instances.len(), 2);

        let mut all: Vec<_> = instances
            .take_all()
            .into_iter()
            .map(|i| i.key.to_string())
            .collect();
        all.sort();
        assert_eq!(all, ["B", "C"]);
        assert!(instances.is_empty() && instances.find("B").is_none());
    }

    #[test]
    fn keys_short_and_long_are_found_after_the_table_grows_and_shrinks() {
        let long = "a key longer than twenty-two bytes, kept shared";
        let keys: Vec<String> = (0..5000)
            .map(|i| {
                if i % 2 == 0 {
                    format!("A-{i}")
                } else {
                    format!("{long}/{i}")
                }
            })
            .collect();
        let mut instances = Instances::default();
        let slots: Vec<SlotId> = keys
            .iter()
            .map(|k| {
                let at = instances.reserve(&InstanceKey::new(k));
                *instances.get_mut(at).unwrap() = instance(k, 1);
                at
            })
            .collect();
        assert!(matches!(
            InstanceKey::new(&keys[0]),
            InstanceKey::Inline { .. }
        ));
        assert!(matches!(InstanceKey::new(&keys[1]), InstanceKey::Shared(_)));
        for (k, at) in keys.iter().zip(&slots) {
            assert_eq!(instances.find(k), Some(*at), "{k}");
        }
        for at in slots.iter().step_by(3) {
            instances.remove(*at);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(instances.find(k).is_some(), i % 3 != 0, "{k}");
        }
        assert_eq!(instances.find("A-"), None);
        assert_eq!(instances.len(), keys.len() - keys.len().div_ceil(3));
    }
}
