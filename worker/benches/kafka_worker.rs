//! One worker over Kafka (librdkafka's mock cluster on loopback): shuffle, join and process
//! stages, bounded. The generated credit-card input is produced to the raw topic first (not
//! timed); then the worker reads it to its end, and the input events per second of that run
//! are printed (median of the runs). Outputs are not read back (the mock cluster keeps only
//! a few MiB per partition of them). `hack/bench.sh` runs it; results in docs/benchmarks.md.
//!
//!   [KAFKA_PROPERTIES=k=v,...] cargo bench -p weft-worker --bench kafka_worker -- [actions] [runs] [--join-only]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::sync::Arc;
use std::time::Instant;

use weft_worker::admin::Shared;
use weft_worker::generate::{GenerateOptions, generate_file};
use weft_worker::kafka::Topics;
use weft_worker::kafka::embedded::EmbeddedKafka;
use weft_worker::local::load_pipeline;
use weft_worker::run::{Ending, RunOptions};

/// The worker binary's allocator (see `worker/src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Raw partitions: at least this many, and enough to hold the whole input (the mock cluster
/// keeps about 5 MiB per partition; 4 MiB each leaves room).
const RAW_PARTITIONS: i32 = 96;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let join_only = args.iter().any(|a| a == "--join-only");
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let actions = numbers.first().copied().unwrap_or(100_000);
    let runs = numbers.get(1).copied().unwrap_or(3);
    let examples = weft_crds::repo_dir().join("manifests/examples/credit-card");
    let (mut pipeline, mut processes) = load_pipeline(
        &[
            examples.join("processdefinition.yaml"),
            examples.join("joinpipeline.yaml"),
        ],
        None,
    )
    .unwrap();
    // Client settings to try, as a pipeline's `kafka.properties` would set them:
    // `KAFKA_PROPERTIES=linger.ms=100,fetch.min.bytes=65536`.
    for setting in std::env::var("KAFKA_PROPERTIES")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((key, value)) = setting.split_once('=') {
            pipeline
                .spec
                .kafka
                .properties
                .insert(key.trim().into(), value.trim().into());
        }
    }
    if join_only {
        processes.clear();
        pipeline.spec.processes.names.clear();
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("traffic.jsonl");
    let truth = generate_file(
        &GenerateOptions {
            actions,
            ..GenerateOptions::default()
        },
        &input,
    )
    .unwrap();
    let text = std::fs::read(&input).unwrap();
    let raw_partitions = RAW_PARTITIONS.max(i32::try_from(text.len() >> 22).unwrap() + 1);
    let (mut rates, mut cpu_rates) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let kafka = EmbeddedKafka::start().unwrap();
        let topics = Topics::new("bench", &pipeline);
        kafka
            .create_topics_with(&topics, &pipeline, raw_partitions)
            .unwrap();
        let raw = &pipeline.spec.sources[0].topics[0];
        kafka
            .produce_lines(
                raw,
                raw_partitions,
                text.split(|b| *b == b'\n').filter(|l| !l.is_empty()),
            )
            .unwrap();
        let shared = Arc::new(Shared::new(None));
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let options = RunOptions {
            pipeline: pipeline.clone(),
            processes: processes.clone(),
            config: Vec::new(),
            pipeline_name: None,
            namespace: "bench".into(),
            ordinal: 0,
            replicas: 1,
            assignment: None,
            bootstrap_servers: Some(kafka.bootstrap_servers()),
            state_dir: dir.path().join(format!("state-{run}")),
            checkpoint_interval: None,
            max_hot_bytes: 256 << 20,
            bounded: true,
            create_topics: false,
            abort_after_events: None,
        };
        // Its own thread, named: profiles tell the stateful stages from the setup.
        let ending = std::thread::Builder::new()
            .name("weft-stateful".into())
            .spawn(move || weft_worker::run::run(&options, &shared))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_before;
        let Ending::Finished(summary) = ending else {
            panic!("the bounded run did not finish");
        };
        assert_eq!(summary.events, truth.lines, "every input line read");
        let rate = truth.lines as f64 / seconds;
        // Read back from 96 partitions filled beforehand, the input's event time is skewed by
        // what one fetch holds per partition: a part that was late already (up to 90% of the
        // lateness) can fall beyond it. See docs/benchmarks.md.
        eprintln!(
            "run {run}: {} lines in {seconds:.2} s: {rate:.0} events/s, {cpu:.2} CPU s ({:.0} per CPU second); {} complete (truth {}), {} incomplete (truth {}), dead letters {:?}",
            truth.lines,
            truth.lines as f64 / cpu,
            summary.actions.complete,
            truth.complete,
            summary.actions.incomplete,
            truth.incomplete,
            summary.dead_letters_by_reason
        );
        if summary.dead_letters > 0 {
            let dead = kafka
                .read_topic(&topics.dead_letters, std::time::Duration::from_secs(30))
                .unwrap();
            for (_, letter) in dead.iter().take(3) {
                eprintln!("  e.g. {}", String::from_utf8_lossy(letter));
            }
        }
        rates.push(rate);
        cpu_rates.push(truth.lines as f64 / cpu);
    }
    rates.sort_by(f64::total_cmp);
    cpu_rates.sort_by(f64::total_cmp);
    println!(
        "kafka worker ({}): {} actions, {} lines: median {:.0} events/s over {} runs ({:.0} per CPU second)",
        if join_only {
            "shuffle + join"
        } else {
            "shuffle + join + process"
        },
        actions,
        truth.lines,
        rates[rates.len() / 2],
        runs,
        cpu_rates[cpu_rates.len() / 2]
    );
}

/// CPU time of the whole process (user + system, every thread: the mock cluster's too),
/// from /proc/self/stat in clock ticks (`USER_HZ`, 100 on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
