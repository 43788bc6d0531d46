//! `weft-worker local --kafka embedded`: the production path on one machine. Starts
//! librdkafka's mock cluster, creates the topics, produces the input files to the raw source
//! topics, runs the real stages as one bounded worker, and reads the output topics back into
//! the same files local mode writes.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use anyhow::{Context, bail};

use super::{Ending, RunOptions};
use crate::admin::Shared;
use crate::kafka::Topics;
use crate::kafka::embedded::{EmbeddedKafka, RAW_PARTITIONS};
use crate::local::{LocalOptions, Summary, load_pipeline};
use crate::sources::files::{LineReader, Position};

/// Where each output partition ends: (topic, partition) → high watermark.
type Ends = BTreeMap<(String, i32), i64>;

/// Input messages produced ahead of what the worker has read, at most: well within what
/// the mock cluster keeps per partition.
const AHEAD: u64 = 100_000;
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Files written from the output topics, as in local mode.
const OUTPUT_FILES: [&str; 5] = [
    "actions.jsonl",
    "incomplete.jsonl",
    "dead-letters.jsonl",
    "metrics.jsonl",
    "alerts.jsonl",
];

pub fn run(options: &LocalOptions) -> anyhow::Result<Summary> {
    let (pipeline, processes) = load_pipeline(&options.resources, options.pipeline.as_deref())?;
    let spec = &pipeline.spec;
    let topics = Topics::new("local", &pipeline);
    std::fs::create_dir_all(&options.output)
        .with_context(|| format!("creating {}", options.output.display()))?;
    // The cluster lives as long as this run: state from an earlier one would point at
    // offsets of topics that are gone.
    let state_dir = options.output.join("state-kafka");
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir)
            .with_context(|| format!("removing {}", state_dir.display()))?;
    }

    let kafka = EmbeddedKafka::start()?;
    kafka.create_topics(&topics, &pipeline)?;
    let bootstrap = kafka.bootstrap_servers();
    eprintln!("embedded Kafka at {bootstrap}");
    let mut feeds = Vec::new();
    for input in &options.inputs {
        let index = match &input.source {
            Some(name) => spec
                .sources
                .iter()
                .position(|s| &s.name == name)
                .with_context(|| format!("the pipeline has no source {name}"))?,
            None if spec.sources.len() == 1 => 0,
            None => bail!("name the source of each input as <source>=<file>"),
        };
        let source = &spec.sources[index];
        if source.partitioned_by_tracking_number {
            bail!(
                "--kafka embedded feeds raw topics; source {} is pre-partitioned",
                source.name
            );
        }
        let Some(topic) = source.topics.first() else {
            bail!("source {} has no topic", source.name);
        };
        let Some(path) = &input.path else {
            bail!("--kafka embedded reads files, not standard input");
        };
        feeds.push((topic.clone(), path.clone()));
    }

    // The mock cluster keeps only a few MiB per partition: the input is produced while the
    // worker reads it, a bounded distance ahead, and the outputs are read while it writes.
    let shared = Arc::new(Shared::new(None));
    shared.input_complete.store(false, Ordering::Relaxed);
    let worker_done = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (shared, done, bootstrap) = (shared.clone(), worker_done.clone(), bootstrap.clone());
        std::thread::Builder::new()
            .name("weft-feeder".into())
            .spawn(move || feed(&bootstrap, &feeds, &shared, &done))?
    };
    let mut topic_files = vec![
        (topics.actions.clone(), OUTPUT_FILES[0]),
        (topics.incomplete.clone(), OUTPUT_FILES[1]),
        (topics.dead_letters.clone(), OUTPUT_FILES[2]),
    ];
    topic_files.extend(topics.metrics.clone().map(|t| (t, OUTPUT_FILES[3])));
    topic_files.extend(topics.alerts.clone().map(|t| (t, OUTPUT_FILES[4])));
    let outputs: Vec<(String, PathBuf)> = topic_files
        .into_iter()
        .map(|(t, f)| (t, options.output.join(f)))
        .collect();
    let ends: Arc<Mutex<Option<Ends>>> = Arc::new(Mutex::new(None));
    let reader = {
        let (ends, bootstrap, outputs) = (ends.clone(), bootstrap.clone(), outputs.clone());
        std::thread::Builder::new()
            .name("weft-drain".into())
            .spawn(move || drain(&bootstrap, &outputs, &ends))?
    };

    let ending = super::run(
        &RunOptions {
            pipeline: pipeline.clone(),
            processes,
            config: Vec::new(),
            pipeline_name: None,
            namespace: "local".into(),
            ordinal: 0,
            replicas: 1,
            assignment: None,
            bootstrap_servers: Some(bootstrap.clone()),
            state_dir,
            checkpoint_interval: options.checkpoint_interval,
            max_hot_bytes: options.max_hot_bytes,
            bounded: true,
            create_topics: false,
            abort_after_events: None,
        },
        &shared,
    );
    worker_done.store(true, Ordering::Relaxed);
    let fed = feeder
        .join()
        .map_err(|_| anyhow::anyhow!("the input feeder panicked"))??;
    eprintln!("produced {fed} messages");
    let Ending::Finished(summary) = ending? else {
        bail!("the worker stopped before the end of its input");
    };
    // Everything the worker wrote is acknowledged: read up to the ends as they are now.
    let mut now = BTreeMap::new();
    let consumer: BaseConsumer = kafka.client_config().create()?;
    for (topic, _) in &outputs {
        for p in 0..RAW_PARTITIONS {
            let (_, high) = consumer.fetch_watermarks(topic, p, READ_TIMEOUT)?;
            now.insert((topic.clone(), p), high);
        }
    }
    if let Ok(mut ends) = ends.lock() {
        *ends = Some(now);
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the output reader panicked"))??;
    let prom = shared
        .process_exposition
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    std::fs::write(options.output.join("metrics.prom"), prom).context("writing metrics.prom")?;
    std::fs::write(
        options.output.join("summary.json"),
        serde_json::to_vec_pretty(&*summary)?,
    )
    .context("writing summary.json")?;
    Ok(*summary)
}

/// Produces the input files to their topics, at most [`AHEAD`] messages ahead of the worker;
/// marks the input complete when everything is acknowledged.
fn feed(
    bootstrap: &str,
    feeds: &[(String, PathBuf)],
    shared: &Shared,
    worker_done: &AtomicBool,
) -> anyhow::Result<u64> {
    let mut produced = 0u64;
    for (topic, path) in feeds {
        let mut reader = LineReader::open(Some(path), &Position::default())
            .with_context(|| format!("opening {}", path.display()))?;
        produce(
            bootstrap,
            topic,
            &mut produced,
            || {
                reader
                    .next_line()
                    .map(|l| l.map(|(line, _, _)| line.to_vec()))
            },
            |n| {
                // Flow control, not synchronisation: wait for the worker to catch up.
                while n.saturating_sub(shared.status().source_events) > AHEAD
                    && !worker_done.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
            },
        )?;
    }
    shared.input_complete.store(true, Ordering::Relaxed);
    Ok(produced)
}

/// Produces the lines `next` gives, round robin over the partitions, as an upstream system
/// without tracking-number keys would.
fn produce(
    bootstrap: &str,
    topic: &str,
    produced: &mut u64,
    mut next: impl FnMut() -> std::io::Result<Option<Vec<u8>>>,
    pace: impl Fn(u64),
) -> anyhow::Result<()> {
    let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    while let Some(line) = next()? {
        if produced.is_multiple_of(1024) {
            pace(*produced);
        }
        let partition = (*produced % RAW_PARTITIONS as u64) as i32;
        crate::kafka::embedded::send_blocking(&producer, topic, partition, &line)?;
        *produced += 1;
    }
    rdkafka::producer::Producer::flush(&producer, READ_TIMEOUT)?;
    Ok(())
}

/// Reads the output topics into their files as they fill, until `ends` is set and reached.
fn drain(
    bootstrap: &str,
    outputs: &[(String, PathBuf)],
    ends: &Mutex<Option<Ends>>,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "weft-local-outputs")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut writers = BTreeMap::new();
    for (topic, path) in outputs {
        for p in 0..RAW_PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        let file =
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        writers.insert(topic.clone(), BufWriter::new(file));
    }
    consumer.assign(&tpl)?;
    let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(50)) {
            let message = message?;
            if let Some(w) = writers.get_mut(message.topic()) {
                w.write_all(message.payload().unwrap_or_default())?;
                w.write_all(b"\n")?;
            }
            positions.insert(
                (message.topic().to_string(), message.partition()),
                message.offset() + 1,
            );
            continue;
        }
        let Ok(guard) = ends.lock() else {
            bail!("the output reader lost its end marks");
        };
        if let Some(ends) = guard.as_ref() {
            let done = ends
                .iter()
                .all(|(k, end)| positions.get(k).copied().unwrap_or(0) >= *end);
            if done {
                break;
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + READ_TIMEOUT);
            if Instant::now() > deadline {
                bail!("timed out reading the outputs back");
            }
        }
    }
    for (_, mut w) in writers {
        w.flush()?;
    }
    Ok(())
}
