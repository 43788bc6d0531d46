//! librdkafka's in-process mock cluster: a real Kafka-protocol broker on loopback, for trying
//! the production path on one machine (`weft-worker local --kafka embedded`) and for tests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use weft_crds::JoinPipeline;

use super::Topics;

/// A record's key (if any) and value.
pub type KeyValue = (Option<Vec<u8>>, Vec<u8>);

/// Partitions of each raw source topic and each output topic the embedded cluster creates.
pub const RAW_PARTITIONS: i32 = 16;

/// A mock cluster with a pipeline's topics.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("timed out after {0:?} reading {1}")]
    Timeout(Duration, String),
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster.
    pub fn start() -> Result<EmbeddedKafka, EmbeddedError> {
        Ok(EmbeddedKafka {
            cluster: MockCluster::new(1)?,
        })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }

    /// Creates the pipeline's source, internal and output topics (the mock cluster's Admin API
    /// cannot create topics, so the worker cannot do it itself here).
    pub fn create_topics(
        &self,
        topics: &Topics,
        pipeline: &JoinPipeline,
    ) -> Result<(), EmbeddedError> {
        self.create_topics_with(topics, pipeline, RAW_PARTITIONS)
    }

    /// [`EmbeddedKafka::create_topics`] with `raw` partitions per raw source topic: the
    /// cluster keeps about 5 MiB per partition, so an input produced whole before it is read
    /// needs enough of them.
    pub fn create_topics_with(
        &self,
        topics: &Topics,
        pipeline: &JoinPipeline,
        raw: i32,
    ) -> Result<(), EmbeddedError> {
        let key_groups = i32::from(pipeline.spec.key_groups);
        for source in &pipeline.spec.sources {
            let partitions = if source.partitioned_by_tracking_number {
                key_groups
            } else {
                raw
            };
            for topic in &source.topics {
                self.cluster.create_topic(topic, partitions, 1)?;
            }
        }
        for topic in topics.internal() {
            self.cluster.create_topic(topic, key_groups, 1)?;
        }
        for topic in topics.outputs() {
            self.cluster.create_topic(topic, RAW_PARTITIONS, 1)?;
        }
        Ok(())
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap_servers());
        config
    }

    /// Produces every line of `lines` to `topic`, spread over its partitions as an upstream
    /// system without tracking-number keys would (round robin); returns how many.
    pub fn produce_lines<'a>(
        &self,
        topic: &str,
        partitions: i32,
        lines: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<u64, EmbeddedError> {
        let producer: BaseProducer = self
            .client_config()
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        let mut n = 0u64;
        for line in lines {
            let partition = (n % partitions.max(1) as u64) as i32;
            send_blocking(&producer, topic, partition, line)?;
            n += 1;
        }
        producer.flush(Duration::from_secs(60))?;
        Ok(n)
    }

    /// Reads every record of `topic` (all partitions, up to their high watermarks) as
    /// `(key, value)`, in partition then offset order.
    pub fn read_topic(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Vec<KeyValue>, EmbeddedError> {
        read_topic(&self.client_config(), topic, timeout)
    }
}

/// Sends one record, waiting for room in the producer's queue when it is full.
pub fn send_blocking(
    producer: &BaseProducer,
    topic: &str,
    partition: i32,
    value: &[u8],
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::<(), [u8]>::to(topic)
        .payload(value)
        .partition(partition);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Reads every record of `topic` up to the high watermarks as they are now.
pub fn read_topic(
    base: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<KeyValue>, EmbeddedError> {
    let consumer: BaseConsumer = base
        .clone()
        .set("group.id", "weft-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut highs = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, timeout)?;
        if high > low {
            highs.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
    }
    let mut out: BTreeMap<i32, Vec<KeyValue>> = BTreeMap::new();
    if highs.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut remaining = highs.len();
    let mut done = BTreeMap::new();
    while remaining > 0 {
        if Instant::now() > deadline {
            return Err(EmbeddedError::Timeout(timeout, topic.to_string()));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let p = message.partition();
        if done.contains_key(&p) {
            continue;
        }
        out.entry(p).or_default().push((
            message.key().map(<[u8]>::to_vec),
            message.payload().unwrap_or_default().to_vec(),
        ));
        if message.offset() + 1 >= highs.get(&p).copied().unwrap_or(0) {
            done.insert(p, ());
            remaining -= 1;
        }
    }
    Ok(out.into_values().flatten().collect())
}
