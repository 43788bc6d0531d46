//! The worker's own Prometheus metrics (prometheus-client). The stages count in plain
//! integers on their hot path and publish the differences here a few times a second, so a
//! scrape costs the stages nothing.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageSource {
    pub stage: &'static str,
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageReason {
    pub stage: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: i32,
}

/// Counts the stages keep; [`WorkerMetrics::publish`] turns them into counters.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageCounts {
    /// stage → source → messages read.
    pub events_in: BTreeMap<String, BTreeMap<String, u64>>,
    /// topic → records produced.
    pub records_out: BTreeMap<String, u64>,
    /// stage → reason → dead letters.
    pub dead_letters: BTreeMap<String, BTreeMap<String, u64>>,
    pub filtered: u64,
    /// Messages read from the sources (by the shuffle, or by the join for pre-partitioned
    /// sources): the pipeline's input, each counted once.
    #[serde(default)]
    pub source_events: u64,
    /// Records for a key group whose input had already ended (bounded runs, replays).
    pub after_end: u64,
}

impl StageCounts {
    pub fn events(&self) -> u64 {
        self.events_in.values().flat_map(BTreeMap::values).sum()
    }

    /// Messages read by one stage.
    pub fn stage_events(&self, stage: &str) -> u64 {
        self.events_in.get(stage).map_or(0, |m| m.values().sum())
    }

    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.values().flat_map(BTreeMap::values).sum()
    }

    /// Dead letters by reason, over all stages.
    pub fn dead_letters_by_reason(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for reasons in self.dead_letters.values() {
            for (reason, n) in reasons {
                *out.entry(reason.clone()).or_default() += n;
            }
        }
        out
    }

    pub fn count_event(&mut self, stage: &str, source: &str) {
        self.add_events(stage, source, 1);
    }

    /// `n` messages read by `stage` from `source`.
    pub fn add_events(&mut self, stage: &str, source: &str, n: u64) {
        bump(&mut self.events_in, stage, source, n);
    }

    pub fn count_dead_letter(&mut self, stage: &str, reason: &str) {
        bump(&mut self.dead_letters, stage, reason, 1);
    }

    pub fn count_out(&mut self, topic: &str) {
        self.add_out(topic, 1);
    }

    /// `n` records produced to `topic`.
    pub fn add_out(&mut self, topic: &str, n: u64) {
        match self.records_out.get_mut(topic) {
            Some(count) => *count += n,
            None => {
                self.records_out.insert(topic.to_string(), n);
            }
        }
    }

    /// These counts plus another stage's.
    pub fn merged(&self, other: &StageCounts) -> StageCounts {
        let mut out = self.clone();
        for (outer, inner) in [
            (&mut out.events_in, &other.events_in),
            (&mut out.dead_letters, &other.dead_letters),
        ] {
            for (a, m) in inner {
                for (b, n) in m {
                    *outer
                        .entry(a.clone())
                        .or_default()
                        .entry(b.clone())
                        .or_default() += n;
                }
            }
        }
        for (topic, n) in &other.records_out {
            *out.records_out.entry(topic.clone()).or_default() += n;
        }
        out.filtered += other.filtered;
        out.source_events += other.source_events;
        out.after_end += other.after_end;
        out
    }
}

fn bump(map: &mut BTreeMap<String, BTreeMap<String, u64>>, outer: &str, inner: &str, n: u64) {
    // Lookups by &str: a String is allocated only the first time a pair is seen.
    if let Some(count) = map.get_mut(outer).and_then(|m| m.get_mut(inner)) {
        *count += n;
        return;
    }
    *map.entry(outer.to_string())
        .or_default()
        .entry(inner.to_string())
        .or_default() += n;
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct WorkerMetrics {
    pub registry: Registry,
    events_in: Family<StageSource, Counter>,
    records_out: Family<TopicLabel, Counter>,
    dead_letters: Family<StageReason, Counter>,
    filtered: Counter,
    pub pending_entries: Gauge,
    pub hot_state_bytes: Gauge,
    pub state_sst_bytes: Gauge,
    pub checkpoints: Counter,
    pub checkpoint_duration: Histogram,
    pub last_checkpoint_timestamp: FloatGauge,
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    pub join_completion_latency: Histogram,
    pub ready: Gauge,
    published: StageCounts,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> WorkerMetrics {
        let mut registry = Registry::with_prefix("weft_worker");
        let events_in = Family::<StageSource, Counter>::default();
        registry.register(
            "events_in",
            "Messages read, per stage and source",
            events_in.clone(),
        );
        let records_out = Family::<TopicLabel, Counter>::default();
        registry.register(
            "records_out",
            "Records produced, per topic",
            records_out.clone(),
        );
        let dead_letters = Family::<StageReason, Counter>::default();
        registry.register(
            "dead_letters",
            "Messages sent to the dead-letter topic, per stage and reason",
            dead_letters.clone(),
        );
        let filtered = Counter::default();
        registry.register(
            "filtered",
            "Messages dropped by a source filter",
            filtered.clone(),
        );
        let pending_entries = Gauge::default();
        registry.register(
            "join_pending_entries",
            "Tracking numbers waiting for parts, in memory",
            pending_entries.clone(),
        );
        let hot_state_bytes = Gauge::default();
        registry.register(
            "join_hot_state_bytes",
            "Bytes of join state held in memory",
            hot_state_bytes.clone(),
        );
        let state_sst_bytes = Gauge::default();
        registry.register(
            "state_sst_bytes",
            "Bytes of RocksDB SST files",
            state_sst_bytes.clone(),
        );
        let checkpoints = Counter::default();
        registry.register("checkpoints", "Checkpoints written", checkpoints.clone());
        let checkpoint_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "checkpoint_duration_seconds",
            "Time to flush outputs and write a checkpoint",
            checkpoint_duration.clone(),
        );
        let last_checkpoint_timestamp = FloatGauge::default();
        registry.register(
            "last_checkpoint_timestamp_seconds",
            "Unix time of the last checkpoint (its age is time() minus this)",
            last_checkpoint_timestamp.clone(),
        );
        let consumer_lag = Family::<PartitionLabel, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Records behind the high watermark, per owned partition (one per key group)",
            consumer_lag.clone(),
        );
        let join_completion_latency = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        registry.register(
            "join_completion_latency_seconds",
            "Event time from a tracking number's first part to its completing part",
            join_completion_latency.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 when the worker is ready", ready.clone());
        WorkerMetrics {
            registry,
            events_in,
            records_out,
            dead_letters,
            filtered,
            pending_entries,
            hot_state_bytes,
            state_sst_bytes,
            checkpoints,
            checkpoint_duration,
            last_checkpoint_timestamp,
            consumer_lag,
            join_completion_latency,
            ready,
            published: StageCounts::default(),
        }
    }

    /// Adds what the counts grew by since the last call.
    pub fn publish(&mut self, counts: &StageCounts) {
        for (stage, source, n) in flatten(&counts.events_in) {
            let before = nested(&self.published.events_in, stage, source);
            self.events_in
                .get_or_create(&StageSource {
                    stage: stage_name(stage),
                    source: source.to_string(),
                })
                .inc_by(n.saturating_sub(before));
        }
        for (topic, n) in &counts.records_out {
            let before = self.published.records_out.get(topic).copied().unwrap_or(0);
            self.records_out
                .get_or_create(&TopicLabel {
                    topic: topic.clone(),
                })
                .inc_by(n.saturating_sub(before));
        }
        for (stage, reason, n) in flatten(&counts.dead_letters) {
            let before = nested(&self.published.dead_letters, stage, reason);
            self.dead_letters
                .get_or_create(&StageReason {
                    stage: stage_name(stage),
                    reason: reason_name(reason),
                })
                .inc_by(n.saturating_sub(before));
        }
        self.filtered
            .inc_by(counts.filtered.saturating_sub(self.published.filtered));
        self.published = counts.clone();
    }
}

fn flatten(
    map: &BTreeMap<String, BTreeMap<String, u64>>,
) -> impl Iterator<Item = (&str, &str, u64)> {
    map.iter()
        .flat_map(|(a, m)| m.iter().map(move |(b, n)| (a.as_str(), b.as_str(), *n)))
}

fn nested(map: &BTreeMap<String, BTreeMap<String, u64>>, outer: &str, inner: &str) -> u64 {
    map.get(outer)
        .and_then(|m| m.get(inner))
        .copied()
        .unwrap_or(0)
}

fn stage_name(stage: &str) -> &'static str {
    match stage {
        "shuffle" => "shuffle",
        "join" => "join",
        "process" => "process",
        _ => "other",
    }
}

fn reason_name(reason: &str) -> &'static str {
    use crate::sources::DeadLetterReason as R;
    [
        R::NotJson,
        R::Oversized,
        R::NoTrackingNumber,
        R::NoEventTime,
        R::BadEventTime,
        R::ImplausibleEventTime,
        R::FutureEventTime,
        R::NoDiscriminator,
        R::UnknownDiscriminator,
        R::Late,
        R::Foreign,
        R::WrongPartition,
    ]
    .into_iter()
    .map(R::as_str)
    .find(|r| *r == reason)
    .unwrap_or("other")
}
