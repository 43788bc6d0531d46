//! The worker's one producer. Every stage writes through it; a checkpoint flushes it first, so
//! nothing a checkpoint covers can still be in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::kafka::{Health, WeftContext};

/// How long a flush waits for acknowledgements between checks.
const FLUSH_STEP: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("creating the producer: {0}")]
    Create(KafkaError),
    #[error("producing to {topic}: {source}")]
    Produce { topic: String, source: KafkaError },
    #[error("{0} records could not be delivered (last error: {1})")]
    Undelivered(u64, String),
    #[error("the brokers did not acknowledge every record within {0:?}")]
    FlushTimeout(Duration),
}

pub struct KafkaSink {
    /// Shared by the sinks of one worker's threads ([`KafkaSink::share`]): librdkafka's
    /// producer is thread-safe, and one flush covers every thread's records.
    producer: Arc<BaseProducer<WeftContext>>,
    health: Arc<Health>,
    /// Records handed to the producer.
    pub sent: u64,
    error: Option<SinkError>,
}

/// One record's optional header.
pub type HeaderPair<'a> = Option<(&'a str, &'a [u8])>;

impl KafkaSink {
    pub fn new(config: &ClientConfig, health: Arc<Health>) -> Result<KafkaSink, SinkError> {
        let producer = config
            .create_with_context(WeftContext {
                health: health.clone(),
            })
            .map_err(SinkError::Create)?;
        Ok(KafkaSink {
            producer: Arc::new(producer),
            health,
            sent: 0,
            error: None,
        })
    }

    /// A sink for another thread over the same producer. Its errors are its own.
    pub fn share(&self) -> KafkaSink {
        KafkaSink {
            producer: Arc::clone(&self.producer),
            health: Arc::clone(&self.health),
            sent: 0,
            error: None,
        }
    }

    /// The first error of a send, if any, taken.
    pub fn take_error(&mut self) -> Option<SinkError> {
        self.error.take()
    }

    /// Queues one record; waits for room when the local queue is full (the brokers are slow or
    /// away). An error is kept and reported by the next [`KafkaSink::flush`].
    pub fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: &[u8],
        header: HeaderPair<'_>,
    ) {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some((name, value)) = header {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: name,
                value: Some(value),
            }));
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    if self.sent.is_multiple_of(1024) {
                        self.producer.poll(Duration::ZERO);
                    }
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((source, _)) => {
                    if self.error.is_none() {
                        self.error = Some(SinkError::Produce {
                            topic: topic.to_string(),
                            source,
                        });
                    }
                    return;
                }
            }
        }
    }

    /// Records that the brokers answer (records were read).
    pub fn health_ok(&self) {
        self.health.brokers_down.store(false, Ordering::Relaxed);
    }

    /// Serves delivery reports.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Waits until every record sent so far is acknowledged. A timeout is not fatal (the
    /// records stay queued and are retried); a record that failed for good is.
    pub fn flush(&mut self, timeout: Duration) -> Result<(), SinkError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        // librdkafka's flush waits in steps of 100 ms once the queue is empty but acks are
        // outstanding (0.1 s per checkpoint in profiles); polling in short steps returns
        // within a few milliseconds of the last acknowledgement.
        let deadline = std::time::Instant::now() + timeout;
        let flushed = loop {
            self.producer.poll(FLUSH_STEP);
            if self.producer.in_flight_count() == 0 {
                break Ok(());
            }
            if std::time::Instant::now() >= deadline {
                break Err(());
            }
        };
        let failed = self.health.failed_deliveries.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(SinkError::Undelivered(
                failed,
                self.health.last_error().unwrap_or_default(),
            ));
        }
        match flushed {
            Ok(()) => Ok(()),
            Err(_) => Err(SinkError::FlushTimeout(timeout)),
        }
    }

    /// Records queued and not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}
