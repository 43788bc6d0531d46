//! The worker over Kafka, against librdkafka's mock cluster (a real Kafka-protocol broker on
//! loopback): two workers sharing the key groups give exactly local mode's outputs; a worker
//! stopped dead and restarted loses nothing; bad records go to dead letters; a broker outage
//! makes the worker unready and then it carries on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, outside #[test] fns

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use weft_crds::JoinPipeline;
use weft_worker::admin::Shared;
use weft_worker::generate::{GenerateOptions, generate_file};
use weft_worker::kafka::embedded::{EmbeddedKafka, RAW_PARTITIONS};
use weft_worker::kafka::{Topics, batch};
use weft_worker::local::{InputSpec, LocalOptions, Summary, load_pipeline};
use weft_worker::run::{Ending, RunOptions};

const WAIT: Duration = Duration::from_secs(120);

struct Setup {
    dir: tempfile::TempDir,
    kafka: EmbeddedKafka,
    pipeline: JoinPipeline,
    processes: Vec<(String, weft_crds::ProcessDefinitionSpec)>,
    topics: Topics,
    input: std::path::PathBuf,
}

fn resources() -> Vec<std::path::PathBuf> {
    let dir = common::examples().join("credit-card");
    vec![
        dir.join("processdefinition.yaml"),
        dir.join("joinpipeline.yaml"),
    ]
}

/// A cluster with the example pipeline's topics and `actions` generated actions on the raw
/// topic.
fn setup(actions: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, processes) = load_pipeline(&resources(), None).unwrap();
    let input = dir.path().join("traffic.jsonl");
    generate_file(
        &GenerateOptions {
            actions,
            seed: 7,
            ..GenerateOptions::default()
        },
        &input,
    )
    .unwrap();
    let kafka = EmbeddedKafka::start().unwrap();
    let topics = Topics::new("test", &pipeline);
    kafka.create_topics(&topics, &pipeline).unwrap();
    let text = std::fs::read(&input).unwrap();
    let raw = &pipeline.spec.sources[0].topics[0];
    kafka
        .produce_lines(
            raw,
            RAW_PARTITIONS,
            text.split(|b| *b == b'\n').filter(|l| !l.is_empty()),
        )
        .unwrap();
    Setup {
        dir,
        kafka,
        pipeline,
        processes,
        topics,
        input,
    }
}

impl Setup {
    fn options(&self, ordinal: u32, replicas: u32) -> RunOptions {
        RunOptions {
            pipeline: self.pipeline.clone(),
            processes: self.processes.clone(),
            config: Vec::new(),
            pipeline_name: None,
            namespace: "test".into(),
            ordinal,
            replicas,
            assignment: None,
            bootstrap_servers: Some(self.kafka.bootstrap_servers()),
            state_dir: self.dir.path().join(format!("state-{ordinal}")),
            checkpoint_interval: Some(Duration::from_millis(200)),
            max_hot_bytes: 64 << 20,
            bounded: true,
            create_topics: false,
            abort_after_events: None,
        }
    }

    /// Local mode over the same input: the reference.
    fn local(&self) -> (Summary, std::path::PathBuf) {
        let out = self.dir.path().join("local");
        let summary = weft_worker::local::run(&LocalOptions {
            resources: resources(),
            pipeline: None,
            inputs: vec![InputSpec {
                source: None,
                path: Some(self.input.clone()),
            }],
            output: out.clone(),
            checkpoint_interval: None,
            max_hot_bytes: 64 << 20,
            fresh: true,
            progress: false,
            join_only: false,
        })
        .unwrap();
        (summary, out)
    }

    /// Every record of an output topic, deduplicated by key (the last value wins, as for a
    /// compacted topic or an upsert by key).
    fn topic_by_key(&self, topic: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.kafka
            .read_topic(topic, WAIT)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.expect("output records are keyed"), v))
            .collect()
    }
}

/// A local-mode output file, deduplicated by `key` (the last line wins).
fn file_by_key(path: &Path, key: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let k = value[key].as_str().unwrap().as_bytes().to_vec();
            (k, line.as_bytes().to_vec())
        })
        .collect()
}

/// Record values as parsed JSON, so that formatting cannot matter.
fn parsed(map: BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<Vec<u8>, serde_json::Value> {
    map.into_iter()
        .map(|(k, v)| (k, serde_json::from_slice(&v).unwrap()))
        .collect()
}

/// Runs workers (each in its own thread) until every one has ended.
fn run_workers(options: Vec<RunOptions>) -> Vec<Ending> {
    let handles: Vec<_> = options
        .into_iter()
        .map(|o| {
            std::thread::spawn(move || {
                let shared = Arc::new(Shared::new(None));
                weft_worker::run::run(&o, &shared).unwrap()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn finished(ending: Ending) -> Summary {
    match ending {
        Ending::Finished(summary) => *summary,
        other => panic!("expected the bounded run to finish, got {other:?}"),
    }
}

/// Compares two keyed record sets and names the first differences (not the whole sets).
fn assert_same_records(
    what: &str,
    got: &BTreeMap<Vec<u8>, serde_json::Value>,
    expected: &BTreeMap<Vec<u8>, serde_json::Value>,
) {
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let different: Vec<_> = got
        .iter()
        .filter(|(k, v)| expected.get(*k).is_some_and(|e| e != *v))
        .take(3)
        .map(|(k, v)| {
            format!(
                "{}: got {v}, expected {}",
                String::from_utf8_lossy(k),
                expected[k]
            )
        })
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && different.is_empty(),
        "{what}: {} records, expected {}; {} missing (first {:?}); {} extra (first {:?}); differing: {different:#?}",
        got.len(),
        expected.len(),
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(3).collect::<Vec<_>>(),
    );
}

/// The outputs of the workers equal local mode's: actions, incomplete actions and metric
/// records (by their idempotent keys), and the counts.
fn assert_same_as_local(setup: &Setup, summaries: &[Summary]) {
    let (local, out) = setup.local();
    let complete: u64 = summaries.iter().map(|s| s.actions.complete).sum();
    let incomplete: u64 = summaries.iter().map(|s| s.actions.incomplete).sum();
    assert_eq!(complete, local.actions.complete);
    assert_eq!(incomplete, local.actions.incomplete);
    assert!(complete > 0 && incomplete > 0, "the input has both kinds");

    assert_same_records(
        "actions",
        &parsed(setup.topic_by_key(&setup.topics.actions)),
        &parsed(file_by_key(&out.join("actions.jsonl"), "trackingNumber")),
    );
    assert_same_records(
        "incomplete",
        &parsed(setup.topic_by_key(&setup.topics.incomplete)),
        &parsed(file_by_key(&out.join("incomplete.jsonl"), "trackingNumber")),
    );
    // A window whose count went back to zero (a contribution taken back when a late action
    // changed an instance's history) reads as no window: one arrival order emits the zero,
    // another never had anything to emit.
    let nonzero = |m: BTreeMap<Vec<u8>, serde_json::Value>| {
        m.into_iter()
            .filter(|(_, v)| !common::holds_nothing(v))
            .collect::<BTreeMap<_, _>>()
    };
    let metrics_topic = setup.topics.metrics.as_deref().unwrap();
    let expected = nonzero(parsed(file_by_key(&out.join("metrics.jsonl"), "id")));
    assert!(!expected.is_empty());
    assert_same_records(
        "metrics",
        &nonzero(parsed(setup.topic_by_key(metrics_topic))),
        &expected,
    );

    let started: i64 = summaries
        .iter()
        .map(|s| s.processes["credit-card"].instances.started)
        .sum();
    assert!(started > 0);
    assert_eq!(started, local.processes["credit-card"].instances.started);
}

#[test]
fn two_workers_give_exactly_the_outputs_of_local_mode() {
    let setup = setup(3_000);
    let endings = run_workers(vec![setup.options(0, 2), setup.options(1, 2)]);
    let summaries: Vec<Summary> = endings.into_iter().map(finished).collect();
    // Each worker shuffled its share of the raw partitions; together, every line once.
    let lines = std::fs::read_to_string(&setup.input)
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(summaries.iter().map(|s| s.events).sum::<u64>(), lines);
    assert!(summaries.iter().all(|s| s.events > 0));
    assert_same_as_local(&setup, &summaries);

    // An action whose instance lives on the worker that joined it goes straight to its
    // process stage; the others travel over the internal actions topic.
    let routed = setup
        .kafka
        .read_topic(&setup.topics.routed_actions, WAIT)
        .unwrap()
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .count() as u64;
    let applied: u64 = summaries
        .iter()
        .flat_map(|s| s.processes.values())
        .map(|p| p.actions)
        .sum();
    assert!(
        0 < routed && routed < applied,
        "{routed} of {applied} routed"
    );

    // The checkpointed offsets are committed under the pipeline's group, for lag monitors:
    // at the end, every keyed partition is read to its end.
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = setup
        .kafka
        .client_config()
        .set("group.id", &setup.topics.group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..i32::from(setup.pipeline.spec.key_groups) {
        tpl.add_partition(&setup.topics.keyed, p);
    }
    let committed = consumer.committed_offsets(tpl, WAIT).unwrap();
    for e in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks(&setup.topics.keyed, e.partition(), WAIT)
            .unwrap();
        assert_eq!(
            e.offset().to_raw(),
            Some(high),
            "partition {}",
            e.partition()
        );
    }
}

#[test]
fn a_worker_stopped_dead_and_restarted_loses_nothing() {
    let setup = setup(3_000);
    let mut crashing = setup.options(0, 2);
    // Mid-stream: after some checkpoints, well before the end.
    crashing.checkpoint_interval = Some(Duration::from_millis(10));
    crashing.abort_after_events = Some(8_000);
    let steady = setup.options(1, 2);
    let steady = std::thread::spawn(move || {
        let shared = Arc::new(Shared::new(None));
        weft_worker::run::run(&steady, &shared).unwrap()
    });
    let first = run_workers(vec![crashing]);
    assert!(matches!(first[0], Ending::Aborted), "{:?}", first[0]);
    let restarted = run_workers(vec![setup.options(0, 2)]);
    let summaries = vec![
        finished(restarted.into_iter().next().unwrap()),
        finished(steady.join().unwrap()),
    ];
    assert!(
        summaries[0].restarts >= 1,
        "the crash came before the first checkpoint"
    );
    assert_same_as_local(&setup, &summaries);
}

#[test]
fn bad_records_on_every_topic_go_to_dead_letters_and_the_stages_keep_running() {
    let setup = setup(500);
    let raw = &setup.pipeline.spec.sources[0].topics[0];
    setup
        .kafka
        .produce_lines(
            raw,
            1,
            [
                &b"not json"[..],
                br#"{"logType":"REQ","ts":1700000000000,"env":"prod"}"#,
                b"{\"truncated\":",
            ],
        )
        .unwrap();
    // Records Weft did not write, on its internal topics.
    setup
        .kafka
        .produce_lines(&setup.topics.keyed, 1, [&b"{\"stray\":1}"[..]])
        .unwrap();
    setup
        .kafka
        .produce_lines(&setup.topics.routed_actions, 1, [&b"\xff\xfe"[..]])
        .unwrap();
    // A batch as the shuffle writes them: an entry the join rejects, then one cut off.
    let mut bad_batch = Vec::new();
    batch::push(
        &mut bad_batch,
        &batch::Entry {
            topic: 0,
            partition: 3,
            offset: 424_242,
            payload: br#"{"logType":"NOPE","traceId":"t-x","ts":1700000000000,"env":"prod"}"#,
        },
    );
    bad_batch.extend_from_slice(&[9, 0, 0]);
    let producer: BaseProducer = setup.kafka.client_config().create().unwrap();
    let source = setup.pipeline.spec.sources[0].name.as_bytes();
    producer
        .send(
            BaseRecord::<(), [u8]>::to(&setup.topics.keyed)
                .partition(2)
                .payload(&bad_batch)
                .headers(OwnedHeaders::new().insert(Header {
                    key: batch::BATCH_HEADER,
                    value: Some(source),
                })),
        )
        .unwrap();
    producer.flush(WAIT).unwrap();
    let summary = finished(run_workers(vec![setup.options(0, 1)]).remove(0));
    let dead = setup
        .kafka
        .read_topic(&setup.topics.dead_letters, WAIT)
        .unwrap();
    let reasons: BTreeSet<String> = dead
        .iter()
        .map(|(_, v)| {
            let v: serde_json::Value = serde_json::from_slice(v).unwrap();
            assert!(v["topic"].is_string() && v["offset"].is_i64(), "{v}");
            v["reason"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(reasons.contains("not-json"), "{reasons:?}");
    assert!(reasons.contains("no-tracking-number"), "{reasons:?}");
    assert!(reasons.contains("foreign-record"), "{reasons:?}");
    // A rejected message of a batch names where the shuffle read it; a cut-off entry names
    // the batch record.
    let letters: Vec<serde_json::Value> = dead
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
        .collect();
    assert!(
        letters
            .iter()
            .any(|v| v["reason"] == "unknown-discriminator"
                && v["topic"] == raw.as_str()
                && v["partition"] == 3
                && v["offset"] == 424_242),
        "{letters:?}"
    );
    assert!(
        letters
            .iter()
            .any(|v| v["topic"] == setup.topics.keyed.as_str()
                && v["partition"] == 2
                && v["detail"].as_str().unwrap().contains("malformed batch")),
        "{letters:?}"
    );
    assert_eq!(summary.dead_letters, dead.len() as u64);
    assert!(
        summary.dead_letters >= 7,
        "{:?}",
        summary.dead_letters_by_reason
    );
    // The good traffic is unaffected.
    let (local, _) = setup.local();
    assert_eq!(summary.actions, local.actions);
}

#[test]
fn a_broker_outage_makes_the_worker_unready_and_it_recovers_without_loss() {
    let setup = setup(3_000);
    let shared = Arc::new(Shared::new(None));
    let options = setup.options(0, 1);
    let worker = {
        let shared = shared.clone();
        std::thread::spawn(move || weft_worker::run::run(&options, &shared).unwrap())
    };
    // Wait until it runs, then take the only broker away.
    let deadline = Instant::now() + WAIT;
    while !shared.ready.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "never became ready");
        assert!(!worker.is_finished(), "ended before the outage");
        std::thread::sleep(Duration::from_millis(5));
    }
    setup.kafka.cluster().broker_down(1).unwrap();
    let deadline = Instant::now() + WAIT;
    while shared.ready.load(Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "stayed ready with the broker down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!worker.is_finished(), "finished while the broker was down");
    setup.kafka.cluster().broker_up(1).unwrap();
    let summary = finished(worker.join().unwrap());
    assert_same_as_local(&setup, &[summary]);
}
