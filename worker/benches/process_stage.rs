//! The process stage alone: applies the actions a local run wrote (actions.jsonl, then
//! incomplete.jsonl) to the credit-card definition, emitting metric records into memory, and
//! prints actions per second (median of the runs). `hack/bench.sh` runs it; results are in
//! docs/benchmarks.md.
//!
//!   cargo bench -p weft-worker --bench process_stage -- <local-output-dir> [runs]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::path::PathBuf;
use std::time::Instant;

use weft_crds::keygroup::KeyGroupRange;
use weft_worker::local::load_pipeline;
use weft_worker::process::thread::Classifier;
use weft_worker::process::{ProcessEngine, ProcessOutput, ProcessPlan};

/// The worker binary's allocator (see `worker/src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Sink {
    bytes: usize,
    records: usize,
}

impl ProcessOutput for Sink {
    fn metric(&mut self, record: &[u8]) {
        self.bytes += record.len();
        self.records += 1;
    }
    fn alert(&mut self, record: &[u8]) {
        self.bytes += record.len();
        self.records += 1;
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let dir = PathBuf::from(
        args.first()
            .expect("usage: process_stage <local-output-dir> [runs]"),
    );
    let runs: usize = args.get(1).map_or(5, |r| r.parse().unwrap());
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/examples/credit-card"
    );
    let resources = [
        PathBuf::from(format!("{example}/processdefinition.yaml")),
        PathBuf::from(format!("{example}/joinpipeline.yaml")),
    ];
    let (pipeline, processes) = load_pipeline(&resources, None).unwrap();
    let mut records = String::new();
    for file in ["actions.jsonl", "incomplete.jsonl"] {
        records.push_str(&std::fs::read_to_string(dir.join(file)).unwrap());
    }
    let actions: Vec<&str> = records.lines().filter(|l| !l.is_empty()).collect();
    let key_groups = pipeline.spec.key_groups;
    let lateness = pipeline.spec.join.lateness.as_millis() as i64;
    let mut rates = Vec::new();
    for _ in 0..runs {
        let compile = || -> Vec<ProcessPlan> {
            processes
                .iter()
                .map(|(name, spec)| ProcessPlan::compile(name, spec).unwrap())
                .collect()
        };
        let plans = compile();
        let classifier = Classifier::new(compile());
        let definitions = processes.len();
        let mut engine = ProcessEngine::new(
            plans,
            key_groups,
            KeyGroupRange {
                start: 0,
                end: key_groups,
            },
            lateness,
        );
        let mut sink = Sink {
            bytes: 0,
            records: 0,
        };
        let started = Instant::now();
        // As the stage runs: each action classified for each definition, then applied.
        let classified = actions
            .iter()
            .flat_map(|a| (0..definitions).map(move |p| (p, a)))
            .map(|(p, a)| classifier.classify(p, a).map(|c| (p, c)));
        engine.apply_many(classified, &mut sink).unwrap();
        engine.finish(&mut sink);
        let seconds = started.elapsed().as_secs_f64();
        let rss = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or_default()
            .to_string();
        eprintln!("{rss}; {}", engine.memory_report());
        rates.push(actions.len() as f64 / seconds);
        eprintln!(
            "{} actions in {seconds:.3} s: {:.0} actions/s, {} records, {} MiB out",
            actions.len(),
            actions.len() as f64 / seconds,
            sink.records,
            sink.bytes >> 20
        );
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "process stage: {} actions, median {:.0} actions/s over {runs} runs",
        actions.len(),
        rates[rates.len() / 2]
    );
}
