//! Where the join and process engines' records go when the worker runs over Kafka.

use weft_crds::keygroup::{KeyGroupRange, key_group};

use crate::join::record::{RecordLayout, write_action, write_incomplete};
use crate::join::{JoinOutput, Parts};
use crate::kafka::{PROCESS_HEADER, Topics, batch};
use crate::metrics::StageCounts;
use crate::process::{ClassifiedBatch, ProcessOutput, ProcessPlan};
use crate::sinks::kafka::{HeaderPair, KafkaSink};
use crate::sinks::{Origin, write_dead_letter};
use crate::sources::Rejection;
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;

/// The producer and what the stages need to address records.
pub struct Outputs<'a> {
    pub sink: &'a mut KafkaSink,
    pub topics: &'a Topics,
    pub counts: &'a mut StageCounts,
    pub buf: &'a mut Vec<u8>,
}

impl Outputs<'_> {
    /// Sends `buf` (a record and its newline) without the newline.
    fn send_buf(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        header: HeaderPair<'_>,
    ) {
        let record = self.buf.strip_suffix(b"\n").unwrap_or(self.buf);
        self.sink.send(topic, partition, key, record, header);
        count_out(self.counts, topic);
    }
}

fn count_out(counts: &mut StageCounts, topic: &str) {
    counts.count_out(topic);
}

/// The join's outputs: the user's actions and incomplete topics, and, once per
/// ProcessDefinition, the process stage: in `local` when this worker owns the key group of
/// the action's instance key, else on the internal actions topic in the partition of that
/// key group.
pub struct JoinOutputs<'a> {
    pub out: Outputs<'a>,
    pub routing: &'a [ProcessPlan],
    pub key_groups: u16,
    pub owned: KeyGroupRange,
    /// Actions for this worker's own process stage, classified (see
    /// [`crate::process::thread::Classifier`]) into the stage's next batch: in the same
    /// checkpoint as the join state that made them, so they need no trip through Kafka (as
    /// Flink chains operators whose partitioning agrees), and read once, for routing and
    /// classification together.
    pub classified: &'a mut ClassifiedBatch,
    /// Those that could not be classified, framed as a batch (entry topic = the definition's
    /// position in `routing`, partition = key group), for the caller to dead-letter.
    pub local: &'a mut Vec<u8>,
    /// Event-time seconds from the first part to the completing one, per completed action.
    pub latencies: &'a mut Vec<f64>,
    /// Where the values of the record in the buffer lie, for its classification.
    pub layout: &'a mut RecordLayout,
}

impl JoinOutputs<'_> {
    /// Classifies or routes the action record in the buffer, written with `self.layout`.
    fn route(&mut self, tracking_number: &str) {
        let Outputs {
            sink,
            topics,
            counts,
            buf,
        } = &mut self.out;
        let record = buf.strip_suffix(b"\n").unwrap_or(buf);
        let Ok(text) = std::str::from_utf8(record) else {
            return;
        };
        let (key_groups, owned) = (self.key_groups, self.owned);
        // Where an action lives: the key group of its instance key, or of its tracking number
        // when it has none.
        let key_group_of = |instance: Option<&str>| {
            key_group(instance.unwrap_or(tracking_number).as_bytes(), key_groups)
        };
        for (p, plan) in self.routing.iter().enumerate() {
            // The predicates are evaluated only for an action applied here: the worker that
            // owns another's instance classifies it again when it reads it.
            let read = plan.classify_if(text, Some(self.layout), |instance| {
                owned.contains(key_group_of(instance))
            });
            let instance = match read {
                Ok(Ok(c)) => {
                    counts.count_event("process", &plan.name);
                    c.encode(p as u16, self.classified);
                    continue;
                }
                Ok(Err(instance)) => instance,
                // An action the definition cannot read still goes to it, keyed by tracking
                // number: the process stage counts it (unmatched, no instance key) where it
                // lives.
                Err(_) => None,
            };
            let key = instance.as_deref().unwrap_or(tracking_number);
            let kg = key_group(key.as_bytes(), key_groups);
            if owned.contains(kg) {
                batch::push(
                    self.local,
                    &batch::Entry {
                        topic: p as u16,
                        partition: i32::from(kg),
                        offset: -1,
                        payload: record,
                    },
                );
                continue;
            }
            sink.send(
                &topics.routed_actions,
                Some(i32::from(kg)),
                Some(key.as_bytes()),
                record,
                Some((PROCESS_HEADER, plan.name.as_bytes())),
            );
            count_out(counts, &topics.routed_actions);
        }
    }
}

impl JoinOutput for JoinOutputs<'_> {
    fn action(
        &mut self,
        key_group: u16,
        tracking_number: &str,
        parts: &Parts<'_>,
        completed_at: i64,
    ) {
        self.out.buf.clear();
        write_action(
            self.out.buf,
            self.layout,
            key_group,
            tracking_number,
            parts,
            completed_at,
        );
        let topics = self.out.topics;
        let topic = &topics.actions;
        self.out
            .send_buf(topic, None, Some(tracking_number.as_bytes()), None);
        self.latencies
            .push((completed_at - parts.first_event_time()).max(0) as f64 / 1000.0);
        self.route(tracking_number);
    }

    fn incomplete(
        &mut self,
        key_group: u16,
        tracking_number: &str,
        parts: &Parts<'_>,
        missing: u8,
    ) {
        self.out.buf.clear();
        write_incomplete(
            self.out.buf,
            self.layout,
            key_group,
            tracking_number,
            parts,
            missing,
        );
        let topics = self.out.topics;
        let topic = &topics.incomplete;
        self.out
            .send_buf(topic, None, Some(tracking_number.as_bytes()), None);
        self.route(tracking_number);
    }
}

/// Where a record was read, and its value: from a consumer, or from the parked list.
pub struct Received<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub payload: &'a [u8],
}

impl<'a> Received<'a> {
    pub fn of(message: &'a BorrowedMessage<'_>) -> Received<'a> {
        Received {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            payload: message.payload().unwrap_or_default(),
        }
    }
}

/// Sends a dead letter for a message: the reason, the source and where it was read, keyed
/// by that position (`topic/partition/offset`), and counts it.
#[allow(clippy::too_many_arguments)] // the parts of a stage it borrows, one by one
pub fn send_dead_letter(
    sink: &mut KafkaSink,
    topics: &Topics,
    counts: &mut StageCounts,
    buf: &mut Vec<u8>,
    stage: &str,
    source: &str,
    message: &Received<'_>,
    rejection: &Rejection,
) {
    counts.count_dead_letter(stage, rejection.reason.as_str());
    buf.clear();
    let origin = Origin::Kafka {
        topic: message.topic,
        partition: message.partition,
        offset: message.offset,
    };
    write_dead_letter(buf, source, &origin, message.payload, rejection);
    let key = format!("{}/{}/{}", message.topic, message.partition, message.offset);
    let record = buf.strip_suffix(b"\n").unwrap_or(buf);
    sink.send(
        &topics.dead_letters,
        None,
        Some(key.as_bytes()),
        record,
        None,
    );
    count_out(counts, &topics.dead_letters);
}

/// The `id` of a record the engines write (`{"id":"...",...}`): the escaped text between the
/// quotes, which is as unique as the id itself.
pub fn record_id(record: &[u8]) -> Option<&[u8]> {
    let rest = record.strip_prefix(b"{\"id\":\"")?;
    let mut i = 0;
    while let Some(at) = memchr::memchr2(b'"', b'\\', &rest[i..]) {
        if rest[i + at] == b'"' {
            return Some(&rest[..i + at]);
        }
        i += at + 2;
        if i >= rest.len() {
            break;
        }
    }
    None
}

/// The process stage's outputs on its own thread ([`crate::process::thread`]): metric and
/// alert records through a sink over the worker's producer, counted apart and handed over at
/// each checkpoint.
pub struct ProcessSink {
    sink: KafkaSink,
    topics: Topics,
    /// Records produced since the last checkpoint (counted by topic then: a map lookup per
    /// record was a tenth of sending it).
    metrics_out: u64,
    alerts_out: u64,
    /// Where the stage's Prometheus text goes at each checkpoint.
    shared: std::sync::Arc<crate::admin::Shared>,
}

impl ProcessSink {
    pub fn new(
        sink: KafkaSink,
        topics: Topics,
        shared: std::sync::Arc<crate::admin::Shared>,
    ) -> ProcessSink {
        ProcessSink {
            sink,
            topics,
            metrics_out: 0,
            alerts_out: 0,
            shared,
        }
    }

    /// The records produced since the last checkpoint, taken.
    pub fn take_counts(&mut self) -> StageCounts {
        let mut counts = StageCounts::default();
        for (topic, n) in [
            (&self.topics.metrics, std::mem::take(&mut self.metrics_out)),
            (&self.topics.alerts, std::mem::take(&mut self.alerts_out)),
        ] {
            if let Some(topic) = topic
                && n > 0
            {
                counts.add_out(topic, n);
            }
        }
        counts
    }
}

/// Metric records keyed by their idempotent id, alerts by theirs.
impl ProcessOutput for ProcessSink {
    fn metric(&mut self, record: &[u8]) {
        self.metrics_out +=
            send_keyed_by_id(&mut self.sink, self.topics.metrics.as_deref(), record);
    }

    fn alert(&mut self, record: &[u8]) {
        self.alerts_out += send_keyed_by_id(&mut self.sink, self.topics.alerts.as_deref(), record);
    }
}

/// Sends a record (without its newline) keyed by its id, if the topic is configured; how
/// many records went (0 or 1).
fn send_keyed_by_id(sink: &mut KafkaSink, topic: Option<&str>, record: &[u8]) -> u64 {
    let Some(topic) = topic else {
        return 0;
    };
    let record = record.strip_suffix(b"\n").unwrap_or(record);
    sink.send(topic, None, record_id(record), record, None);
    1
}

impl crate::process::thread::StageOutput for ProcessSink {
    /// The records counted since the last checkpoint.
    type Flushed = StageCounts;

    /// The records are handed to the producer; the worker's flush of the producer waits for
    /// them. A send that failed stops the stage.
    fn flush(&mut self) -> Result<StageCounts, String> {
        if let Some(e) = self.sink.take_error() {
            return Err(e.to_string());
        }
        Ok(self.take_counts())
    }

    fn checkpointed(&mut self, engine: &crate::process::ProcessEngine) {
        let steps: Vec<(String, Vec<String>)> = engine
            .processes
            .iter()
            .map(|s| {
                let names = s.plan.steps.iter().map(|step| step.name.clone()).collect();
                (s.plan.name.clone(), names)
            })
            .collect();
        let text = crate::local::process_exposition(&steps, engine);
        if let Ok(mut exposition) = self.shared.process_exposition.lock() {
            *exposition = text;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::record_id;

    #[test]
    fn record_ids_are_found_with_escapes() {
        assert_eq!(
            record_id(br#"{"id":"a/b\"c\\","x":1}"#),
            Some(&br#"a/b\"c\\"#[..])
        );
        assert_eq!(record_id(br#"{"id":"unterminated"#), None);
        assert_eq!(record_id(br#"{"other":"x"}"#), None);
    }
}
