//! `weft-worker local --kafka embedded`: the production path on one machine. Starts
//! librdkafka's mock cluster, creates the topics, produces the input files to the raw source
//! topics, runs the real stages as one bounded worker, and reads the output topics back into
//! the same files local mode writes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{Ending, RunOptions};
use crate::admin::Shared;
use crate::kafka::Topics;
use crate::kafka::embedded::{EmbeddedKafka, RAW_PARTITIONS};
use crate::local::{LocalOptions, Summary, load_pipeline};
use crate::sources::files::{LineReader, Position};

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
    eprintln!("embedded Kafka at {}", kafka.bootstrap_servers());
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
        let Some(topic) = source.topics.first() else {
            bail!("source {} has no topic", source.name);
        };
        let Some(path) = &input.path else {
            bail!("--kafka embedded reads files, not standard input");
        };
        let mut reader = LineReader::open(Some(path), &Position::default())
            .with_context(|| format!("opening {}", path.display()))?;
        let mut lines = Vec::new();
        while let Some((line, _, _)) = reader.next_line()? {
            lines.push(line.to_vec());
        }
        let partitions = if source.partitioned_by_tracking_number {
            bail!(
                "--kafka embedded feeds raw topics; source {} is pre-partitioned",
                source.name
            );
        } else {
            RAW_PARTITIONS
        };
        let n = kafka.produce_lines(topic, partitions, lines.iter().map(Vec::as_slice))?;
        eprintln!("produced {n} messages to {topic}");
    }

    let shared = Arc::new(Shared::new(None));
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
            bootstrap_servers: Some(kafka.bootstrap_servers()),
            state_dir,
            checkpoint_interval: options.checkpoint_interval,
            max_hot_bytes: options.max_hot_bytes,
            bounded: true,
            create_topics: false,
            abort_after_events: None,
        },
        &shared,
    )?;
    let Ending::Finished(summary) = ending else {
        bail!("the worker stopped before the end of its input");
    };

    let mut topic_files = vec![
        (topics.actions.clone(), OUTPUT_FILES[0]),
        (topics.incomplete.clone(), OUTPUT_FILES[1]),
        (topics.dead_letters.clone(), OUTPUT_FILES[2]),
    ];
    topic_files.extend(topics.metrics.clone().map(|t| (t, OUTPUT_FILES[3])));
    topic_files.extend(topics.alerts.clone().map(|t| (t, OUTPUT_FILES[4])));
    for (topic, file) in topic_files {
        let records = kafka.read_topic(&topic, Duration::from_secs(120))?;
        let mut text = Vec::new();
        for (_, value) in records {
            text.extend_from_slice(&value);
            text.push(b'\n');
        }
        let path = options.output.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
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
