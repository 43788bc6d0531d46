//! The shuffle stage, on its own thread: it holds no state, so it needs no checkpoint. It
//! reads the raw source topics, parses, filters, and writes each message to the keyed
//! topic's partition of its key group, in batches (see [`crate::kafka::batch`]); its offsets
//! are committed to Kafka once what it wrote is acknowledged (at least once: the join drops
//! the duplicates a restart sends again).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::outputs::{Received, send_dead_letter};
use super::{FLUSH_TIMEOUT, METADATA_TIMEOUT, poll_batch};
use crate::admin::Shared;
use crate::kafka::batch::{self, BATCH_BYTES, BATCH_HEADER, LINGER};
use crate::kafka::{END_HEADER, Health, Topics, WeftContext, partition_count};
use crate::metrics::StageCounts;
use crate::sinks::kafka::KafkaSink;
use crate::sources::{Extracted, SourcePlan};

/// How often the shuffle commits what it has written.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

pub struct ShuffleConfig {
    pub consumer: ClientConfig,
    pub producer: ClientConfig,
    pub health: Arc<Health>,
    pub topics: Topics,
    pub key_groups: u16,
    pub plans: Vec<SourcePlan>,
    pub source_of_topic: HashMap<String, usize>,
    /// Per source, its topics (a batch entry names its topic by position).
    pub source_topics: Vec<Vec<String>>,
    pub ordinal: u32,
    pub replicas: u32,
    pub bounded: bool,
    /// Counts restored from the last checkpoint.
    pub counts: StageCounts,
    /// How far ahead in event time a raw partition may run (ms); see [`Alignment`].
    pub align_window: i64,
}

/// A partition of a bounded run's share of the raw partitions.
struct SharePartition {
    topic: String,
    partition: i32,
    next: i64,
    end: Option<i64>,
}

struct ShuffleStage {
    consumer: BaseConsumer<WeftContext>,
    work: Work,
    alignment: Alignment,
    ordinal: u32,
    bounded: bool,
    share: Vec<SharePartition>,
    ends_known: bool,
    published: Arc<Mutex<StageCounts>>,
}

/// What handling a message touches (apart from the consumer that lends it).
struct Work {
    sink: KafkaSink,
    topics: Topics,
    key_groups: u16,
    plans: Vec<SourcePlan>,
    /// Raw topic → (its source, its position in the source's topics).
    source_of_topic: HashMap<String, (usize, u16)>,
    counts: StageCounts,
    /// Messages read per source since they were last added to `counts`: a counter per
    /// message instead of two map lookups by name (5% of the shuffle's thread).
    unpublished_events: Vec<u64>,
    buf: Vec<u8>,
    /// Per (key group, source): the batch being filled (see [`batch`]).
    batches: Vec<OpenBatch>,
}

#[derive(Default)]
struct OpenBatch {
    bytes: Vec<u8>,
    opened: Option<Instant>,
}

/// The running stage, seen from the worker's main thread.
pub struct Shuffle {
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    counts: Arc<Mutex<StageCounts>>,
    /// Stop after flushing and committing.
    stop: Arc<AtomicBool>,
    /// Stop dead (fault injection).
    abort: Arc<AtomicBool>,
}

impl Shuffle {
    /// Creates the consumer (group subscription; a bounded run's fixed share of the raw
    /// partitions instead) and starts the thread.
    pub fn start(config: ShuffleConfig, shared: Arc<Shared>) -> anyhow::Result<Shuffle> {
        let consumer: BaseConsumer<WeftContext> = config
            .consumer
            .create_with_context(WeftContext {
                health: config.health.clone(),
            })
            .context("creating the shuffle consumer")?;
        let sink = KafkaSink::new(&config.producer, config.health.clone())?;
        let sources = config.plans.len();
        let mut raw: Vec<&String> = config.source_of_topic.keys().collect();
        raw.sort();
        let mut share = Vec::new();
        if config.bounded {
            share = assign_share(&consumer, &raw, config.ordinal, config.replicas)?;
        } else {
            let raw: Vec<&str> = raw.iter().map(|t| t.as_str()).collect();
            consumer.subscribe(&raw)?;
        }
        let counts = Arc::new(Mutex::new(config.counts.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let stage = ShuffleStage {
            consumer,
            work: Work {
                sink,
                topics: config.topics,
                key_groups: config.key_groups,
                plans: config.plans,
                source_of_topic: config
                    .source_of_topic
                    .into_iter()
                    .map(|(topic, source)| {
                        let position = config
                            .source_topics
                            .get(source)
                            .and_then(|topics| topics.iter().position(|t| *t == topic))
                            .unwrap_or(0);
                        (topic, (source, position as u16))
                    })
                    .collect(),
                counts: config.counts,
                unpublished_events: vec![0; sources],
                buf: Vec::with_capacity(4096),
                batches: (0..usize::from(config.key_groups) * config.source_topics.len())
                    .map(|_| OpenBatch::default())
                    .collect(),
            },
            ordinal: config.ordinal,
            bounded: config.bounded,
            share,
            ends_known: false,
            published: counts.clone(),
            alignment: Alignment {
                window: config.align_window,
                lanes: Lanes::default(),
                last_check: Instant::now(),
                last_refresh: None,
                // Nothing is written before the partitions have been looked at once.
                limit: i64::MIN,
                held_bytes: 0,
            },
        };
        let thread = {
            let (stop, abort) = (stop.clone(), abort.clone());
            std::thread::Builder::new()
                .name("weft-shuffle".into())
                .spawn(move || stage.run(&shared, &stop, &abort))?
        };
        Ok(Shuffle {
            thread: Some(thread),
            counts,
            stop,
            abort,
        })
    }

    /// Its counts as last published (cumulative).
    pub fn counts_handle(&self) -> Arc<Mutex<StageCounts>> {
        self.counts.clone()
    }

    /// A bounded run's shuffle has sent its end markers and exited.
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops after flushing and committing, and waits for it.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// The thread's error, if it ended with one.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            return self.join();
        }
        Ok(())
    }

    fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the shuffle thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Shuffle {
    /// Any other way out of the worker stops the shuffle dead, as a crash would.
    fn drop(&mut self) {
        self.abort.store(true, Ordering::Relaxed);
        let _ = self.join();
    }
}

/// A bounded run's share of the raw partitions (every `replicas`-th, by ordinal), assigned
/// from the shuffle group's committed offsets.
fn assign_share(
    consumer: &BaseConsumer<WeftContext>,
    raw: &[&String],
    ordinal: u32,
    replicas: u32,
) -> anyhow::Result<Vec<SharePartition>> {
    let mut all = Vec::new();
    for topic in raw {
        let n = partition_count(consumer, topic, METADATA_TIMEOUT)?.unwrap_or(0);
        for p in 0..n {
            all.push(((*topic).clone(), i32::try_from(p)?));
        }
    }
    let mine: Vec<(String, i32)> = all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 % u64::from(replicas.max(1)) == u64::from(ordinal))
        .map(|(_, tp)| tp)
        .collect();
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in &mine {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, METADATA_TIMEOUT)
        .context("reading the shuffle's committed offsets")?;
    let mut start = TopicPartitionList::new();
    let mut share = Vec::new();
    for (topic, p) in mine {
        let from = committed
            .find_partition(&topic, p)
            .map(|e| e.offset())
            .and_then(|o| o.to_raw())
            .filter(|o| *o >= 0);
        start.add_partition_offset(&topic, p, from.map_or(Offset::Beginning, Offset::Offset))?;
        share.push(SharePartition {
            topic,
            partition: p,
            next: from.unwrap_or(0),
            end: None,
        });
    }
    consumer.assign(&start)?;
    Ok(share)
}

impl Work {
    /// Adds the messages counted per source since the last time to `counts`.
    fn add_unpublished_events(&mut self) {
        for (source, n) in self.unpublished_events.iter_mut().enumerate() {
            if *n > 0 {
                self.counts
                    .add_events("shuffle", &self.plans[source].name, std::mem::take(n));
            }
        }
    }

    /// Counts a message and sorts it out: a message to route (with its key group, key and
    /// event time), or one already handled (filtered, or dead-lettered with its reason).
    fn examine(&mut self, message: &BorrowedMessage<'_>) -> Option<Routed> {
        let &(source, topic) = self.source_of_topic.get(message.topic())?;
        let plan = &self.plans[source];
        if let Some(n) = self.unpublished_events.get_mut(source) {
            *n += 1;
        }
        self.counts.source_events += 1;
        let payload = message.payload().unwrap_or_default();
        match plan.examine(payload) {
            Ok(Extracted::Message(msg)) => Some(Routed {
                key_group: weft_crds::keygroup::key_group(
                    msg.tracking_number.as_bytes(),
                    self.key_groups,
                ),
                time: msg.event_time,
                source,
                topic,
                partition: message.partition(),
                offset: message.offset(),
            }),
            Ok(Extracted::Filtered) => {
                self.counts.filtered += 1;
                None
            }
            Err(rejection) => {
                let name = plan.name.clone();
                send_dead_letter(
                    &mut self.sink,
                    &self.topics,
                    &mut self.counts,
                    &mut self.buf,
                    "shuffle",
                    &name,
                    &Received::of(message),
                    &rejection,
                );
                None
            }
        }
    }

    /// Adds a message to the batch for the keyed partition of its key group; a full batch
    /// is sent.
    fn route(&mut self, routed: &Routed, payload: &[u8]) {
        let at = usize::from(routed.key_group) * self.plans.len() + routed.source;
        let Some(open) = self.batches.get_mut(at) else {
            return;
        };
        open.opened.get_or_insert_with(Instant::now);
        batch::push(
            &mut open.bytes,
            &batch::Entry {
                topic: routed.topic,
                partition: routed.partition,
                offset: routed.offset,
                payload,
            },
        );
        if open.bytes.len() >= BATCH_BYTES {
            self.send_batch(at);
        }
    }

    fn send_batch(&mut self, at: usize) {
        // One batch per (key group, source); sources are the pipeline's, as `plans`.
        let sources = self.plans.len().max(1);
        let Some(open) = self.batches.get_mut(at) else {
            return;
        };
        if open.opened.take().is_none() {
            return;
        }
        let (key_group, source) = (at / sources, at % sources);
        self.sink.send(
            &self.topics.keyed,
            Some(key_group as i32),
            None,
            &open.bytes,
            Some((BATCH_HEADER, self.plans[source].name.as_bytes())),
        );
        open.bytes.clear();
        self.counts.count_out(&self.topics.keyed);
    }

    /// Sends the batches open longer than [`LINGER`], or all of them.
    fn send_batches(&mut self, all: bool) {
        let now = Instant::now();
        for at in 0..self.batches.len() {
            let due = self.batches[at]
                .opened
                .is_some_and(|t| all || now.duration_since(t) >= LINGER);
            if due {
                self.send_batch(at);
            }
        }
    }
}

/// Notes how far a partition of the share was read. `at` is where the last message's
/// partition was: a poll round's messages mostly come a partition at a time.
fn note_read(
    share: &mut [SharePartition],
    at: &mut usize,
    topic: &str,
    partition: i32,
    offset: i64,
) {
    let is = |p: &SharePartition| p.partition == partition && p.topic == topic;
    if !share.get(*at).is_some_and(is) {
        match share.iter().position(is) {
            Some(found) => *at = found,
            None => return,
        }
    }
    if let Some(p) = share.get_mut(*at) {
        p.next = offset + 1;
    }
}

/// A message on its way to the keyed topic.
struct Routed {
    key_group: u16,
    time: i64,
    source: usize,
    /// Where it was read: its topic's position in the source's topics, partition, offset.
    topic: u16,
    partition: i32,
    offset: i64,
}

/// A message read and not written yet: its partition runs ahead (see [`Alignment`]).
/// Messages that need no writing (filtered, dead-lettered) queue too, so that offsets are
/// stored in order.
struct Held {
    offset: i64,
    routed: Option<(Routed, Box<[u8]>)>,
}

/// Event-time alignment of the raw partitions (as Flink's watermark alignment): a message
/// more than `window` ahead of the slowest partition still delivering waits in memory until
/// that one catches up. Catching up on a backlog, a consumer reads a fetch's worth of each
/// partition in turn, which can put hours between partitions; downstream, a key group's
/// watermark is the latest time it has seen, so parts from the partitions behind would
/// arrive late (or the ones ahead too far in the future) and go to the dead letters. Only
/// when too much waits is a partition paused (librdkafka then drops its prefetch).
struct Alignment {
    window: i64,
    lanes: Lanes,
    last_check: Instant,
    last_refresh: Option<Instant>,
    /// The latest event time a message may have to be written now.
    limit: i64,
    held_bytes: usize,
}

/// The partitions' lanes by (topic, partition), looked up per message by [`LaneKey`].
type Lanes = hashbrown::HashMap<(String, i32), Lane, rustc_hash::FxBuildHasher>;

/// A lane's key, borrowed: finding the lane of a message allocates nothing. It hashes as the
/// owned key does (a string's bytes, then the partition).
#[derive(Hash)]
struct LaneKey<'a>(&'a str, i32);

impl hashbrown::Equivalent<(String, i32)> for LaneKey<'_> {
    fn equivalent(&self, key: &(String, i32)) -> bool {
        self.1 == key.1 && self.0 == key.0
    }
}

impl From<&LaneKey<'_>> for (String, i32) {
    fn from(key: &LaneKey<'_>) -> (String, i32) {
        (key.0.to_string(), key.1)
    }
}

struct Lane {
    /// The latest event time read from the partition.
    time: i64,
    last_seen: Instant,
    /// Read to its end (bounded runs).
    ended: bool,
    held: VecDeque<Held>,
    paused: bool,
}

impl Lane {
    /// The event time up to which the partition has been written: its first held message's,
    /// or the latest read when it holds none.
    fn written_up_to(&self) -> i64 {
        self.held
            .iter()
            .find_map(|h| h.routed.as_ref().map(|(r, _)| r.time))
            .unwrap_or(self.time)
    }
}

/// A partition that delivered nothing for this long is taken as caught up (or empty): it no
/// longer holds the others back. (A bounded run knows when a partition has ended.) Shorter
/// would let a partition the consumer is merely slow to fetch fall out of the count.
const IDLE: Duration = Duration::from_secs(5);
/// Messages held back, at most, before the partitions holding them are paused.
const MAX_HELD_BYTES: usize = 128 << 20;

fn new_lane(now: Instant, time: i64) -> Lane {
    Lane {
        time,
        last_seen: now,
        ended: false,
        held: VecDeque::new(),
        paused: false,
    }
}

impl Alignment {
    fn note_ended(&mut self, share: &[SharePartition]) {
        for p in share {
            if p.end.is_some_and(|end| p.next >= end)
                && let Some(lane) = self.lanes.get_mut(&LaneKey(&p.topic, p.partition))
            {
                lane.ended = true;
            }
        }
    }

    fn lane(&mut self, topic: &str, partition: i32, now: Instant) -> &mut Lane {
        self.lanes
            .entry_ref(&LaneKey(topic, partition))
            .or_insert_with(|| new_lane(now, i64::MIN))
    }

    /// Whether a message must wait: its partition has messages waiting, or it is too far
    /// ahead. `now` is when its poll round began (a clock read per message was a tenth of
    /// the shuffle's thread).
    fn must_wait(&mut self, topic: &str, partition: i32, time: Option<i64>, now: Instant) -> bool {
        let limit = self.limit;
        let lane = self.lane(topic, partition, now);
        lane.last_seen = now;
        if let Some(t) = time {
            lane.time = lane.time.max(t);
        }
        !lane.held.is_empty() || time.is_some_and(|t| t > limit)
    }

    fn hold(&mut self, topic: &str, partition: i32, held: Held, now: Instant) {
        self.held_bytes += held.routed.as_ref().map_or(0, |(_, payload)| payload.len());
        self.lane(topic, partition, now).held.push_back(held);
    }

    /// How far the slowest partition has been *written*, not read: a fetch reads a partition
    /// hundreds of seconds ahead at once, and releasing the others up to that put parts of
    /// one key group more than the future skew apart. A partition that holds messages counts
    /// until they are out, idle or ended or not.
    fn floor(&self, now: Instant) -> Option<i64> {
        self.lanes
            .values()
            .filter(|l| {
                !l.held.is_empty()
                    || (!l.ended && (l.paused || now.duration_since(l.last_seen) < IDLE))
            })
            .map(Lane::written_up_to)
            .min()
    }

    fn holds_nothing(&self) -> bool {
        self.held_bytes == 0 && self.lanes.values().all(|l| l.held.is_empty())
    }

    /// Moves the limit, writes what may be written now, and pauses or resumes partitions by
    /// what is held.
    fn align(&mut self, consumer: &BaseConsumer<WeftContext>, work: &mut Work) {
        let now = Instant::now();
        if now.duration_since(self.last_check) < Duration::from_millis(10) {
            return;
        }
        self.last_check = now;
        // Partitions assigned but not read yet count too, as "nothing read": until each has
        // delivered (or stayed empty past IDLE), the ones that have wait for it.
        if self
            .last_refresh
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_refresh = Some(now);
            if let Ok(assigned) = consumer.assignment() {
                for e in assigned.elements() {
                    self.lanes
                        .entry_ref(&LaneKey(e.topic(), e.partition()))
                        .or_insert_with(|| new_lane(now, i64::MIN));
                }
            }
        }
        let floor = self.floor(now);
        self.limit = floor.map_or(i64::MAX, |f| f.saturating_add(self.window));
        let limit = self.limit;
        // The offsets of what is released, stored at once (storing them one by one made a
        // topic handle each).
        let mut released = TopicPartitionList::new();
        for ((topic, partition), lane) in &mut self.lanes {
            let mut next = None;
            while lane
                .held
                .front()
                .is_some_and(|h| h.routed.as_ref().is_none_or(|(r, _)| r.time <= limit))
            {
                let Some(held) = lane.held.pop_front() else {
                    break;
                };
                if let Some((routed, payload)) = &held.routed {
                    work.route(routed, payload);
                    self.held_bytes = self.held_bytes.saturating_sub(payload.len());
                }
                next = Some(held.offset + 1);
            }
            if let Some(next) = next {
                let _ = released.add_partition_offset(topic, *partition, Offset::Offset(next));
            }
            let pause = self.held_bytes > MAX_HELD_BYTES && !lane.held.is_empty();
            let resume = lane.paused && lane.held.is_empty();
            if pause != lane.paused && (pause || resume) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, *partition);
                let result = if pause {
                    consumer.pause(&tpl)
                } else {
                    consumer.resume(&tpl)
                };
                if result.is_ok() {
                    lane.paused = pause;
                    lane.last_seen = now;
                }
            }
        }
        if released.count() > 0 {
            // Committed once the producer has flushed what was written for them.
            let _ = consumer.store_offsets(&released);
        }
    }
}

impl ShuffleStage {
    fn run(mut self, shared: &Shared, stop: &AtomicBool, abort: &AtomicBool) -> anyhow::Result<()> {
        let mut last_commit = Instant::now();
        loop {
            if abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            if stop.load(Ordering::Relaxed) || shared.stop.load(Ordering::Relaxed) {
                return self.flush_and_commit(CommitMode::Sync);
            }
            if self.bounded
                && !self.ends_known
                && shared.input_complete.load(Ordering::Relaxed)
                && let Err(e) = self.learn_ends()
            {
                // The brokers are away: ask again next round.
                tracing::warn!("{e:#}");
            }
            let (consumer, work, alignment, share) = (
                &self.consumer,
                &mut self.work,
                &mut self.alignment,
                &mut self.share,
            );
            let bounded = self.bounded;
            let now = Instant::now();
            let mut share_at = 0;
            let busy = poll_batch(consumer, "shuffle consumer", |message| {
                let routed = work.examine(message);
                let (topic, partition) = (message.topic(), message.partition());
                let time = routed.as_ref().map(|r| r.time);
                if alignment.must_wait(topic, partition, time, now) {
                    let payload: Box<[u8]> = message.payload().unwrap_or_default().into();
                    alignment.hold(
                        topic,
                        partition,
                        Held {
                            offset: message.offset(),
                            routed: routed.map(|r| (r, payload)),
                        },
                        now,
                    );
                } else {
                    if let Some(r) = &routed {
                        work.route(r, message.payload().unwrap_or_default());
                    }
                    // Committed once the producer has flushed what it wrote for it.
                    let _ = consumer.store_offset_from_message(message);
                }
                if bounded {
                    note_read(share, &mut share_at, topic, partition, message.offset());
                }
                Ok(())
            })?;
            if busy {
                self.work.sink.health_ok();
            }
            if self.bounded {
                self.alignment.note_ended(&self.share);
            }
            self.alignment.align(&self.consumer, &mut self.work);
            self.work.send_batches(false);
            self.work.sink.poll();
            if self.bounded && self.share_done() && self.alignment.holds_nothing() {
                self.flush_and_commit(CommitMode::Sync)?;
                // After everything it shuffled: its end marker, on every keyed partition.
                let ordinal = self.ordinal.to_string();
                for p in 0..self.work.key_groups {
                    self.work.sink.send(
                        &self.work.topics.keyed,
                        Some(i32::from(p)),
                        None,
                        b"",
                        Some((END_HEADER, ordinal.as_bytes())),
                    );
                }
                return self.flush_and_commit(CommitMode::Sync);
            }
            if last_commit.elapsed() >= COMMIT_INTERVAL {
                self.work.send_batches(true);
                // Not acknowledged in time (brokers away): try again next round.
                if self.work.sink.flush(FLUSH_TIMEOUT).is_ok() {
                    self.commit(CommitMode::Async);
                }
                self.publish();
                last_commit = Instant::now();
            }
        }
    }

    fn learn_ends(&mut self) -> anyhow::Result<()> {
        for p in &mut self.share {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&p.topic, p.partition, METADATA_TIMEOUT)
                .with_context(|| format!("reading the end of {}", p.topic))?;
            p.end = Some(high);
        }
        self.ends_known = true;
        Ok(())
    }

    fn share_done(&self) -> bool {
        self.ends_known
            && self
                .share
                .iter()
                .all(|p| p.end.is_some_and(|end| p.next >= end))
    }

    /// Waits (a bounded time) for everything written to be acknowledged, then commits.
    fn flush_and_commit(&mut self, mode: CommitMode) -> anyhow::Result<()> {
        self.work.send_batches(true);
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = self.work.sink.flush(FLUSH_TIMEOUT) {
            if Instant::now() > deadline {
                bail!("the shuffle's output was not acknowledged: {e}");
            }
        }
        self.commit(mode);
        self.publish();
        Ok(())
    }

    fn commit(&self, mode: CommitMode) {
        if let Err(e) = self.consumer.commit_consumer_state(mode) {
            // Nothing read since the last commit, or a rebalance: the next one catches up.
            tracing::debug!(%e, "committing the shuffle's offsets");
        }
    }

    fn publish(&mut self) {
        if let Ok(mut published) = self.published.lock() {
            self.work.add_unpublished_events();
            published.clone_from(&self.work.counts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(time: i64) -> Held {
        Held {
            offset: 0,
            routed: Some((
                Routed {
                    key_group: 0,
                    time,
                    source: 0,
                    topic: 0,
                    partition: 0,
                    offset: 0,
                },
                Box::default(),
            )),
        }
    }

    #[test]
    fn the_floor_is_where_the_slowest_partition_was_written_not_read() {
        let now = Instant::now();
        let mut alignment = Alignment {
            window: 150,
            lanes: Lanes::default(),
            last_check: now,
            last_refresh: None,
            limit: i64::MIN,
            held_bytes: 0,
        };
        // Read to 1000, but 100 and on still wait; another read (and wrote) to 500.
        let mut ahead = new_lane(now, 1000);
        ahead.held.extend([
            Held {
                offset: 0,
                routed: None,
            },
            held(100),
            held(900),
        ]);
        alignment.lanes.insert(("raw".into(), 0), ahead);
        alignment
            .lanes
            .insert(("raw".into(), 1), new_lane(now, 500));
        assert_eq!(alignment.floor(now), Some(100));

        // An ended or idle partition still counts while it holds messages, not after.
        let mut ended = new_lane(now, 2000);
        ended.ended = true;
        ended.held.push_back(held(50));
        alignment.lanes.insert(("raw".into(), 2), ended);
        assert_eq!(alignment.floor(now), Some(50));
        alignment
            .lanes
            .get_mut(&LaneKey("raw", 2))
            .unwrap()
            .held
            .clear();
        assert_eq!(alignment.floor(now), Some(100));
        let later = now + IDLE + Duration::from_secs(1);
        assert_eq!(alignment.floor(later), Some(100), "holding: not idle");
        alignment
            .lanes
            .get_mut(&LaneKey("raw", 0))
            .unwrap()
            .held
            .clear();
        assert_eq!(alignment.floor(later), None, "everything idle");
    }
}
