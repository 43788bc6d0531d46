//! The one-to-one join of request, response and tracking messages by tracking number.
//!
//! Pure logic: no I/O. State lives in a hot in-memory tier; entries that were made durable at
//! a checkpoint and then evicted live in a cold tier behind [`ColdStore`] (RocksDB in the
//! worker). An entry is kept only until its action is complete (then a small dedupe marker
//! replaces it, see [`markers`]) or until the lateness bound passes (then an incomplete
//! action is emitted).
//!
//! Time is event time, per key group: a key group's watermark is the largest event time it
//! has accepted. Everything a key group does depends only on the messages of that key group
//! in arrival order, so results do not depend on how key groups are spread over workers.

pub mod markers;
pub mod record;
mod timers;

use std::collections::VecDeque;
use std::collections::hash_map::Entry as HashEntry;

use rustc_hash::FxHashMap;
use weft_crds::Part;
use weft_crds::join_pipeline::JoinSpec;
use weft_crds::keygroup::{KeyGroupRange, key_group};

use crate::sources::{DeadLetterReason, Message, Rejection};
use crate::time::MaybeTime;
use markers::{ColdMarkers, Fingerprint, MARKER_BYTES, Marker, MarkerTable};
use timers::{Timer, Timers, YOUNG_AGE, YoungSeq};

/// Join settings in milliseconds, from the pipeline's `spec.join`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinConfig {
    pub lateness: i64,
    pub dedupe: i64,
    pub max_future_skew: i64,
    /// Bit per [`Part`] (request = 1, response = 2, tracking = 4).
    pub required: u8,
    pub key_groups: u16,
}

impl JoinConfig {
    pub fn new(join: &JoinSpec, key_groups: u16) -> JoinConfig {
        let ms = |d: weft_crds::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        JoinConfig {
            lateness: ms(join.lateness),
            dedupe: ms(join.dedupe).max(ms(join.lateness)),
            max_future_skew: ms(join.max_future_skew),
            required: join.required.iter().fold(0, |m, p| m | part_bit(*p)),
            key_groups,
        }
    }
}

pub fn part_bit(part: Part) -> u8 {
    1 << (part as u8)
}

// The hot tier's budget counts what the memory really costs: the hash table's and heaps'
// spare capacity (both grow by doubling, so about half again on average) and the
// allocator's overhead per allocation, not only the payload.
const ALLOCATION_OVERHEAD: usize = 16;
const SLOT_BYTES: usize = std::mem::size_of::<(StateKey, Slot)>() * 3 / 2 + 1;
const TIMER_BYTES: usize = std::mem::size_of::<Timer>() * 3 / 2;
/// A marker waiting in the journal for the next checkpoint to store it.
const JOURNAL_BYTES: usize = std::mem::size_of::<Marker>() * 3 / 2;
/// A stored run of markers, as the join keeps count of it (see `JoinEngine::runs`): at most
/// one per key group and checkpoint, so with many sparse key groups about one per marker.
const RUN_BYTES: usize = std::mem::size_of::<(u64, i64)>() * 3 / 2;

/// Moves a resolved pending entry out of its slot (leaving an empty one to be overwritten)
/// and takes its parts' bytes off the hot tier's account.
fn take_pending(pending: &mut Pending, hot_bytes: &mut usize) -> Pending {
    let taken = std::mem::replace(
        pending,
        Pending {
            deadline: 0,
            parts: [None, None, None],
        },
    );
    *hot_bytes = hot_bytes.saturating_sub(taken.bytes() - pending.bytes());
    taken
}

/// One arrived part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartState {
    pub event_time: i64,
    /// Projected fields as JSON object members without braces.
    pub fields: Box<str>,
}

/// A tracking number whose required parts are not all there yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Event time of the part that arrived first, plus the lateness.
    pub deadline: i64,
    pub parts: [Option<PartState>; 3],
}

/// The bits of the parts that are there (see [`part_bit`]).
fn mask_of<T>(parts: &[Option<T>; 3]) -> u8 {
    Part::ALL
        .iter()
        .filter(|p| parts[**p as usize].is_some())
        .fold(0, |m, p| m | part_bit(*p))
}

impl Pending {
    pub fn mask(&self) -> u8 {
        mask_of(&self.parts)
    }

    /// Its parts, as the outputs read them.
    pub fn view(&self) -> Parts<'_> {
        Parts {
            deadline: self.deadline,
            parts: self.parts.each_ref().map(|p| {
                p.as_ref().map(|p| PartRef {
                    event_time: p.event_time,
                    fields: &p.fields,
                })
            }),
        }
    }

    /// Memory held on the heap (its parts' fields), for the hot tier's budget; the entry
    /// itself is counted with its slot.
    fn bytes(&self) -> usize {
        self.parts
            .iter()
            .flatten()
            .map(|p| p.fields.len() + ALLOCATION_OVERHEAD)
            .sum::<usize>()
    }
}

/// One arrived part, as the outputs read it: kept in the entry, or in the message that
/// completes the action (which is never copied into the entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartRef<'p> {
    pub event_time: i64,
    /// Projected fields as JSON object members without braces.
    pub fields: &'p str,
}

/// The parts of an action or incomplete action, as the outputs write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts<'p> {
    /// The entry's deadline (see [`Pending::deadline`]).
    pub deadline: i64,
    pub parts: [Option<PartRef<'p>>; 3],
}

impl<'p> Parts<'p> {
    /// Only the part `part`: an action complete with its first part.
    fn one(deadline: i64, part: Part, arrived: PartRef<'p>) -> Parts<'p> {
        let mut parts = Parts {
            deadline,
            parts: [None; 3],
        };
        parts.parts[part as usize] = Some(arrived);
        parts
    }

    pub fn mask(&self) -> u8 {
        mask_of(&self.parts)
    }

    /// The earliest event time among the arrived parts.
    pub fn first_event_time(&self) -> i64 {
        self.parts
            .iter()
            .flatten()
            .map(|p| p.event_time)
            .min()
            .unwrap_or(self.deadline)
    }

    /// The latest event time among the arrived parts: when the action was complete. Not the
    /// time of the part that arrived last, which depends on arrival order.
    pub fn last_event_time(&self) -> i64 {
        self.parts
            .iter()
            .flatten()
            .map(|p| p.event_time)
            .max()
            .unwrap_or(self.deadline)
    }
}

/// How a tracking number ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Expired,
}

/// A dedupe marker: the tracking number's action was emitted; parts arriving until `until`
/// are duplicates (or late), not the start of a new action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    pub until: i64,
    pub outcome: Outcome,
    /// The parts the emitted action had.
    pub parts: u8,
}

/// An entry of the join's state.
///
/// A pending entry lies in its hot-map slot, not behind a box: the second and third parts of
/// a tracking number reach it without one more cache miss, and an action costs one
/// allocation less (5–7% less CPU for 500k actions, joined or joined and processed; the
/// bucket's 128 bytes instead of 56 cost a few percent more memory).
#[derive(Clone, Debug, PartialEq, Eq)]
// A `Done` is a marker stored by an earlier version, read once and moved into the marker
// table: never held in a slot, so its unused room costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Entry {
    Pending(Pending),
    Done(Done),
}

impl Entry {
    /// When the entry's timer fires.
    pub fn deadline(&self) -> i64 {
        match self {
            Entry::Pending(p) => p.deadline,
            Entry::Done(d) => d.until,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Entry::Pending(p) => p.bytes(),
            // Held in the slot itself.
            Entry::Done(_) => 0,
        }
    }
}

/// Longest state key kept inline (key group and tracking number), without a heap allocation.
const INLINE_KEY: usize = 22;

/// A state key: the key group (big-endian u16) then the tracking number, so a key group's
/// state is one contiguous key range. Short keys (all real tracking numbers) live inline:
/// the hot map and the timer heaps copy keys instead of allocating them.
#[derive(Clone)]
pub enum StateKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl StateKey {
    pub fn new(bytes: &[u8]) -> StateKey {
        if bytes.len() <= INLINE_KEY {
            let mut inline = [0u8; INLINE_KEY];
            inline[..bytes.len()].copy_from_slice(bytes);
            StateKey::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            StateKey::Heap(bytes.into())
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            StateKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            StateKey::Heap(bytes) => bytes,
        }
    }

    /// Memory held outside the key itself.
    fn heap_bytes(&self) -> usize {
        match self {
            StateKey::Inline { .. } => 0,
            StateKey::Heap(b) => b.len() + 16,
        }
    }
}

impl std::ops::Deref for StateKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

// Hash and equality are the byte slice's, so the map can be asked with a `&[u8]`.
impl std::hash::Hash for StateKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for StateKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            // Inline keys are zero-padded: comparing the whole fixed-size arrays is exact, and
            // compiles to a few vector compares instead of a memcmp call per probe.
            (StateKey::Inline { len: a, bytes: x }, StateKey::Inline { len: b, bytes: y }) => {
                a == b && x == y
            }
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for StateKey {}

impl PartialOrd for StateKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StateKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl AsRef<[u8]> for StateKey {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::borrow::Borrow<[u8]> for StateKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kg, tn) = split_key(self);
        write!(f, "{kg}/{tn}")
    }
}

/// The state key of a tracking number in a key group.
pub fn state_key(key_group: u16, tracking_number: &str) -> StateKey {
    let tn = tracking_number.as_bytes();
    if 2 + tn.len() <= INLINE_KEY {
        let mut bytes = [0u8; INLINE_KEY];
        bytes[..2].copy_from_slice(&key_group.to_be_bytes());
        bytes[2..2 + tn.len()].copy_from_slice(tn);
        StateKey::Inline {
            len: (2 + tn.len()) as u8,
            bytes,
        }
    } else {
        let mut key = Vec::with_capacity(2 + tn.len());
        key.extend_from_slice(&key_group.to_be_bytes());
        key.extend_from_slice(tn);
        StateKey::Heap(key.into_boxed_slice())
    }
}

/// The key group and tracking number of a state key.
pub fn split_key(key: &[u8]) -> (u16, &str) {
    let kg = u16::from_be_bytes([
        key.first().copied().unwrap_or(0),
        key.get(1).copied().unwrap_or(0),
    ]);
    (
        kg,
        std::str::from_utf8(key.get(2..).unwrap_or_default()).unwrap_or_default(),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store: {0}")]
    Store(String),
    #[error("corrupt state entry for key {key:?}: {detail}")]
    Corrupt { key: Vec<u8>, detail: String },
}

/// A timer of a cold entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColdTimer {
    pub deadline: i64,
    pub key: Vec<u8>,
    /// The entry is a dedupe marker (`false`: pending, or not known): a marker expires
    /// without being read back. Only state written by earlier versions has timers of
    /// markers; markers are stored without one now.
    pub marker: bool,
}

/// What a stored entry is, as a restore needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredKind {
    Pending,
    Marker(Done),
}

/// Entries that were checkpointed and then evicted from memory.
pub trait ColdStore {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>, StateError>;
    /// Timers of cold entries of `key_group` with `from <= deadline < before`, in
    /// (deadline, key) order.
    fn due(&self, key_group: u16, from: i64, before: i64) -> Result<Vec<ColdTimer>, StateError>;
    /// The earliest cold timer of `key_group` at or after `from`.
    fn next_deadline(&self, key_group: u16, from: i64) -> Result<Option<i64>, StateError>;
    /// Calls `f` with every stored key and what its entry is (on restore, to know which keys
    /// are cold and to bring the markers back). A stored marker may have expired: markers
    /// are never deleted one by one, the store drops them when it compacts.
    fn for_each_entry(&self, f: &mut dyn FnMut(&[u8], StoredKind)) -> Result<(), StateError>;
    /// The marker stored one by one for a key of `key_group` (one that left memory), if any;
    /// it may have expired.
    fn get_marker(
        &self,
        key_group: u16,
        fingerprint: Fingerprint,
    ) -> Result<Option<Done>, StateError>;
    /// Calls `f` with every stored run of markers: key group, run number, markers.
    fn for_each_marker_run(&self, f: &mut dyn FnMut(u16, u64, &[Marker]))
    -> Result<(), StateError>;
    /// Stores markers one by one, for [`ColdStore::get_marker`] (a restore that cannot hold
    /// them all in memory). Idempotent: they are stored in runs already.
    fn store_markers(&self, markers: &[(u16, Vec<Marker>)]) -> Result<(), StateError>;
}

/// A cold tier that holds nothing (tests, and workers that never evicted).
pub struct NoCold;

impl ColdStore for NoCold {
    fn get(&self, _: &[u8]) -> Result<Option<Entry>, StateError> {
        Ok(None)
    }
    fn due(&self, _: u16, _: i64, _: i64) -> Result<Vec<ColdTimer>, StateError> {
        Ok(Vec::new())
    }
    fn next_deadline(&self, _: u16, _: i64) -> Result<Option<i64>, StateError> {
        Ok(None)
    }
    fn for_each_entry(&self, _: &mut dyn FnMut(&[u8], StoredKind)) -> Result<(), StateError> {
        Ok(())
    }
    fn get_marker(&self, _: u16, _: Fingerprint) -> Result<Option<Done>, StateError> {
        Ok(None)
    }
    fn for_each_marker_run(
        &self,
        _: &mut dyn FnMut(u16, u64, &[Marker]),
    ) -> Result<(), StateError> {
        Ok(())
    }
    fn store_markers(&self, _: &[(u16, Vec<Marker>)]) -> Result<(), StateError> {
        Ok(())
    }
}

/// A 64-bit fingerprint of a state key, for the set of keys in the store.
fn fingerprint(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    // Seeded apart from the hot map's hash, so the two do not collide together.
    rustc_hash::FxBuildHasher.hash_one((0x9e37_79b9_7f4a_7c15u64, key))
}

/// Fingerprints of the keys with a pending entry in the store, with counts: a key whose
/// fingerprint is absent certainly has none in RocksDB, so a new tracking number costs no
/// RocksDB lookup even after evictions (a fingerprint collision only costs a lookup). Stored
/// markers are not counted: the marker tables and [`JoinEngine`]'s `cold_markers_until` say
/// when one may be in the store. Memory stays bounded: past
/// `limit` keys it stops keeping count, and every key of a key group with cold entries is
/// looked up (RocksDB's bloom filter answers most misses) until the store is cleared whole.
struct StoredKeys {
    counts: Option<FxHashMap<u64, u32>>,
    limit: usize,
}

/// Stored keys tracked at most (about 20 bytes each).
const STORED_KEYS_LIMIT: usize = 2 << 20;

impl StoredKeys {
    fn new(limit: usize) -> StoredKeys {
        StoredKeys {
            counts: Some(FxHashMap::default()),
            limit,
        }
    }

    fn added(&mut self, key: &[u8]) {
        if let Some(counts) = &mut self.counts {
            *counts.entry(fingerprint(key)).or_default() += 1;
            if counts.len() > self.limit {
                self.counts = None;
            }
        }
    }

    fn removed(&mut self, key: &[u8]) {
        if let Some(counts) = &mut self.counts {
            let fp = fingerprint(key);
            if let Some(n) = counts.get_mut(&fp) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&fp);
                }
            }
        }
    }

    fn may_contain(&self, key: &[u8]) -> bool {
        self.counts
            .as_ref()
            .is_none_or(|c| c.contains_key(&fingerprint(key)))
    }

    /// The store is empty.
    fn clear(&mut self) {
        self.counts = Some(FxHashMap::default());
    }
}

/// Where joined results go.
pub trait JoinOutput {
    /// A complete action: every required part arrived.
    fn action(
        &mut self,
        key_group: u16,
        tracking_number: &str,
        parts: &Parts<'_>,
        completed_at: i64,
    );
    /// An incomplete action: the lateness bound passed; `missing` are the required parts that
    /// never came.
    fn incomplete(&mut self, key_group: u16, tracking_number: &str, parts: &Parts<'_>, missing: u8);
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{}: {}", .0.reason, .0.detail)]
    Rejected(Rejection),
    #[error("key group {0} is not owned by this worker")]
    NotOwned(u16),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Counters, all of them part of the checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinStats {
    pub complete: u64,
    pub incomplete: u64,
    pub duplicates: u64,
    /// Actions whose entry was written to RocksDB at some checkpoint.
    pub actions_persisted: u64,
}

/// A change to write at the next checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Store the entry, and its timer if it is pending (a marker has none); delete the timer
    /// of the previous version.
    Put {
        key: StateKey,
        entry: Entry,
        old_deadline: Option<i64>,
    },
    /// Delete the entry and its timer.
    Delete { key: StateKey, deadline: i64 },
}

/// What a checkpoint writes for the join.
#[derive(Debug, Default)]
pub struct JoinChanges {
    /// Pending entries.
    pub changes: Vec<Change>,
    /// Per key group, the markers made since the last checkpoint: one run, numbered `run`.
    pub marker_runs: Vec<(u16, Vec<Marker>)>,
    pub run: u64,
    /// Runs whose markers have all expired: (key group, run).
    pub expired_runs: Vec<(u16, u64)>,
    /// Markers that leave memory, to be stored one by one for lookups.
    pub marker_points: Vec<(u16, Vec<Marker>)>,
    /// The owned key groups' watermarks (from `first_key_group` on): once this checkpoint is
    /// written, a marker stored one by one that expired before its key group's watermark is
    /// garbage (every restore starts from here or later, and counts it as expired).
    pub first_key_group: u16,
    pub watermarks: Vec<i64>,
}

/// The engine's fields that resolving an entry touches besides its slot, borrowed apart from
/// the hot map.
struct Books<'e> {
    config: &'e JoinConfig,
    timers: &'e mut Timers,
    markers: &'e mut MarkerTable,
    journal: &'e mut Vec<Marker>,
    watermark: i64,
    forget_store: bool,
    hot_bytes: &'e mut usize,
    stats: &'e mut JoinStats,
}

impl Books<'_> {
    /// Replaces a resolved entry by its dedupe marker, in the key group's marker table and
    /// in the journal, for the next checkpoint to store. A stored entry leaves a tombstone in
    /// its slot until that checkpoint deletes it: a timer of an older version read ahead from
    /// the store must not bring that version back. Returns whether the slot is to be dropped.
    fn finish(
        &mut self,
        slot: &mut Slot,
        key: &StateKey,
        parts: &Parts<'_>,
        outcome: Outcome,
    ) -> bool {
        let stored = slot.persisted.get().is_some();
        if stored {
            self.stats.actions_persisted += 1;
        }
        let removed = slot.entry.as_ref().map_or(0, Entry::bytes);
        *self.hot_bytes = self.hot_bytes.saturating_sub(removed);
        slot.entry = None;
        slot.dirty = true;
        let done = Done {
            until: marker_until(self.config, parts.deadline),
            outcome,
            parts: parts.mask(),
        };
        // Not when it expires as it is made (the end of input, or no dedupe beyond the
        // lateness).
        if done.until >= self.watermark {
            let marker = Marker::new(Fingerprint::of(key), &done);
            if self.markers.insert_marker(marker) {
                *self.hot_bytes += MARKER_BYTES;
            }
            if !self.forget_store {
                *self.hot_bytes += JOURNAL_BYTES;
                self.journal.push(marker);
            }
        }
        !stored
    }

    /// Starts a tracking number in `slot` (new, or its stored entry deleted) with its first
    /// part; a part that alone is all that is required completes it at once. Returns whether
    /// the slot is to be dropped.
    fn start(
        &mut self,
        slot: &mut Slot,
        key: &StateKey,
        msg: Message<'_>,
        out: &mut impl JoinOutput,
    ) -> bool {
        let Message {
            part,
            tracking_number,
            event_time,
            fields,
        } = msg;
        let deadline = event_time.saturating_add(self.config.lateness);
        if part_bit(part) & self.config.required == self.config.required {
            let parts = Parts::one(deadline, part, PartRef { event_time, fields });
            let kg = split_key(key).0;
            out.action(kg, &tracking_number, &parts, parts.last_event_time());
            self.stats.complete += 1;
            return self.finish(slot, key, &parts, Outcome::Completed);
        }
        let mut pending = Pending {
            deadline,
            parts: [None, None, None],
        };
        pending.parts[part as usize] = Some(PartState {
            event_time,
            fields: fields.into(),
        });
        *self.hot_bytes += pending.bytes() + TIMER_BYTES;
        slot.young = if pending.deadline > self.watermark.saturating_add(2 * YOUNG_AGE) {
            self.timers.push_young(pending.deadline, key.clone())
        } else {
            self.timers.push(pending.deadline, key.clone());
            NO_YOUNG
        };
        slot.entry = Some(Entry::Pending(pending));
        slot.dirty = true;
        false
    }

    /// A part of a tracking number whose action was emitted: a duplicate if the action had
    /// it, else too late to join anything.
    fn after_marker(&mut self, done: Done, part: Part) -> Result<(), JoinError> {
        if done.parts & part_bit(part) != 0 {
            self.stats.duplicates += 1;
            return Ok(());
        }
        let what = if done.outcome == Outcome::Completed {
            "complete"
        } else {
            "incomplete"
        };
        Err(JoinError::Rejected(Rejection::new(
            DeadLetterReason::Late,
            format!("{part} arrived after its action was emitted as {what}"),
        )))
    }
}

/// Until when the marker of an entry resolved with lateness deadline `deadline` lasts: the
/// dedupe horizon from its first part.
fn marker_until(config: &JoinConfig, deadline: i64) -> i64 {
    deadline - config.lateness + config.dedupe
}

struct Slot {
    /// `None`: removed since the last checkpoint (a tombstone for a persisted entry).
    entry: Option<Entry>,
    /// Deadline of the version in the store, if any.
    persisted: MaybeTime,
    /// The pending entry's young timer ([`NO_YOUNG`]: none, or in the wheel).
    young: YoungSeq,
    dirty: bool,
}

const NO_YOUNG: YoungSeq = YoungSeq::MAX;

/// Where a due timer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerSource {
    Hot,
    Cold,
    ColdMarker,
}

/// What leaves memory at a checkpoint (it is in the store afterwards). At most `max`
/// entries leave at one checkpoint, which bounds the size of its write batch (and of the
/// RocksDB memtable the batch lands in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evict {
    Nothing,
    /// Dedupe markers, whole key groups' tables at a time: most of the state at steady
    /// state, and touched again only by a duplicate or a late part. Pending parts stay,
    /// they are about to join.
    Markers {
        max: usize,
    },
    Everything {
        max: usize,
    },
}

/// How far ahead of a key group's watermark its cold timers are read (event time, ms).
const COLD_READ_AHEAD: i64 = 60_000;

/// Entries one checkpoint moves to RocksDB at most when the join is over its memory budget.
pub const EVICTION_CHUNK: usize = 200_000;

impl Evict {
    /// What the next checkpoint evicts after this one moved `evicted` entries, or `None` when
    /// no more has to leave. A checkpoint evicts nothing at first: storing the markers made
    /// since the last one frees their journal, often enough. While memory is over the
    /// budget after that, markers leave; when they are gone and pending parts alone still
    /// fill it, those go too, until the hot tier is back under half its budget (or nothing
    /// more can leave). In chunks: each chunk is one checkpoint with a bounded write batch.
    pub fn next(self, evicted: usize, hot_bytes: usize, budget: usize) -> Option<Evict> {
        if self == Evict::Nothing {
            return (hot_bytes > budget).then_some(Evict::Markers {
                max: EVICTION_CHUNK,
            });
        }
        if hot_bytes <= budget / 2 || (evicted == 0 && matches!(self, Evict::Everything { .. })) {
            return None;
        }
        Some(if evicted < EVICTION_CHUNK {
            Evict::Everything {
                max: EVICTION_CHUNK,
            }
        } else {
            self
        })
    }

    /// Whether another key group's markers leave, after `evicted` entries did.
    fn takes_markers(self, evicted: usize) -> bool {
        match self {
            Evict::Nothing => false,
            Evict::Markers { max } | Evict::Everything { max } => evicted < max,
        }
    }

    /// Whether another pending entry leaves, after `evicted` entries did.
    fn takes_pending(self, evicted: usize) -> bool {
        matches!(self, Evict::Everything { max } if evicted < max)
    }
}

/// The join state machine for a range of key groups.
pub struct JoinEngine {
    config: JoinConfig,
    owned: KeyGroupRange,
    slots: FxHashMap<StateKey, Slot>,
    timers: Vec<Timers>,
    watermarks: Vec<i64>,
    /// The latest event time any owned key group accepted (ended key groups aside): what a
    /// message may not be more than the future skew ahead of (with its key group's).
    worker_watermark: i64,
    cold_next: Vec<Option<i64>>,
    /// Cold timers before this deadline have been handed out already.
    cold_scanned: Vec<i64>,
    /// Cold timers read ahead: every stored timer from `cold_scanned` up to `cold_read_to`
    /// (exclusive), as of the read. One RocksDB iterator per [`COLD_READ_AHEAD`] of event
    /// time, not two per cold timer (iterators over memtables and every SST file cost more
    /// than the rest of the cold path together).
    cold_ahead: Vec<VecDeque<ColdTimer>>,
    cold_read_to: Vec<i64>,
    /// Dedupe markers in memory, per key group.
    markers: Vec<MarkerTable>,
    /// Markers made since the last checkpoint, per key group, for it to store as a run.
    journal: Vec<Vec<Marker>>,
    /// Per key group, the stored runs of markers: (run, latest expiry), oldest first.
    runs: Vec<VecDeque<(u64, i64)>>,
    /// The number of the next checkpoint's runs.
    next_run: u64,
    /// The latest expiry among a key group's stored markers that are not in memory (evicted,
    /// or left in the store at a restore): until its watermark passes it, a key missing from
    /// memory may have a marker in the store.
    cold_markers_until: Vec<i64>,
    /// Per key group, which keys may have one of those cold markers: most keys missing from
    /// memory are then not looked up in RocksDB.
    cold_markers: Vec<ColdMarkers>,
    /// How far the watermark moves between two sweeps of a marker table.
    sweep_interval: i64,
    hot_bytes: usize,
    stored: StoredKeys,
    /// Set by [`JoinEngine::finish_and_forget_store`].
    forget_store: bool,
    pub stats: JoinStats,
}

impl JoinEngine {
    pub fn new(config: JoinConfig, owned: KeyGroupRange) -> JoinEngine {
        let n = usize::from(owned.len());
        JoinEngine {
            config,
            owned,
            slots: FxHashMap::default(),
            timers: (0..n)
                .map(|_| Timers::new(config.lateness.saturating_add(config.dedupe)))
                .collect(),
            watermarks: vec![i64::MIN; n],
            worker_watermark: i64::MIN,
            cold_next: vec![None; n],
            cold_scanned: vec![i64::MIN; n],
            cold_ahead: (0..n).map(|_| VecDeque::new()).collect(),
            cold_read_to: vec![i64::MIN; n],
            markers: (0..n).map(|_| MarkerTable::default()).collect(),
            journal: (0..n).map(|_| Vec::new()).collect(),
            runs: (0..n).map(|_| VecDeque::new()).collect(),
            next_run: 0,
            cold_markers_until: vec![i64::MIN; n],
            cold_markers: (0..n).map(|_| ColdMarkers::default()).collect(),
            // An expired marker stays at most a sixteenth of the horizon.
            sweep_interval: (config.dedupe / 16).max(1000),
            hot_bytes: 0,
            stored: StoredKeys::new(STORED_KEYS_LIMIT),
            forget_store: false,
            stats: JoinStats::default(),
        }
    }

    /// [`JoinEngine::new`] that keeps count of at most `limit` stored keys.
    #[cfg(test)]
    fn with_stored_keys_limit(mut self, limit: usize) -> JoinEngine {
        self.stored = StoredKeys::new(limit);
        self
    }

    /// Approximate bytes of state held in memory.
    pub fn hot_bytes(&self) -> usize {
        self.hot_bytes
    }

    /// Entries (pending and markers) held in memory.
    pub fn hot_entries(&self) -> usize {
        self.slots.len() + self.hot_markers()
    }

    /// Dedupe markers held in memory (some may have expired since the last sweep).
    pub fn hot_markers(&self) -> usize {
        self.markers.iter().map(MarkerTable::len).sum()
    }

    /// Whether no entry is left in either tier (removals may still be unwritten, and
    /// expired markers may still be stored).
    pub fn holds_nothing(&self) -> bool {
        self.slots.values().all(|s| s.entry.is_none())
            && self.cold_next.iter().all(Option::is_none)
            && self.hot_markers() == 0
            && self
                .cold_markers_until
                .iter()
                .zip(&self.watermarks)
                .all(|(until, wm)| until < wm)
    }

    /// Pending tracking numbers held in memory.
    pub fn hot_pending(&self) -> usize {
        self.slots
            .values()
            .filter(|s| matches!(s.entry, Some(Entry::Pending(_))))
            .count()
    }

    pub fn watermarks(&self) -> &[i64] {
        &self.watermarks
    }

    /// Restores watermarks, the live dedupe markers and the cold tier's earliest timers after
    /// a restart. Markers come back into memory up to half of `max_hot_bytes`; the rest stay
    /// in the store, where lookups find them.
    pub fn restore(
        &mut self,
        watermarks: &[i64],
        stats: JoinStats,
        cold: &impl ColdStore,
        max_hot_bytes: usize,
    ) -> Result<(), StateError> {
        for (i, wm) in watermarks.iter().enumerate().take(self.watermarks.len()) {
            self.watermarks[i] = *wm;
            // A key group whose input ended (`i64::MAX`) says nothing about the others' time.
            if *wm != i64::MAX {
                self.worker_watermark = self.worker_watermark.max(*wm);
            }
        }
        self.stats = stats;
        let owned = self.owned;
        let mut room = (max_hot_bytes / 2).saturating_sub(self.hot_bytes) / MARKER_BYTES;
        let mut loaded = 0;
        // Markers beyond the room stay in the store, stored one by one for lookups.
        let mut overflow: Vec<Vec<Marker>> = vec![Vec::new(); self.markers.len()];
        let (stored, markers, runs, wms) = (
            &mut self.stored,
            &mut self.markers,
            &mut self.runs,
            &self.watermarks,
        );
        let mut restore_marker = |i: usize, marker: Marker| {
            if marker.until() < wms[i] {
                return;
            }
            if room == 0 {
                overflow[i].push(marker);
            } else if markers[i].insert_marker(marker) {
                room -= 1;
                loaded += 1;
            }
        };
        let index = |kg: u16| owned.contains(kg).then(|| usize::from(kg - owned.start));
        let mut next_run = 0;
        let mut run_count = 0;
        cold.for_each_marker_run(&mut |kg, run, stored_markers| {
            next_run = next_run.max(run + 1);
            let Some(i) = index(kg) else {
                return;
            };
            let latest = stored_markers
                .iter()
                .map(Marker::until)
                .max()
                .unwrap_or(i64::MIN);
            runs[i].push_back((run, latest));
            run_count += 1;
            for marker in stored_markers {
                restore_marker(i, *marker);
            }
        })?;
        // Earlier versions stored a marker under its key, with the pending entries.
        cold.for_each_entry(&mut |key, kind| match kind {
            StoredKind::Pending => stored.added(key),
            StoredKind::Marker(done) => {
                if let Some(i) = index(split_key(key).0) {
                    restore_marker(i, Marker::new(Fingerprint::of(key), &done));
                }
            }
        })?;
        self.next_run = next_run;
        self.hot_bytes += loaded * MARKER_BYTES + run_count * RUN_BYTES;
        let mut left: Vec<(u16, Vec<Marker>)> = Vec::new();
        for (i, markers) in overflow.into_iter().enumerate() {
            if let Some(latest) = markers.iter().map(Marker::until).max() {
                self.cold_markers_until[i] = self.cold_markers_until[i].max(latest);
                self.hot_bytes += self.cold_markers[i].add(&markers);
                left.push((owned.start + i as u16, markers));
            }
        }
        if !left.is_empty() {
            cold.store_markers(&left)?;
        }
        for i in 0..self.cold_next.len() {
            self.cold_next[i] = cold.next_deadline(self.owned.start + i as u16, i64::MIN)?;
        }
        Ok(())
    }

    fn index(&self, kg: u16) -> Result<usize, JoinError> {
        if self.owned.contains(kg) {
            Ok(usize::from(kg - self.owned.start))
        } else {
            Err(JoinError::NotOwned(kg))
        }
    }

    /// Joins one message. A message that is too far ahead of its key group's watermark, or that
    /// can no longer join anything, is rejected (to go to the dead letters) without touching
    /// state or time.
    pub fn process(
        &mut self,
        msg: Message<'_>,
        cold: &impl ColdStore,
        out: &mut impl JoinOutput,
    ) -> Result<(), JoinError> {
        let kg = key_group(msg.tracking_number.as_bytes(), self.config.key_groups);
        let idx = self.index(kg)?;
        let wm = self.watermarks[idx];
        let t = msg.event_time;
        // Ahead of what? Of the later of the key group's watermark and the worker's: a key
        // group quiet for longer than the skew (a sparse key group, a quiet night) must take
        // up the time the others have reached, or every message it gets from then on would be
        // "in the future" and it would never move again. A clock far ahead of everything the
        // worker has seen is still refused.
        let reference = wm.max(self.worker_watermark);
        if reference != i64::MIN && t > reference.saturating_add(self.config.max_future_skew) {
            return Err(JoinError::Rejected(Rejection::new(
                DeadLetterReason::FutureEventTime,
                format!(
                    "event time {t} is {} ms ahead of the watermark {reference} (the later of \
                     its key group's and the worker's)",
                    t - reference
                ),
            )));
        }
        let key = state_key(kg, &msg.tracking_number);
        let part = msg.part as usize;
        // Only key groups with evicted entries can have the key in RocksDB.
        if self.cold_next[idx].is_some() || self.cold_markers_until[idx] >= wm {
            self.load_cold(&key, idx, cold, false)?;
        }
        let too_late = wm != i64::MIN && t.saturating_add(self.config.lateness) < wm;
        let late = || {
            JoinError::Rejected(Rejection::new(
                DeadLetterReason::Late,
                format!("event time {t} is more than the lateness behind the watermark {wm}"),
            ))
        };
        let required = self.config.required;
        let lateness = self.config.lateness;
        let (slots, mut books) = self.split(idx);
        // One hash lookup per message in the pending entries; a tracking number not among
        // them is looked up in the markers before it starts.
        match slots.entry(key.clone()) {
            HashEntry::Occupied(mut o) => {
                let slot = o.get_mut();
                match &mut slot.entry {
                    Some(Entry::Pending(pending)) => {
                        if pending.parts[part].is_some() {
                            books.stats.duplicates += 1;
                            return Ok(());
                        }
                        if (pending.mask() | part_bit(msg.part)) & required == required {
                            // Written out from the message: the part is never kept.
                            books.timers.cancel_young(slot.young, &key);
                            let pending = take_pending(pending, books.hot_bytes);
                            let mut parts = pending.view();
                            parts.parts[part] = Some(PartRef {
                                event_time: t,
                                fields: msg.fields,
                            });
                            out.action(kg, &msg.tracking_number, &parts, parts.last_event_time());
                            books.stats.complete += 1;
                            if books.finish(slot, &key, &parts, Outcome::Completed) {
                                o.remove();
                                *books.hot_bytes = books
                                    .hot_bytes
                                    .saturating_sub(SLOT_BYTES + key.heap_bytes());
                            }
                            return Ok(());
                        }
                        *books.hot_bytes += msg.fields.len() + ALLOCATION_OVERHEAD;
                        pending.parts[part] = Some(PartState {
                            event_time: t,
                            fields: msg.fields.into(),
                        });
                        slot.dirty = true;
                        if t.saturating_add(lateness) < pending.deadline {
                            // The lateness bound runs from the earliest part, whichever
                            // arrived first: the outcome must not depend on arrival order. The
                            // old timer goes stale.
                            pending.deadline = t.saturating_add(lateness);
                            *books.hot_bytes += TIMER_BYTES;
                            books.timers.cancel_young(slot.young, &key);
                            slot.young = NO_YOUNG;
                            books.timers.push(pending.deadline, key);
                        }
                    }
                    // The stored entry was deleted since the last checkpoint (its marker is in
                    // the table): the tracking number starts again in this slot, unless the
                    // marker says it is done.
                    _ => {
                        if let Some(done) = books.markers.get(Fingerprint::of(&key), wm) {
                            return books.after_marker(done, msg.part);
                        }
                        if too_late {
                            return Err(late());
                        }
                        if books.start(o.get_mut(), &key, msg, out) {
                            o.remove();
                            *books.hot_bytes = books
                                .hot_bytes
                                .saturating_sub(SLOT_BYTES + key.heap_bytes());
                        }
                    }
                }
            }
            HashEntry::Vacant(v) => {
                if let Some(done) = books.markers.get(Fingerprint::of(&key), wm) {
                    return books.after_marker(done, msg.part);
                }
                if too_late {
                    return Err(late());
                }
                let mut slot = Slot {
                    entry: None,
                    persisted: MaybeTime::NONE,
                    young: NO_YOUNG,
                    dirty: true,
                };
                if !books.start(&mut slot, &key, msg, out) {
                    *books.hot_bytes += SLOT_BYTES + key.heap_bytes();
                    v.insert(slot);
                }
            }
        }
        if t > wm {
            self.watermarks[idx] = t;
            self.worker_watermark = self.worker_watermark.max(t);
            self.fire(idx, cold, out)?;
        }
        Ok(())
    }

    /// Advances every key group's watermark to the end of time: every pending entry resolves
    /// (as incomplete) and every marker is dropped. Used at the end of a finite input.
    pub fn finish(
        &mut self,
        cold: &impl ColdStore,
        out: &mut impl JoinOutput,
    ) -> Result<(), StateError> {
        for idx in 0..self.watermarks.len() {
            self.watermarks[idx] = i64::MAX;
            self.fire(idx, cold, out)?;
        }
        Ok(())
    }

    /// [`JoinEngine::finish`] for one key group: its input has ended (a bounded run).
    pub fn finish_key_group(
        &mut self,
        kg: u16,
        cold: &impl ColdStore,
        out: &mut impl JoinOutput,
    ) -> Result<(), JoinError> {
        let idx = self.index(kg)?;
        self.watermarks[idx] = i64::MAX;
        self.fire(idx, cold, out)?;
        Ok(())
    }

    /// [`JoinEngine::finish`] for a caller that then clears the store whole: resolved entries
    /// leave memory at once instead of waiting as tombstones for the next checkpoint, so the
    /// cold tier streams through memory instead of coming back into it.
    pub fn finish_and_forget_store(
        &mut self,
        cold: &impl ColdStore,
        out: &mut impl JoinOutput,
    ) -> Result<(), StateError> {
        self.forget_store = true;
        // Markers only wait to expire, so those in memory go now, and every timer is set
        // again for the entries left: `finish` then walks the pending entries, not the stale
        // timers of completed ones. Its outputs are the same: each pending entry's timer is
        // the one at its deadline. Entries with a stored version stay (a cold timer may name
        // them).
        let mut freed = 0;
        self.slots.retain(|key, slot| {
            let keep =
                slot.persisted.get().is_some() || matches!(slot.entry, Some(Entry::Pending(_)));
            if !keep {
                freed += SLOT_BYTES + key.heap_bytes();
            }
            keep
        });
        for markers in &mut self.markers {
            freed += markers.len() * MARKER_BYTES;
            markers.clear();
        }
        for journal in &mut self.journal {
            freed += journal.len() * JOURNAL_BYTES;
            *journal = Vec::new();
        }
        for timers in &mut self.timers {
            freed += timers.len() * TIMER_BYTES;
            timers.clear();
        }
        for (key, slot) in &self.slots {
            if let Some(Entry::Pending(pending)) = &slot.entry {
                let (kg, _) = split_key(key);
                let idx = usize::from(kg.wrapping_sub(self.owned.start));
                if let Some(timers) = self.timers.get_mut(idx) {
                    timers.push(pending.deadline, key.clone());
                    freed = freed.saturating_sub(TIMER_BYTES);
                }
            }
        }
        self.hot_bytes = self.hot_bytes.saturating_sub(freed);
        self.finish(cold, out)?;
        self.stored.clear();
        Ok(())
    }

    /// The hot map, and everything else resolving an entry in place touches.
    fn split(&mut self, idx: usize) -> (&mut FxHashMap<StateKey, Slot>, Books<'_>) {
        (
            &mut self.slots,
            Books {
                config: &self.config,
                timers: &mut self.timers[idx],
                markers: &mut self.markers[idx],
                journal: &mut self.journal[idx],
                watermark: self.watermarks[idx],
                forget_store: self.forget_store,
                hot_bytes: &mut self.hot_bytes,
                stats: &mut self.stats,
            },
        )
    }

    /// Brings a key's entry from the cold tier into memory (a pending entry clean into the
    /// hot map, a live marker into the marker table), if it is there. Unless `certain` (a
    /// cold timer named the key), only key groups with cold entries are asked.
    fn load_cold(
        &mut self,
        key: &[u8],
        idx: usize,
        cold: &impl ColdStore,
        certain: bool,
    ) -> Result<(), StateError> {
        let wm = self.watermarks[idx];
        let maybe_pending =
            certain || (self.cold_next[idx].is_some() && self.stored.may_contain(key));
        let maybe_marker = self.cold_markers_until[idx] >= wm;
        if !(maybe_pending || maybe_marker) || self.slots.contains_key(key) {
            return Ok(());
        }
        let fingerprint = Fingerprint::of(key);
        if self.markers[idx].get(fingerprint, wm).is_some() {
            return Ok(());
        }
        if maybe_marker && self.cold_markers[idx].may_contain(fingerprint, wm) {
            let kg = self.owned.start + idx as u16;
            if let Some(done) = cold.get_marker(kg, fingerprint)?
                && done.until >= wm
            {
                if self.markers[idx].insert(fingerprint, &done) {
                    self.hot_bytes += MARKER_BYTES;
                }
                return Ok(());
            }
        }
        if !maybe_pending {
            return Ok(());
        }
        match cold.get(key)? {
            Some(Entry::Pending(pending)) => {
                let key = StateKey::new(key);
                let entry = Entry::Pending(pending);
                self.hot_bytes += entry.bytes() + SLOT_BYTES + key.heap_bytes();
                self.slots.insert(
                    key,
                    Slot {
                        persisted: MaybeTime::at(entry.deadline()),
                        entry: Some(entry),
                        young: NO_YOUNG,
                        dirty: false,
                    },
                );
            }
            // A marker stored by an earlier version, under its key.
            Some(Entry::Done(done))
                if done.until >= wm && self.markers[idx].insert(fingerprint, &done) =>
            {
                self.hot_bytes += MARKER_BYTES;
            }
            _ => {}
        }
        Ok(())
    }

    /// Fires the timers of key group `idx` that the watermark has passed, in (deadline, key)
    /// order whichever tier they are in, until none is due; sweeps its expired markers.
    fn fire(
        &mut self,
        idx: usize,
        cold: &impl ColdStore,
        out: &mut impl JoinOutput,
    ) -> Result<(), StateError> {
        let wm = self.watermarks[idx];
        let kg = self.owned.start + idx as u16;
        let swept = self.markers[idx].sweep(wm, self.sweep_interval);
        self.hot_bytes = self.hot_bytes.saturating_sub(swept * MARKER_BYTES);
        let ripe = wm
            .saturating_sub(YOUNG_AGE)
            .saturating_add(self.config.lateness);
        let stale = self.timers[idx].promote(wm, ripe);
        self.hot_bytes = self.hot_bytes.saturating_sub(stale * TIMER_BYTES);
        loop {
            let mut due: Vec<(i64, StateKey, TimerSource)> = Vec::new();
            while let Some((deadline, key)) = self.timers[idx].pop_due(wm) {
                self.hot_bytes = self.hot_bytes.saturating_sub(TIMER_BYTES);
                due.push((deadline, key, TimerSource::Hot));
            }
            if self.cold_next[idx].is_some_and(|d| d < wm) {
                if self.cold_read_to[idx] < wm {
                    let from = self.cold_read_to[idx].max(self.cold_scanned[idx]);
                    let to = wm.saturating_add(COLD_READ_AHEAD);
                    self.cold_ahead[idx].extend(cold.due(kg, from, to)?);
                    self.cold_read_to[idx] = to;
                }
                let ahead = &mut self.cold_ahead[idx];
                while ahead.front().is_some_and(|t| t.deadline < wm) {
                    let Some(t) = ahead.pop_front() else {
                        break;
                    };
                    let source = if t.marker {
                        TimerSource::ColdMarker
                    } else {
                        TimerSource::Cold
                    };
                    due.push((t.deadline, StateKey::new(&t.key), source));
                }
                self.cold_scanned[idx] = wm;
                self.cold_next[idx] = match ahead.front() {
                    Some(t) => Some(t.deadline),
                    None => cold.next_deadline(kg, self.cold_read_to[idx])?,
                };
            }
            if due.is_empty() {
                return Ok(());
            }
            due.sort_unstable();
            due.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
            for (deadline, key, source) in due {
                // A hot timer's entry is in memory (eviction drops the hot timers with it);
                // a cold one's is in memory only if it was read back since.
                if source != TimerSource::Hot && !self.slots.contains_key(&key) {
                    if source == TimerSource::ColdMarker {
                        // A marker stored by an earlier version, with a timer: it only has to
                        // go, a tombstone for the checkpoint to delete it and its timer by
                        // (none when the store is cleared whole, or when the key has a newer
                        // marker, which the checkpoint writes over it).
                        let newer = self.markers[idx].get(Fingerprint::of(&key), wm).is_some();
                        if !self.forget_store && !newer {
                            self.hot_bytes += SLOT_BYTES + key.heap_bytes();
                            self.slots.insert(
                                key,
                                Slot {
                                    entry: None,
                                    persisted: MaybeTime::at(deadline),
                                    young: NO_YOUNG,
                                    dirty: true,
                                },
                            );
                        }
                        continue;
                    }
                    self.load_cold(&key, idx, cold, true)?;
                }
                let required = self.config.required;
                let (slots, mut books) = self.split(idx);
                // A timer is stale when its entry changed since it was set.
                let Some(slot) = slots.get_mut(&key) else {
                    continue;
                };
                let Some(Entry::Pending(pending)) = &mut slot.entry else {
                    continue;
                };
                if pending.deadline != deadline {
                    continue;
                }
                let pending = take_pending(pending, books.hot_bytes);
                let (_, tn) = split_key(&key);
                let parts = pending.view();
                out.incomplete(kg, tn, &parts, required & !parts.mask());
                books.stats.incomplete += 1;
                if books.finish(slot, &key, &parts, Outcome::Expired) {
                    slots.remove(&key);
                    *books.hot_bytes = books
                        .hot_bytes
                        .saturating_sub(SLOT_BYTES + key.heap_bytes());
                }
            }
        }
    }

    /// The changes since the last checkpoint, to be written with the input positions in one
    /// batch. Afterwards memory and store agree. With `evict`, entries leave memory (they
    /// are in the store now), which keeps memory bounded whatever the lateness.
    pub fn checkpoint_changes(&mut self, evict: Evict) -> JoinChanges {
        let start = self.owned.start;
        let index = |key: &[u8]| usize::from(split_key(key).0.wrapping_sub(start));
        let mut out = JoinChanges {
            run: self.next_run,
            first_key_group: start,
            watermarks: self.watermarks.clone(),
            ..JoinChanges::default()
        };
        let mut freed = 0usize;
        // The journal's markers, one run per key group (those expired since stay out), and
        // the runs whose markers have all expired go.
        for (i, journal) in self.journal.iter_mut().enumerate() {
            let kg = start + i as u16;
            let wm = self.watermarks[i];
            freed += journal.len() * JOURNAL_BYTES;
            freed += self.cold_markers[i].expire(wm);
            let mut markers = std::mem::take(journal);
            markers.retain(|m| m.until() >= wm);
            if let Some(latest) = markers.iter().map(Marker::until).max() {
                self.runs[i].push_back((self.next_run, latest));
                self.hot_bytes += RUN_BYTES;
                out.marker_runs.push((kg, markers));
            }
            while let Some(&(run, latest)) = self.runs[i].front()
                && latest < wm
            {
                self.runs[i].pop_front();
                freed += RUN_BYTES;
                out.expired_runs.push((kg, run));
            }
        }
        if !out.marker_runs.is_empty() {
            self.next_run += 1;
        }
        let mut evicted_deadlines: Vec<Option<i64>> = vec![None; self.timers.len()];
        let mut evicted = 0usize;
        let mut moved = false;
        let (stored, changes) = (&mut self.stored, &mut out.changes);
        self.slots.retain(|key, slot| {
            if slot.dirty {
                match &slot.entry {
                    Some(Entry::Pending(pending)) => {
                        let deadline = pending.deadline;
                        // An evicted entry moves into the change: no copy of the state at
                        // the moment memory is fullest.
                        let entry = if evict.takes_pending(evicted) {
                            evicted += 1;
                            moved = true;
                            freed += pending.bytes();
                            slot.entry.take()
                        } else {
                            slot.entry.clone()
                        };
                        if let Some(entry) = entry {
                            changes.push(Change::Put {
                                key: key.clone(),
                                entry,
                                old_deadline: slot.persisted.get(),
                            });
                        }
                        if slot.persisted.get().is_none() {
                            stored.added(key);
                        }
                        slot.persisted = MaybeTime::at(deadline);
                    }
                    // A resolved stored entry (its marker is in this checkpoint's runs): the
                    // entry and its timer go. Markers never live in a slot.
                    _ => {
                        if let Some(deadline) = slot.persisted.get() {
                            changes.push(Change::Delete {
                                key: key.clone(),
                                deadline,
                            });
                            stored.removed(key);
                        }
                        freed += SLOT_BYTES + key.heap_bytes();
                        return false;
                    }
                }
                slot.dirty = false;
            }
            // An entry moved into its change above leaves; a clean one may leave too.
            let leaves = std::mem::take(&mut moved) || {
                let clean_leaves = slot.entry.is_some() && evict.takes_pending(evicted);
                evicted += usize::from(clean_leaves);
                clean_leaves
            };
            if leaves {
                freed += slot.entry.as_ref().map_or(0, Entry::bytes);
                freed += SLOT_BYTES + key.heap_bytes();
                // It is stored now, at its stored deadline.
                if let Some(deadline) = slot.persisted.get()
                    && let Some(d) = evicted_deadlines.get_mut(index(key))
                {
                    *d = Some(d.map_or(deadline, |x: i64| x.min(deadline)));
                }
                return false;
            }
            true
        });
        if evict != Evict::Nothing {
            // Whole key groups' markers, the largest tables first, stored one by one for
            // lookups as they leave.
            let mut tables: Vec<usize> = (0..self.markers.len())
                .filter(|i| !self.markers[*i].is_empty())
                .collect();
            tables.sort_by_key(|i| std::cmp::Reverse(self.markers[*i].len()));
            for i in tables {
                if !evict.takes_markers(evicted) {
                    break;
                }
                evicted += self.markers[i].len();
                freed += self.markers[i].len() * MARKER_BYTES;
                let live = self.markers[i].take_live(self.watermarks[i]);
                if let Some(latest) = live.iter().map(Marker::until).max() {
                    self.cold_markers_until[i] = self.cold_markers_until[i].max(latest);
                    self.hot_bytes += self.cold_markers[i].add(&live);
                    out.marker_points.push((start + i as u16, live));
                }
            }
            for (i, timers) in self.timers.iter_mut().enumerate() {
                // Timers of entries that left go with them (the store has their timers).
                freed += timers.retain(|(_, key)| self.slots.contains_key(key)) * TIMER_BYTES;
                if let Some(d) = evicted_deadlines[i] {
                    self.cold_next[i] = Some(self.cold_next[i].map_or(d, |c| c.min(d)));
                    // New cold timers: what was read ahead is incomplete now.
                    self.cold_ahead[i].clear();
                    self.cold_read_to[i] = self.cold_scanned[i];
                }
            }
        }
        self.hot_bytes = self.hot_bytes.saturating_sub(freed);
        if self.slots.is_empty()
            && self.hot_markers() == 0
            && self.runs.iter().all(VecDeque::is_empty)
            && self.cold_markers.iter().all(|c| c.bytes() == 0)
        {
            self.hot_bytes = 0;
        }
        out
    }
}

#[cfg(test)]
mod tests;
