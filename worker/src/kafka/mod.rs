//! Kafka plumbing shared by the stages: topic names, client settings, the client context that
//! reports broker health and delivery failures, topic checks, and the embedded mock cluster.

pub mod batch;
pub mod embedded;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;
use weft_crds::JoinPipeline;

/// Header naming the source of a message on the keyed topic.
pub const SOURCE_HEADER: &str = "weft-source";
/// Header naming the ProcessDefinition an action on the internal actions topic is routed for.
pub const PROCESS_HEADER: &str = "weft-process";
/// Header of an end-of-input marker (bounded runs): the value is the sending worker's ordinal.
pub const END_HEADER: &str = "weft-end";

/// Every topic a pipeline reads or writes.
#[derive(Clone, Debug)]
pub struct Topics {
    /// `<namespace>.<pipeline>.keyed`: shuffled messages, partition = key group.
    pub keyed: String,
    /// `<namespace>.<pipeline>.actions`: actions routed to the process stage, partition = key
    /// group of the instance key.
    pub routed_actions: String,
    pub actions: String,
    pub incomplete: String,
    pub dead_letters: String,
    pub metrics: Option<String>,
    pub alerts: Option<String>,
    /// The consumer group of the stateful stages: offsets committed for lag visibility only.
    pub group: String,
    /// The consumer group of the shuffle stage.
    pub shuffle_group: String,
}

impl Topics {
    pub fn new(namespace: &str, pipeline: &JoinPipeline) -> Topics {
        let name = pipeline.metadata.name.as_deref().unwrap_or_default();
        let outputs = &pipeline.spec.outputs;
        let prefix = format!("{namespace}.{name}");
        let [keyed, routed_actions] = weft_crds::join_pipeline::internal_topics(namespace, name);
        Topics {
            keyed,
            routed_actions,
            actions: outputs.actions.clone(),
            incomplete: outputs.incomplete.clone(),
            dead_letters: outputs.dead_letters.clone(),
            metrics: outputs.metrics.clone(),
            alerts: outputs.alerts.clone(),
            group: format!("weft.{prefix}"),
            shuffle_group: format!("weft.{prefix}.shuffle"),
        }
    }

    /// The internal topics, which must have exactly `keyGroups` partitions.
    pub fn internal(&self) -> [&str; 2] {
        [&self.keyed, &self.routed_actions]
    }

    /// The output topics (any partition count).
    pub fn outputs(&self) -> Vec<&str> {
        let mut topics = vec![
            self.actions.as_str(),
            self.incomplete.as_str(),
            self.dead_letters.as_str(),
        ];
        topics.extend(self.metrics.as_deref());
        topics.extend(self.alerts.as_deref());
        topics
    }
}

/// Client settings from the pipeline's `kafka` section; `bootstrap` overrides its servers.
/// The pipeline's `kafka.properties` are applied last, by the producer and consumer settings
/// too: they override Weft's defaults.
pub fn client_config(pipeline: &JoinPipeline, bootstrap: Option<&str>) -> ClientConfig {
    let kafka = &pipeline.spec.kafka;
    let mut config = ClientConfig::new();
    config.set(
        "bootstrap.servers",
        bootstrap.unwrap_or(&kafka.bootstrap_servers),
    );
    user_properties(&mut config, pipeline);
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

fn user_properties(config: &mut ClientConfig, pipeline: &JoinPipeline) {
    for (key, value) in &pipeline.spec.kafka.properties {
        config.set(key, value);
    }
}

/// Settings of the producer all stages share.
pub fn producer_config(base: &ClientConfig, pipeline: &JoinPipeline) -> ClientConfig {
    let mut config = base.clone();
    config
        // Ordered, never duplicated by retries: an end marker follows every record before it.
        .set("enable.idempotence", "true")
        // A record is retried until it is delivered: a checkpoint waits for it instead of
        // skipping it. A broker outage stalls the worker, it never drops output.
        .set("message.timeout.ms", "0")
        // Kafka's Java partitioner, so keyed records land where Java clients would put them.
        .set("partitioner", "murmur2_random")
        // Only failures are reported (they are all the delivery callback counts); a flush
        // waits for the in-flight count instead. A report per record was a fifth of the
        // process stage's thread in the Kafka worker.
        .set("delivery.report.only.error", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "262144");
    user_properties(&mut config, pipeline);
    config
}

/// Settings of a consumer; offsets are stored by the worker, never automatically.
pub fn consumer_config(base: &ClientConfig, group: &str, pipeline: &JoinPipeline) -> ClientConfig {
    let mut config = base.clone();
    config
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        // When the prefetch queue is full librdkafka stops fetching a partition for this long
        // (default 1 s): a worker catching up on a backlog then sat idle most of the time
        // (shuffle + join over a backlog: 106k -> 254k events/s, docs/benchmarks.md).
        .set("fetch.queue.backoff.ms", "20")
        .set("statistics.interval.ms", "5000");
    user_properties(&mut config, pipeline);
    // Offsets are the worker's: never stored or committed behind its back.
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config
}

/// What the clients tell the worker about the cluster.
#[derive(Debug, Default)]
pub struct Health {
    /// Set when librdkafka reports that every broker is down; cleared by the next successful
    /// fetch or flush.
    pub brokers_down: AtomicBool,
    /// Deliveries that failed for good (the producer retries transient failures itself).
    pub failed_deliveries: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// High watermarks from the consumers' statistics: topic → partition → offset.
    pub high_watermarks: Mutex<BTreeMap<String, BTreeMap<i32, i64>>>,
}

impl Health {
    fn note_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let map = self.high_watermarks.lock().ok()?;
        map.get(topic)?.get(&partition).copied()
    }
}

/// The client context of every consumer and producer: logs through `tracing`, records broker
/// health and failed deliveries.
#[derive(Clone)]
pub struct WeftContext {
    pub health: Arc<Health>,
}

impl ClientContext for WeftContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            _ => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.brokers_down.store(true, Ordering::Relaxed);
        }
        tracing::warn!(%error, reason, "kafka client error");
        self.health.note_error(format!("{error}: {reason}"));
    }

    fn stats(&self, statistics: Statistics) {
        let Ok(mut map) = self.health.high_watermarks.lock() else {
            return;
        };
        for (name, topic) in statistics.topics {
            let entry = map.entry(name).or_default();
            for (partition, p) in topic.partitions {
                if partition >= 0 && p.hi_offset >= 0 {
                    entry.insert(partition, p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for WeftContext {}

impl ProducerContext for WeftContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.health
                .failed_deliveries
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "a record could not be delivered");
            self.health.note_error(format!("delivery failed: {error}"));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic {topic} does not exist{hint}")]
    Missing { topic: String, hint: &'static str },
    #[error(
        "topic {topic} has {actual} partitions, but the pipeline needs exactly {expected} (one per key group); Weft never re-partitions a topic: delete it or change keyGroups back"
    )]
    PartitionCount {
        topic: String,
        expected: usize,
        actual: usize,
    },
    #[error("reading the metadata of {topic}: {source}")]
    Metadata { topic: String, source: KafkaError },
    #[error("creating topic {topic}: {detail}")]
    Create { topic: String, detail: String },
}

/// The partition count of a topic, `None` when it does not exist.
pub fn partition_count(
    consumer: &BaseConsumer<WeftContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, TopicError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| TopicError::Metadata {
            topic: topic.to_string(),
            source,
        })?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None => Ok(Some(t.partitions().len())),
        Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            Ok(None)
        }
        Some(e) => Err(TopicError::Metadata {
            topic: topic.to_string(),
            source: KafkaError::MetadataFetch(e.into()),
        }),
    }
}

/// Checks that `topic` has exactly `expected` partitions; creates it when missing and `create`
/// is set (internal topics), through the Admin API.
pub fn ensure_topic(
    consumer: &BaseConsumer<WeftContext>,
    base: &ClientConfig,
    topic: &str,
    expected: Option<usize>,
    create: bool,
    timeout: Duration,
) -> Result<(), TopicError> {
    match partition_count(consumer, topic, timeout)? {
        Some(actual) => match expected {
            Some(expected) if expected != actual => Err(TopicError::PartitionCount {
                topic: topic.to_string(),
                expected,
                actual,
            }),
            _ => Ok(()),
        },
        None if create => {
            let partitions = expected.unwrap_or(1);
            create_topic(base, topic, partitions, timeout)?;
            // Created: check what the cluster made of it.
            match partition_count(consumer, topic, timeout)? {
                Some(actual) if expected.is_none_or(|e| e == actual) => Ok(()),
                Some(actual) => Err(TopicError::PartitionCount {
                    topic: topic.to_string(),
                    expected: partitions,
                    actual,
                }),
                None => Err(TopicError::Missing {
                    topic: topic.to_string(),
                    hint: " (created, but not visible yet)",
                }),
            }
        }
        None => Err(TopicError::Missing {
            topic: topic.to_string(),
            hint: "",
        }),
    }
}

fn create_topic(
    base: &ClientConfig,
    topic: &str,
    partitions: usize,
    timeout: Duration,
) -> Result<(), TopicError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let fail = |detail: String| TopicError::Create {
        topic: topic.to_string(),
        detail,
    };
    let admin: AdminClient<_> = base.create().map_err(|e| fail(e.to_string()))?;
    let partitions = i32::try_from(partitions).map_err(|e| fail(e.to_string()))?;
    // The cluster's default replication factor.
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let results = runtime
        .block_on(admin.create_topics([&new], &options))
        .map_err(|e| fail(e.to_string()))?;
    for result in results {
        if let Err((_, code)) = result
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(fail(code.to_string()));
        }
    }
    tracing::info!(topic, partitions, "created topic");
    Ok(())
}
