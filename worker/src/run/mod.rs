//! `weft-worker run`: the shuffle, join and process stages over Kafka, in one thread.
//!
//! The shuffle reads the raw source topics in a consumer group, parses and filters, and
//! writes each message to the keyed topic's partition of its key group. The join reads the
//! keyed partitions of the key groups this worker owns (and owned partitions of
//! pre-partitioned sources), the process stage the owned partitions of the internal actions
//! topic: manual assignment, never group rebalancing, because a key group's state lives here.
//!
//! A checkpoint flushes the producer first, then writes the state changes and the consumed
//! offsets in one RocksDB batch; a restart resumes from there, not from Kafka's committed
//! offsets (which are committed afterwards, for lag monitoring only). What a restarted worker
//! emits again carries the same keys, and the stages after it drop what they already applied.
//!
//! A bounded run (`--bounded`) reads the inputs up to their ends as of its start, then every
//! key group's time runs out as at the end of a file in local mode. End markers carry the end
//! through the internal topics: each worker's shuffle sends one to every keyed partition when
//! its share of the raw partitions is done, each worker's join one to every actions partition
//! when its key groups are done; a partition has ended when all workers' markers are in.

pub mod config;
pub mod embedded;
pub mod outputs;
pub mod shuffle;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use weft_crds::keygroup::{KeyGroupRange, even_range};
use weft_crds::{JoinPipeline, ProcessDefinitionSpec};

use crate::admin::{CheckpointStatus, PartitionStatus, Shared};
use crate::join::record::RecordLayout;
use crate::join::{Evict, JoinConfig, JoinEngine, JoinError, JoinStats};
use crate::kafka::batch::{self, BATCH_HEADER};
use crate::kafka::{
    END_HEADER, Health, PROCESS_HEADER, SOURCE_HEADER, Topics, WeftContext, client_config,
    consumer_config, ensure_topic, producer_config,
};
use crate::local::{
    PROCESS_BATCH, Summary, SummaryCounts, classifying_plans, compile_plans, step_names,
};
use crate::metrics::StageCounts;
use crate::process::thread::{Classifier, ProcessThread, StageCheckpoint};
use crate::process::{ClassifiedBatch, ProcessEngine, ProcessError, ProcessMeta, ProcessPlan};
use crate::sinks::kafka::{KafkaSink, SinkError};
use crate::sources::{DeadLetterReason, Extracted, Rejection, SourcePlan};
use crate::state::Store;
use outputs::{JoinOutputs, Outputs, ProcessSink, Received, send_dead_letter};

/// Actions held for a definition this worker does not know yet, at most.
const MAX_PARKED: usize = 100_000;
/// How long actions wait for a reload that makes their definition known.
const PARK_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages taken from one consumer before the next gets its turn.
const BATCH: usize = 1024;
/// Process-stage changes that make a checkpoint due (see local mode).
const PROCESS_CHANGES_PER_CHECKPOINT: usize = 300_000;
/// How long a checkpoint waits for the brokers to acknowledge the outputs before it gives up
/// and is retried later.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RunOptions {
    pub pipeline: JoinPipeline,
    pub processes: Vec<(String, ProcessDefinitionSpec)>,
    /// The files or directories the pipeline was read from, watched for changes (empty: no
    /// watching). Changed ProcessDefinitions apply at the next checkpoint; other changes
    /// need a restart (the operator rolls the pods for those).
    pub config: Vec<PathBuf>,
    /// Which JoinPipeline of the files.
    pub pipeline_name: Option<String>,
    /// The pipeline's namespace: part of the internal topic names.
    pub namespace: String,
    pub ordinal: u32,
    pub replicas: u32,
    /// An explicit assignment (epoch, range), replacing the even split by ordinal.
    pub assignment: Option<(u64, KeyGroupRange)>,
    /// Overrides `spec.kafka.bootstrapServers`.
    pub bootstrap_servers: Option<String>,
    pub state_dir: PathBuf,
    pub checkpoint_interval: Option<Duration>,
    pub max_hot_bytes: usize,
    pub bounded: bool,
    /// Create missing internal topics (with `keyGroups` partitions).
    pub create_topics: bool,
    /// Fault injection for tests: stop dead, without flushing or checkpointing, after this
    /// many input messages (as a `kill -9` would).
    pub abort_after_events: Option<u64>,
}

/// How a run ended.
#[derive(Debug)]
pub enum Ending {
    /// A bounded run read everything: this worker's share of the summary.
    Finished(Box<Summary>),
    /// Stopped on request (SIGTERM), after a final checkpoint.
    Stopped,
    /// Aborted by fault injection: nothing flushed, nothing checkpointed.
    Aborted,
    /// Given other key groups over the admin API: stopped after a final checkpoint, to
    /// start again with them (written to the assignment file).
    Reassigned,
}

/// The assignment file in a state directory: an assignment given over the admin API, which
/// replaces the one derived from the pod's ordinal.
pub fn assignment_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("assignment.json")
}

/// Reads the assignment file, if there is one.
pub fn read_assignment(
    state_dir: &std::path::Path,
) -> anyhow::Result<Option<(u64, KeyGroupRange)>> {
    let path = assignment_file(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let a: crate::admin::Assignment = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(Some((a.epoch, a.key_groups)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_assignment(
    state_dir: &std::path::Path,
    a: &crate::admin::Assignment,
) -> anyhow::Result<()> {
    let path = assignment_file(state_dir);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(a)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The worker's checkpoint record, written in the same batch as the state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkerCheckpoint {
    epoch: u64,
    owned: Option<KeyGroupRange>,
    /// topic → partition → next offset to read.
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    join_watermarks: Vec<i64>,
    join: JoinStats,
    processes: Vec<ProcessMeta>,
    process_watermarks: Vec<i64>,
    counts: StageCounts,
    checkpoints: u64,
    restarts: u64,
    seconds: f64,
    peak_hot_bytes: u64,
    peak_hot_entries: u64,
    /// The state's files on disk, the most they held when a checkpoint had been written.
    #[serde(default)]
    peak_disk_bytes: u64,
    bounded: BoundedProgress,
    /// The definitions the process state was built under: a restart with other ones
    /// restores under these, then reconfigures.
    #[serde(default)]
    definitions: Vec<(String, ProcessDefinitionSpec)>,
    /// The shuffle's counts (it has no state of its own; its offsets are Kafka's).
    #[serde(default)]
    shuffle_counts: StageCounts,
}

/// How far a bounded run has come.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BoundedProgress {
    /// keyed partition → ordinals whose end marker arrived.
    keyed_ends: BTreeMap<i32, BTreeSet<u32>>,
    /// actions partition → ordinals whose end marker arrived.
    routed_ends: BTreeMap<i32, BTreeSet<u32>>,
    /// Key groups whose time has run out in the join.
    finished_key_groups: BTreeSet<u16>,
    /// The join has finished every owned key group and sent its end markers.
    join_ended: bool,
    finished: bool,
}

/// What a stateful input partition carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Input {
    Keyed,
    Routed,
    /// A source partitioned by tracking number upstream, read without the shuffle.
    Source(usize),
}

/// Everything but the consumers (whose messages borrow them).
struct Stages {
    name: String,
    topics: Topics,
    key_groups: u16,
    owned: KeyGroupRange,
    epoch: u64,
    ordinal: u32,
    replicas: u32,
    bounded: bool,
    max_hot_bytes: usize,
    plans: Vec<SourcePlan>,
    /// A message's projected fields, until the join copies them or writes them out.
    fields: String,
    /// Raw topic → the source read from it.
    source_of_topic: HashMap<String, usize>,
    /// Per source, its topics (batch entries name theirs by position).
    source_topics: Vec<Vec<String>>,
    /// Topic of each pre-partitioned source.
    prepartitioned: HashMap<String, usize>,
    routing: Vec<ProcessPlan>,
    step_names: Vec<(String, Vec<String>)>,
    store: Store,
    join: JoinEngine,
    /// The process stage on a thread of its own, fed classified actions in batches.
    process: ProcessThread<ProcessSink>,
    classifier: Classifier,
    process_batch: ClassifiedBatch,
    /// The process stage's part of a checkpoint whose outputs were not acknowledged in time:
    /// the next checkpoint writes it, with what changed since.
    held_stage: Option<StageCheckpoint<StageCounts>>,
    sink: KafkaSink,
    health: Arc<Health>,
    record: WorkerCheckpoint,
    /// Next offset to read per stateful input partition.
    offsets: BTreeMap<(Input, i32), i64>,
    /// Bounded runs: the end offsets of pre-partitioned source partitions.
    source_ends: BTreeMap<(usize, i32), i64>,
    buf: Vec<u8>,
    /// Actions of the join for the process stage of this worker (see [`JoinOutputs`]).
    local_actions: Vec<u8>,
    latencies: Vec<f64>,
    /// Where the values of the action record in `buf` lie (see [`JoinOutputs::layout`]).
    layout: RecordLayout,
    parked: Vec<Parked>,
    parked_since: Option<Instant>,
    /// The shuffle thread's counts, as it last published them.
    shuffle_counts: Option<Arc<std::sync::Mutex<StageCounts>>>,
    started: Instant,
    previous_seconds: f64,
    /// The checkpoint being written, until it is in RocksDB.
    unconfirmed: Option<Unconfirmed>,
}

/// A checkpoint handed to the store's writer; reported (metrics, status, offsets committed
/// to Kafka) once written.
struct Unconfirmed {
    number: u64,
    started: Instant,
}

/// Where an action applied without Kafka came from, in a dead letter.
const LOCAL: &str = "(this worker's join)";

/// An action whose instance's key group is not this worker's.
fn wrong_partition(kg: u16, message: &Received<'_>) -> Rejection {
    Rejection::new(
        DeadLetterReason::WrongPartition,
        format!(
            "instance key group {kg} arrived on partition {}",
            message.partition
        ),
    )
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An action routed to a definition this worker does not know yet (another worker applied a
/// configuration change first). Held, and applied after this worker's reload.
struct Parked {
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
    process: Vec<u8>,
}

fn header<'m>(message: &'m BorrowedMessage<'_>, name: &str) -> Option<&'m [u8]> {
    let headers = message.headers()?;
    (0..headers.count())
        .filter_map(|i| headers.try_get(i))
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

fn ordinal_of(value: Option<&[u8]>) -> Option<u32> {
    std::str::from_utf8(value?).ok()?.parse().ok()
}

impl Stages {
    /// Runs `f` on the join engine with the outputs it writes to (borrowed field by field).
    fn with_join<R>(
        &mut self,
        f: impl FnOnce(&mut JoinEngine, &Store, &mut JoinOutputs<'_>) -> R,
    ) -> R {
        let mut out = JoinOutputs {
            out: Outputs {
                sink: &mut self.sink,
                topics: &self.topics,
                counts: &mut self.record.counts,
                buf: &mut self.buf,
            },
            routing: &self.routing,
            key_groups: self.key_groups,
            owned: self.owned,
            classified: &mut self.process_batch,
            local: &mut self.local_actions,
            latencies: &mut self.latencies,
            layout: &mut self.layout,
        };
        let result = f(&mut self.join, &self.store, &mut out);
        if !self.local_actions.is_empty() {
            let local = std::mem::take(&mut self.local_actions);
            for entry in batch::entries(&local).flatten() {
                let received = Received {
                    topic: LOCAL,
                    partition: entry.partition,
                    offset: entry.offset,
                    payload: entry.payload,
                };
                self.apply_action(usize::from(entry.topic), &received);
            }
            self.local_actions = local;
            self.local_actions.clear();
        }
        result
    }

    fn dead_letter(
        &mut self,
        stage: &str,
        source: &str,
        message: &Received<'_>,
        rejection: &Rejection,
    ) {
        send_dead_letter(
            &mut self.sink,
            &self.topics,
            &mut self.record.counts,
            &mut self.buf,
            stage,
            source,
            message,
            rejection,
        );
    }

    /// A message of a stateful input: the join's keyed or pre-partitioned input, or the
    /// process stage's actions.
    fn on_stateful(&mut self, input: Input, message: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let partition = message.partition();
        self.offsets
            .insert((input, partition), message.offset() + 1);
        if let Some(end) = header(message, END_HEADER) {
            let Some(ordinal) = ordinal_of(Some(end)) else {
                return Ok(());
            };
            let ends = match input {
                Input::Keyed => &mut self.record.bounded.keyed_ends,
                Input::Routed => &mut self.record.bounded.routed_ends,
                Input::Source(_) => return Ok(()),
            };
            ends.entry(partition).or_default().insert(ordinal);
            return Ok(());
        }
        match input {
            Input::Keyed | Input::Source(_) => self.on_join_input(input, message)?,
            Input::Routed => {
                self.on_action(&Received::of(message), header(message, PROCESS_HEADER));
            }
        }
        self.feed_process(false)
    }

    /// A record of the join's input: a batch of the shuffle (see [`crate::kafka::batch`]),
    /// a single message with a source header (as workers before batches wrote them), or a
    /// message of a pre-partitioned source.
    fn on_join_input(&mut self, input: Input, message: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let batch_source = match input {
            Input::Source(_) => None,
            _ => header(message, BATCH_HEADER),
        };
        let source = match input {
            Input::Source(s) => Some(s),
            _ => batch_source
                .or_else(|| header(message, SOURCE_HEADER))
                .and_then(|name| self.plans.iter().position(|p| p.name.as_bytes() == name)),
        };
        let Some(source) = source else {
            self.record.counts.count_event("join", "-");
            let rejection = Rejection::new(
                DeadLetterReason::Foreign,
                format!("no known {BATCH_HEADER} or {SOURCE_HEADER} header on the keyed topic"),
            );
            self.dead_letter("join", "-", &Received::of(message), &rejection);
            return Ok(());
        };
        let from_source = matches!(input, Input::Source(_));
        if batch_source.is_none() {
            return self.join_message(source, message, &Received::of(message), from_source);
        }
        let payload = message.payload().unwrap_or_default();
        // Lent out while the join borrows `self`: entries name their topics from it.
        let source_topics = std::mem::take(&mut self.source_topics);
        let mut result = Ok(());
        for entry in batch::entries(payload) {
            match entry {
                Ok(e) => {
                    let topic = source_topics
                        .get(source)
                        .and_then(|t| t.get(usize::from(e.topic)))
                        .map_or("-", String::as_str);
                    let received = Received {
                        topic,
                        partition: e.partition,
                        offset: e.offset,
                        payload: e.payload,
                    };
                    result = self.join_message(source, message, &received, false);
                    if result.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let name = self.plans[source].name.clone();
                    self.record.counts.count_event("join", &name);
                    let rejection = Rejection::new(DeadLetterReason::Foreign, e.to_string());
                    self.dead_letter("join", &name, &Received::of(message), &rejection);
                }
            }
        }
        self.source_topics = source_topics;
        result
    }

    /// One message for the join, read as `received` (from `record`, the Kafka record that
    /// carried it).
    fn join_message(
        &mut self,
        source: usize,
        record: &BorrowedMessage<'_>,
        received: &Received<'_>,
        from_source: bool,
    ) -> anyhow::Result<()> {
        self.record
            .counts
            .count_event("join", &self.plans[source].name);
        if from_source {
            self.record.counts.source_events += 1;
        }
        if self.bounded
            && u16::try_from(record.partition())
                .is_ok_and(|kg| self.record.bounded.finished_key_groups.contains(&kg))
        {
            // A replay of what a restarted shuffle had already sent before its end marker.
            self.record.counts.after_end += 1;
            return Ok(());
        }
        // Taken out while the message borrows it (the join needs `self`), and put back.
        let mut fields = std::mem::take(&mut self.fields);
        let rejection = match self.plans[source].extract(received.payload, &mut fields) {
            Ok(Extracted::Message(msg)) => {
                match self.with_join(|join, store, out| join.process(msg, store, out)) {
                    Ok(()) => None,
                    Err(JoinError::Rejected(r)) => Some(r),
                    Err(JoinError::NotOwned(kg)) => Some(Rejection::new(
                        DeadLetterReason::WrongPartition,
                        format!(
                            "key group {kg} arrived on partition {} of {}",
                            record.partition(),
                            record.topic()
                        ),
                    )),
                    Err(e) => return Err(e.into()),
                }
            }
            // The shuffle filtered already; a pre-partitioned source filters here.
            Ok(Extracted::Filtered) => {
                self.record.counts.filtered += 1;
                None
            }
            Err(r) => Some(r),
        };
        self.fields = fields;
        if let Some(r) = rejection {
            // Cloned only here: the per-message path borrows the name.
            let name = self.plans[source].name.clone();
            self.dead_letter("join", &name, received, &r);
        }
        Ok(())
    }

    fn on_action(&mut self, message: &Received<'_>, process: Option<&[u8]>) {
        let Some(p) = process.and_then(|n| self.definition(n)) else {
            match process {
                // Routed by a worker that reloaded its configuration first.
                Some(name) if self.parked.len() < MAX_PARKED => {
                    if self.parked.is_empty() {
                        self.parked_since = Some(Instant::now());
                    }
                    self.parked.push(Parked {
                        partition: message.partition,
                        offset: message.offset,
                        payload: message.payload.to_vec(),
                        process: name.to_vec(),
                    });
                }
                _ => {
                    self.record.counts.count_event("process", "-");
                    let rejection = Rejection::new(
                        DeadLetterReason::Foreign,
                        format!(
                            "no {PROCESS_HEADER} header naming a ProcessDefinition of this pipeline"
                        ),
                    );
                    self.dead_letter("process", "-", message, &rejection);
                }
            }
            return;
        };
        self.apply_action(p, message);
    }

    /// An action for definition `p`, from the internal actions topic or from this worker's
    /// own join: classified here (a bad one goes to the dead letters here), applied by the
    /// stage's thread.
    fn apply_action(&mut self, p: usize, message: &Received<'_>) {
        self.record
            .counts
            .count_event("process", &self.routing[p].name);
        let rejection = match std::str::from_utf8(message.payload) {
            Err(e) => Some(Rejection::new(DeadLetterReason::NotJson, e.to_string())),
            Ok(text) => match self.classifier.classify(p, text) {
                Err(ProcessError::BadAction(e)) => {
                    Some(Rejection::new(DeadLetterReason::NotJson, e))
                }
                Err(ProcessError::NotOwned(kg)) => Some(wrong_partition(kg, message)),
                Ok(c) => {
                    // What the stage would refuse: an instance of a key group not owned.
                    match c.instance_key_group(self.key_groups) {
                        Some(kg) if !self.owned.contains(kg) => Some(wrong_partition(kg, message)),
                        _ => {
                            c.encode(p as u16, &mut self.process_batch);
                            None
                        }
                    }
                }
            },
        };
        if let Some(r) = rejection {
            let name = self.routing[p].name.clone();
            self.dead_letter("process", &name, message, &r);
        }
    }

    /// The position of the definition named `name`.
    fn definition(&self, name: &[u8]) -> Option<usize> {
        self.routing.iter().position(|p| p.name.as_bytes() == name)
    }

    /// Sends the classified actions to the stage: when a batch is full, or `all`.
    fn feed_process(&mut self, all: bool) -> anyhow::Result<()> {
        if all || self.process_batch.len() >= PROCESS_BATCH {
            self.process.send(&mut self.process_batch)?;
        }
        Ok(())
    }

    /// Applies the parked actions again: after a reload, or when waiting longer is pointless
    /// (`give_up`: what is still unknown goes to the dead letters).
    fn unpark(&mut self, give_up: bool) {
        let parked = std::mem::take(&mut self.parked);
        self.parked_since = None;
        let limit = if give_up { 0 } else { MAX_PARKED };
        let routed = self.topics.routed_actions.clone();
        for p in &parked {
            let received = Received {
                topic: &routed,
                partition: p.partition,
                offset: p.offset,
                payload: &p.payload,
            };
            let known = self.definition(&p.process).is_some();
            let name = (known || self.parked.len() < limit).then_some(p.process.as_slice());
            self.on_action(&received, name);
        }
    }

    /// Bounded runs: key groups whose inputs have all ended run out of time.
    fn finish_ended_key_groups(&mut self) -> anyhow::Result<()> {
        let needs_shuffle = !self.source_of_topic.is_empty();
        for kg in self.owned.iter() {
            if self.record.bounded.finished_key_groups.contains(&kg) {
                continue;
            }
            let p = i32::from(kg);
            let keyed_done = !needs_shuffle
                || self
                    .record
                    .bounded
                    .keyed_ends
                    .get(&p)
                    .is_some_and(|e| e.len() >= self.replicas as usize);
            let sources_done = self.prepartitioned.values().all(|&s| {
                let end = self.source_ends.get(&(s, p)).copied().unwrap_or(0);
                self.offsets
                    .get(&(Input::Source(s), p))
                    .copied()
                    .unwrap_or(0)
                    >= end
            });
            if keyed_done && sources_done {
                self.with_join(|join, store, out| join.finish_key_group(kg, store, out))?;
                self.record.bounded.finished_key_groups.insert(kg);
            }
        }
        Ok(())
    }

    /// Sends this worker's end marker to every partition of `topic`.
    fn send_end_markers(&mut self, topic: &str) {
        let ordinal = self.ordinal.to_string();
        for p in 0..self.key_groups {
            self.sink.send(
                topic,
                Some(i32::from(p)),
                None,
                b"",
                Some((END_HEADER, ordinal.as_bytes())),
            );
        }
    }

    fn routed_ended(&self) -> bool {
        self.routing.is_empty()
            || self.owned.iter().all(|kg| {
                self.record
                    .bounded
                    .routed_ends
                    .get(&i32::from(kg))
                    .is_some_and(|e| e.len() >= self.replicas as usize)
            })
    }

    /// Flushes the outputs and writes state and offsets in one batch. `Ok(false)` when the
    /// brokers did not acknowledge in time: nothing was written, try again later.
    fn checkpoint(&mut self, evict: Evict, shared: &Shared) -> anyhow::Result<bool> {
        if !self.parked.is_empty() {
            // Their offsets are behind what a checkpoint would record.
            return Ok(false);
        }
        // The previous one is reported before the record changes.
        self.confirm(shared, true)?;
        let t0 = Instant::now();
        // The stage's part, after every action sent before (its records are queued in the
        // producer when it answers); one held from a postponed checkpoint goes with it.
        self.feed_process(true)?;
        let stage = self.process.checkpoint()?.wait(&mut self.process)?;
        let stage = match self.held_stage.take() {
            Some(held) => StageCheckpoint {
                flushed: held.flushed.merged(&stage.flushed),
                changes: held.changes.then(stage.changes),
                ..stage
            },
            None => stage,
        };
        match self.sink.flush(FLUSH_TIMEOUT) {
            Ok(()) => {}
            Err(SinkError::FlushTimeout(t)) => {
                tracing::warn!(
                    in_flight = self.sink.in_flight(),
                    "outputs not acknowledged within {t:?}; checkpoint postponed"
                );
                self.held_stage = Some(stage);
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        self.record.counts = self.record.counts.merged(&stage.flushed);
        self.health.brokers_down.store(false, Ordering::Relaxed);
        if let Some(counts) = self.shuffle_counts.as_ref().and_then(|c| c.lock().ok()) {
            self.record.shuffle_counts.clone_from(&counts);
        }
        let r = &mut self.record;
        r.checkpoints += 1;
        r.seconds = self.previous_seconds + self.started.elapsed().as_secs_f64();
        r.epoch = self.epoch;
        r.owned = Some(self.owned);
        r.offsets.clear();
        for ((input, partition), offset) in &self.offsets {
            let topic = match input {
                Input::Keyed => &self.topics.keyed,
                Input::Routed => &self.topics.routed_actions,
                Input::Source(s) => match self.prepartitioned.iter().find(|(_, v)| *v == s) {
                    Some((topic, _)) => topic,
                    None => continue,
                },
            };
            r.offsets
                .entry(topic.clone())
                .or_default()
                .insert(*partition, *offset);
        }
        r.join_watermarks = self.join.watermarks().to_vec();
        r.join = self.join.stats.clone();
        r.processes = stage.meta;
        r.process_watermarks = stage.watermarks;
        r.peak_hot_bytes = r.peak_hot_bytes.max(self.join.hot_bytes() as u64);
        r.peak_hot_entries = r.peak_hot_entries.max(self.join.hot_entries() as u64);
        let finished = r.bounded.finished;
        let bytes = serde_json::to_vec(&*r)?;
        let changes = self.join.checkpoint_changes(evict);
        let process_changes = stage.changes;
        let clear_join = finished && self.join.holds_nothing();
        // Written while the next messages are processed: the state is what the batch
        // holds, and any read of the store waits for it (see `Store`).
        self.store
            .write_checkpoint(changes, process_changes, bytes, clear_join)?;
        self.unconfirmed = Some(Unconfirmed {
            number: self.record.checkpoints,
            started: t0,
        });
        Ok(true)
    }

    /// Reports the checkpoint being written once it is in RocksDB (with `wait`, waits for
    /// it): metrics, status, checkpointed offsets. True when one was reported: the caller
    /// then commits the offsets to Kafka, so that lag tools see only written checkpoints.
    fn confirm(&mut self, shared: &Shared, wait: bool) -> anyhow::Result<bool> {
        if self.unconfirmed.is_none() || !(wait || self.store.is_settled()) {
            return Ok(false);
        }
        self.store.settle()?;
        let Some(Unconfirmed { number, started }) = self.unconfirmed.take() else {
            return Ok(false);
        };
        self.record.peak_disk_bytes = self.record.peak_disk_bytes.max(self.store.disk_bytes());
        let seconds = started.elapsed().as_secs_f64();
        if let Ok(m) = shared.metrics.lock() {
            m.checkpoints.inc();
            m.checkpoint_duration.observe(seconds);
            m.last_checkpoint_timestamp
                .set(now_millis() as f64 / 1000.0);
            m.state_sst_bytes.set(self.store.sst_bytes() as i64);
        }
        shared.update_status(|s| {
            s.last_checkpoint = Some(CheckpointStatus {
                number,
                at: now_millis(),
                duration_ms: seconds * 1000.0,
            });
            for p in &mut s.partitions {
                if let Some(o) = self
                    .record
                    .offsets
                    .get(&p.topic)
                    .and_then(|m| m.get(&p.partition))
                {
                    p.checkpointed_offset = *o;
                }
            }
        });
        Ok(true)
    }

    /// Applies changed definitions to the process stage and the routing of actions; the
    /// next checkpoint rewrites the stage's state.
    fn apply_definitions(
        &mut self,
        definitions: config::Definitions,
        shared: &Shared,
    ) -> anyhow::Result<()> {
        let plans = compile_plans(&definitions)?;
        // Actions classified under the old definitions are applied under them.
        self.feed_process(true)?;
        self.routing = classifying_plans(&definitions, &self.plans)?;
        self.classifier = Classifier::new(classifying_plans(&definitions, &self.plans)?);
        self.step_names = step_names(&self.routing);
        let report = self.process.reconfigure(plans)?;
        tracing::info!(?report, "applied changed ProcessDefinitions");
        self.record.definitions = definitions;
        let names: Vec<String> = self.routing.iter().map(|p| p.name.clone()).collect();
        shared.update_status(|s| {
            s.config.definitions = names;
            s.config.reloads += 1;
        });
        if !self.parked.is_empty() {
            self.unpark(false);
        }
        Ok(())
    }

    /// The shuffle's counts and this thread's, together.
    fn all_counts(&self) -> StageCounts {
        let shuffle = self
            .shuffle_counts
            .as_ref()
            .and_then(|c| c.lock().ok().map(|c| c.clone()))
            .unwrap_or_default();
        self.record.counts.merged(&shuffle)
    }

    /// The last checkpoint before the worker exits: it waits for the brokers as long as a
    /// termination grace period allows.
    fn final_checkpoint(&mut self, evict: Evict, shared: &Shared) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.checkpoint(evict, shared)? {
            if Instant::now() > deadline {
                bail!("the brokers did not acknowledge the outputs; the last checkpoint stands");
            }
        }
        self.confirm(shared, true)?;
        Ok(())
    }

    /// Checkpoints, moving state to RocksDB in bounded chunks while over the memory budget.
    fn checkpoint_with_eviction(&mut self, shared: &Shared) -> anyhow::Result<bool> {
        let mut evict = Evict::Nothing;
        loop {
            let before = self.join.hot_entries();
            if !self.checkpoint(evict, shared)? {
                return Ok(false);
            }
            let evicted = before.saturating_sub(self.join.hot_entries());
            match evict.next(evicted, self.join.hot_bytes(), self.max_hot_bytes) {
                Some(next) => evict = next,
                None => return Ok(true),
            }
        }
    }

    /// Publishes counts, gauges and the status.
    fn publish(&mut self, shared: &Shared) {
        let brokers_down = self.health.brokers_down.load(Ordering::Relaxed);
        let counts = self.all_counts();
        if let Ok(mut m) = shared.metrics.lock() {
            m.publish(&counts);
            m.pending_entries.set(self.join.hot_pending() as i64);
            m.hot_state_bytes.set(self.join.hot_bytes() as i64);
            for latency in self.latencies.drain(..) {
                m.join_completion_latency.observe(latency);
            }
            for ((input, partition), offset) in &self.offsets {
                let topic = match input {
                    Input::Keyed => &self.topics.keyed,
                    Input::Routed => &self.topics.routed_actions,
                    Input::Source(_) => continue,
                };
                if let Some(high) = self.health.high_watermark(topic, *partition) {
                    m.consumer_lag
                        .get_or_create(&crate::metrics::PartitionLabel {
                            topic: topic.clone(),
                            partition: *partition,
                        })
                        .set((high - offset).max(0));
                }
            }
        }
        self.latencies.clear();
        let events = counts.events();
        let source_events = counts.source_events;
        shared.update_status(|s| {
            s.source_events = source_events;
            s.brokers_down = brokers_down;
            s.last_error = self.health.last_error();
            s.events = events;
            for p in &mut s.partitions {
                let input = if p.topic == self.topics.keyed {
                    Input::Keyed
                } else if p.topic == self.topics.routed_actions {
                    Input::Routed
                } else {
                    match self.prepartitioned.get(&p.topic) {
                        Some(s) => Input::Source(*s),
                        None => continue,
                    }
                };
                if let Some(o) = self.offsets.get(&(input, p.partition)) {
                    p.offset = *o;
                }
                p.high_watermark = self.health.high_watermark(&p.topic, p.partition);
                p.lag = p.high_watermark.map(|h| (h - p.checkpointed_offset).max(0));
            }
        });
    }

    /// The run's summary; stops the process stage.
    fn into_summary(mut self) -> anyhow::Result<Summary> {
        self.feed_process(true)?;
        let counts = self.all_counts();
        let (engine, mut sink) = self.process.close()?;
        let counts = counts.merged(&sink.take_counts());
        let r = &self.record;
        Ok(Summary::build(
            self.name.clone(),
            &SummaryCounts {
                events: counts.source_events,
                filtered: counts.filtered,
                dead_letters_by_reason: counts.dead_letters_by_reason(),
                seconds: r.seconds,
                checkpoints: r.checkpoints,
                restarts: r.restarts,
                peak_hot_bytes: r.peak_hot_bytes,
                peak_hot_entries: r.peak_hot_entries,
                peak_disk_bytes: r.peak_disk_bytes,
                sst_bytes: self.store.sst_bytes(),
                hot_budget_bytes: self.max_hot_bytes as u64,
            },
            &self.join.stats,
            &self.step_names,
            &engine,
        ))
    }
}

/// Runs the stages until a bounded run ends, a stop is requested, or an error.
pub fn run(options: &RunOptions, shared: &Arc<Shared>) -> anyhow::Result<Ending> {
    let started = Instant::now();
    let pipeline = &options.pipeline;
    let spec = &pipeline.spec;
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    let key_groups = spec.key_groups;
    let (epoch, owned) = options
        .assignment
        .unwrap_or_else(|| (0, even_range(options.ordinal, options.replicas, key_groups)));
    let topics = Topics::new(&options.namespace, pipeline);
    shared.update_status(|s| {
        s.pipeline.clone_from(&name);
        s.ordinal = options.ordinal;
        s.replicas = options.replicas;
        s.epoch = epoch;
        s.key_groups = key_groups;
        s.owned = Some(owned);
        s.phase = "restoring".into();
    });

    let plans: Vec<SourcePlan> = spec.sources.iter().map(SourcePlan::new).collect();
    let routing = classifying_plans(&options.processes, &plans)?;
    let step_names = step_names(&routing);
    let mut source_of_topic = HashMap::new();
    let mut prepartitioned = HashMap::new();
    for (i, source) in spec.sources.iter().enumerate() {
        for topic in &source.topics {
            let map = if source.partitioned_by_tracking_number {
                &mut prepartitioned
            } else {
                &mut source_of_topic
            };
            if map.insert(topic.clone(), i).is_some() {
                bail!("topic {topic} is read by two sources; each topic belongs to one source");
            }
        }
    }

    // Clients and topics.
    let base = client_config(pipeline, options.bootstrap_servers.as_deref());
    let health = Arc::new(Health::default());
    let context = || WeftContext {
        health: health.clone(),
    };
    let stateful: BaseConsumer<WeftContext> = consumer_config(&base, &topics.group, pipeline)
        .create_with_context(context())
        .context("creating the consumer")?;
    let kg_count = usize::from(key_groups);
    for topic in topics.internal() {
        ensure_topic(
            &stateful,
            &base,
            topic,
            Some(kg_count),
            options.create_topics,
            METADATA_TIMEOUT,
        )?;
    }
    for topic in prepartitioned.keys() {
        ensure_topic(
            &stateful,
            &base,
            topic,
            Some(kg_count),
            false,
            METADATA_TIMEOUT,
        )
        .context(
            "a source declared partitionedByTrackingNumber must have one partition per key group",
        )?;
    }
    for topic in source_of_topic.keys() {
        ensure_topic(&stateful, &base, topic, None, false, METADATA_TIMEOUT)?;
    }
    for topic in topics.outputs() {
        ensure_topic(&stateful, &base, topic, None, false, METADATA_TIMEOUT)?;
    }

    // State.
    let store = Store::open(&options.state_dir)
        .with_context(|| format!("opening state in {}", options.state_dir.display()))?;
    let mut record: WorkerCheckpoint = match store.checkpoint()? {
        Some(bytes) => serde_json::from_slice(&bytes).context("reading the checkpoint record")?,
        None => WorkerCheckpoint::default(),
    };
    if let Some(previous) = record.owned {
        if previous != owned {
            bail!(
                "the state in {} holds key groups {previous}, but this worker is assigned {owned}: moving key groups needs the checkpoint handoff",
                options.state_dir.display()
            );
        }
        record.restarts += 1;
    }
    let mut join = JoinEngine::new(JoinConfig::new(&spec.join, key_groups), owned);
    join.restore(
        &record.join_watermarks,
        record.join.clone(),
        &store,
        options.max_hot_bytes,
    )?;
    // The state was built under the definitions its checkpoint names; changed ones are
    // applied after restoring it.
    let saved = if record.owned.is_some() {
        std::mem::take(&mut record.definitions)
    } else {
        options.processes.clone()
    };
    let mut process = ProcessEngine::new(
        compile_plans(&saved).context("the definitions of the checkpoint")?,
        key_groups,
        owned,
        i64::try_from(spec.join.lateness.as_millis()).unwrap_or(i64::MAX / 4),
    );
    process
        .restore(
            record.processes.clone(),
            &record.process_watermarks,
            store.process_instances()?,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
    if saved != options.processes {
        let report = process.reconfigure(compile_plans(&options.processes)?);
        tracing::info!(
            ?report,
            "ProcessDefinitions changed since the last checkpoint"
        );
    }
    record.definitions = options.processes.clone();
    let sink = KafkaSink::new(&producer_config(&base, pipeline), health.clone())?;
    let process = ProcessThread::start(
        process,
        ProcessSink::new(sink.share(), topics.clone(), Arc::clone(shared)),
    )
    .context("starting the process stage")?;
    let classifier = Classifier::new(classifying_plans(&options.processes, &plans)?);

    // The stateful inputs: owned partitions, from the checkpointed offsets.
    let mut offsets = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    let mut statuses = Vec::new();
    let mut add = |topic: &str,
                   input: Input,
                   offsets: &mut BTreeMap<(Input, i32), i64>|
     -> anyhow::Result<()> {
        for kg in owned.iter() {
            let p = i32::from(kg);
            let at = record.offsets.get(topic).and_then(|m| m.get(&p)).copied();
            let offset = at.map_or(Offset::Beginning, Offset::Offset);
            assignment.add_partition_offset(topic, p, offset)?;
            offsets.insert((input, p), at.unwrap_or(0));
            statuses.push(PartitionStatus {
                topic: topic.to_string(),
                partition: p,
                checkpointed_offset: at.unwrap_or(0),
                offset: at.unwrap_or(0),
                high_watermark: None,
                lag: None,
            });
        }
        Ok(())
    };
    if !source_of_topic.is_empty() {
        add(&topics.keyed, Input::Keyed, &mut offsets)?;
    }
    if !routing.is_empty() {
        add(&topics.routed_actions, Input::Routed, &mut offsets)?;
    }
    let mut source_ends = BTreeMap::new();
    for (topic, &s) in &prepartitioned {
        add(topic, Input::Source(s), &mut offsets)?;
        if options.bounded {
            for kg in owned.iter() {
                let (_, high) = stateful
                    .fetch_watermarks(topic, i32::from(kg), METADATA_TIMEOUT)
                    .with_context(|| format!("reading the end of {topic}"))?;
                source_ends.insert((s, i32::from(kg)), high);
            }
        }
    }
    stateful
        .assign(&assignment)
        .context("assigning the owned partitions")?;
    shared.update_status(|s| s.partitions = statuses);

    let mut stages = Stages {
        name,
        topics,
        key_groups,
        owned,
        epoch,
        ordinal: options.ordinal,
        replicas: options.replicas.max(1),
        bounded: options.bounded,
        max_hot_bytes: options.max_hot_bytes,
        plans,
        fields: String::new(),
        source_of_topic,
        source_topics: spec.sources.iter().map(|s| s.topics.clone()).collect(),
        prepartitioned,
        routing,
        step_names,
        store,
        join,
        process,
        classifier,
        process_batch: ClassifiedBatch::with_capacity(PROCESS_BATCH + 4096),
        held_stage: None,
        sink,
        health: health.clone(),
        previous_seconds: record.seconds,
        record,
        offsets,
        source_ends,
        buf: Vec::with_capacity(4096),
        local_actions: Vec::new(),
        latencies: Vec::new(),
        layout: RecordLayout::default(),
        parked: Vec::new(),
        parked_since: None,
        shuffle_counts: None,
        started,
        unconfirmed: None,
    };
    if stages.record.bounded.finished {
        shared.update_status(|s| s.phase = "finished".into());
        return Ok(Ending::Finished(Box::new(stages.into_summary()?)));
    }

    let interval = options
        .checkpoint_interval
        .unwrap_or_else(|| spec.checkpoint_interval.std());
    let mut last_checkpoint = Instant::now();
    let mut last_publish = Instant::now();
    let mut last_probe = Instant::now();
    let mut shuffle = if stages.source_of_topic.is_empty() {
        None
    } else {
        let sh = shuffle::Shuffle::start(
            shuffle::ShuffleConfig {
                consumer: consumer_config(&base, &stages.topics.shuffle_group, pipeline),
                producer: producer_config(&base, pipeline),
                health: health.clone(),
                topics: stages.topics.clone(),
                key_groups,
                plans: spec.sources.iter().map(SourcePlan::new).collect(),
                source_of_topic: stages.source_of_topic.clone(),
                source_topics: stages.source_topics.clone(),
                ordinal: options.ordinal,
                replicas: options.replicas,
                bounded: options.bounded,
                counts: stages.record.shuffle_counts.clone(),
                // Half the future skew the join accepts: the order in which a keyed partition
                // mixes the raw ones adds to it (at 4/5, backfills still hit the limit).
                align_window: i64::try_from(spec.join.max_future_skew.as_millis())
                    .unwrap_or(i64::MAX)
                    / 2,
            },
            shared.clone(),
        )?;
        stages.shuffle_counts = Some(sh.counts_handle());
        Some(sh)
    };
    let mut watch = config::ConfigWatch::new(
        options.config.clone(),
        options.pipeline_name.clone(),
        spec.clone(),
        options.processes.clone(),
    );
    let names: Vec<String> = stages.routing.iter().map(|p| p.name.clone()).collect();
    shared.update_status(|s| s.config.definitions = names);
    shared.update_status(|s| s.phase = "running".into());
    shared.set_ready(true);
    tracing::info!(%owned, epoch, bounded = options.bounded, "running");

    loop {
        if shared.stop.load(Ordering::Relaxed) {
            shared.set_ready(false);
            shared.update_status(|s| s.phase = "stopping".into());
            stages.unpark(true);
            stages.final_checkpoint(Evict::Nothing, shared)?;
            commit_offsets(&stateful, &stages, CommitMode::Sync);
            if let Some(sh) = shuffle.take() {
                sh.finish()?;
            }
            return Ok(Ending::Stopped);
        }
        let requested = shared
            .assignment_request
            .lock()
            .ok()
            .and_then(|mut r| r.take());
        if let Some(assignment) = requested {
            std::fs::create_dir_all(&options.state_dir)?;
            write_assignment(&options.state_dir, &assignment)?;
            tracing::info!(epoch = assignment.epoch, key_groups = %assignment.key_groups, "new assignment");
            if assignment.key_groups == stages.owned {
                stages.epoch = assignment.epoch;
                shared.update_status(|s| s.epoch = assignment.epoch);
            } else {
                shared.set_ready(false);
                shared.update_status(|s| s.phase = "reassigning".into());
                stages.final_checkpoint(Evict::Nothing, shared)?;
                commit_offsets(&stateful, &stages, CommitMode::Sync);
                if let Some(sh) = shuffle.take() {
                    sh.finish()?;
                }
                return Ok(Ending::Reassigned);
            }
        }
        if let Some(limit) = options.abort_after_events
            && stages.all_counts().events() >= limit
        {
            return Ok(Ending::Aborted);
        }
        let busy = poll_batch(&stateful, "consumer", |message| {
            let topic = message.topic();
            let input = if topic == stages.topics.keyed {
                Input::Keyed
            } else if topic == stages.topics.routed_actions {
                Input::Routed
            } else if let Some(s) = stages.prepartitioned.get(topic) {
                Input::Source(*s)
            } else {
                return Ok(());
            };
            stages.on_stateful(input, message)
        })?;
        if busy {
            health.brokers_down.store(false, Ordering::Relaxed);
        }
        // What this round classified goes to the stage now, not when a batch fills.
        stages.feed_process(true)?;
        stages.sink.poll();

        // Parked actions wait for a reload: look for one now, and give up after a while.
        if let Some(definitions) = watch.poll(!stages.parked.is_empty(), shared) {
            stages.apply_definitions(definitions, shared)?;
            shared.checkpoint_requested.store(true, Ordering::Relaxed);
        }
        if stages
            .parked_since
            .is_some_and(|since| since.elapsed() > PARK_TIMEOUT)
        {
            tracing::warn!(
                parked = stages.parked.len(),
                "actions for an unknown ProcessDefinition go to the dead letters"
            );
            stages.unpark(true);
        }

        let mut due = last_checkpoint.elapsed() >= interval
            || stages.process.unsaved() >= PROCESS_CHANGES_PER_CHECKPOINT
            || stages.join.hot_bytes() > options.max_hot_bytes
            || shared.checkpoint_requested.swap(false, Ordering::Relaxed);

        if options.bounded {
            if !stages.record.bounded.join_ended {
                stages.finish_ended_key_groups()?;
                if stages.record.bounded.finished_key_groups.len() == usize::from(owned.len())
                    && stages.sink.flush(FLUSH_TIMEOUT).is_ok()
                {
                    if !stages.routing.is_empty() {
                        let routed = stages.topics.routed_actions.clone();
                        stages.send_end_markers(&routed);
                    }
                    stages.record.bounded.join_ended = true;
                    due = true;
                }
            }
            if stages.record.bounded.join_ended && stages.routed_ended() {
                // Every changed aggregate emitted (the final checkpoint flushes them).
                stages.feed_process(true)?;
                stages.process.finish_input()?;
                stages.record.bounded.finished = true;
                if let Some(sh) = shuffle.take() {
                    sh.finish()?;
                }
                stages.final_checkpoint(Evict::Everything { max: usize::MAX }, shared)?;
                commit_offsets(&stateful, &stages, CommitMode::Sync);
                stages.publish(shared);
                shared.set_ready(false);
                shared.update_status(|s| s.phase = "finished".into());
                return Ok(Ending::Finished(Box::new(stages.into_summary()?)));
            }
        }

        if due {
            if stages.checkpoint_with_eviction(shared)? {
                last_checkpoint = Instant::now();
            } else {
                shared.set_ready(false);
            }
        }
        if stages.confirm(shared, false)? {
            commit_offsets(&stateful, &stages, CommitMode::Async);
        }
        if last_publish.elapsed() >= Duration::from_millis(500) {
            if let Some(sh) = shuffle.as_mut() {
                sh.check()?;
            }
            let down = health.brokers_down.load(Ordering::Relaxed);
            if down && last_probe.elapsed() >= Duration::from_secs(2) {
                last_probe = Instant::now();
                // Idle and told the brokers are down: ask them.
                if stateful
                    .fetch_metadata(Some(&stages.topics.keyed), Duration::from_millis(500))
                    .is_ok()
                {
                    health.brokers_down.store(false, Ordering::Relaxed);
                }
            }
            shared.set_ready(!health.brokers_down.load(Ordering::Relaxed));
            stages.publish(shared);
            last_publish = Instant::now();
        }
    }
}

/// Takes up to [`BATCH`] messages from `consumer`, waiting briefly for the first only (so an
/// idle loop does not spin); `true` when any came.
pub(crate) fn poll_batch<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    what: &str,
    mut handle: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    for i in 0..BATCH {
        let timeout = if i > 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(20)
        };
        match consumer.poll(timeout) {
            None => return Ok(i > 0),
            Some(Err(e)) => {
                tracing::warn!(%e, "{what}");
                return Ok(i > 0);
            }
            Some(Ok(message)) => handle(&message)?,
        }
    }
    Ok(true)
}

/// Commits the checkpointed offsets of the stateful stages to Kafka under the pipeline's
/// group: for lag monitoring only, restarts use the checkpoint.
fn commit_offsets(stateful: &BaseConsumer<WeftContext>, stages: &Stages, mode: CommitMode) {
    let mut tpl = TopicPartitionList::new();
    for (topic, partitions) in &stages.record.offsets {
        for (p, offset) in partitions {
            if *offset > 0 {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*offset));
            }
        }
    }
    if tpl.count() > 0
        && let Err(e) = stateful.commit(&tpl, mode)
    {
        tracing::debug!(%e, "committing offsets");
    }
}
