//! Local (embedded) mode: a JoinPipeline over JSON-lines files or stdin, in one process, with a
//! local RocksDB directory and output files — the same join as the worker, no Kafka needed.
//!
//! Checkpoints work as in the worker: outputs flushed first, then state changes and the input
//! positions in one RocksDB batch. A run that is killed (even with SIGKILL) and started again
//! with the same arguments resumes from its last checkpoint, cuts its outputs back to the
//! checkpointed lengths, and ends with exactly the files an uninterrupted run writes.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use weft_crds::keygroup::KeyGroupRange;
use weft_crds::manifest::{Resource, read_file};
use weft_crds::{JoinPipeline, ProcessDefinitionSpec};

use crate::join::record::{RecordLayout, write_action, write_incomplete};
use crate::join::{Evict, JoinConfig, JoinEngine, JoinError, JoinOutput, JoinStats, Parts};
use crate::process::thread::{Classifier, ProcessThread, StageOutput};
use crate::process::{
    ClassifiedBatch, ProcessEngine, ProcessMeta, ProcessOutput, ProcessPlan, Totals,
};
use crate::sinks::{JsonLinesFile, Origin, write_dead_letter};
use crate::sources::files::{LineReader, Position};
use crate::sources::{Extracted, Rejection, SourcePlan};
use crate::state::Store;

/// Process-stage changes (instances and aggregates) that make a checkpoint due.
const PROCESS_CHANGES_PER_CHECKPOINT: usize = 300_000;

/// Where one source's messages come from.
#[derive(Clone, Debug)]
pub struct InputSpec {
    /// Source name; may be omitted when the pipeline has one source.
    pub source: Option<String>,
    /// A file, or `None` for standard input.
    pub path: Option<PathBuf>,
}

impl std::str::FromStr for InputSpec {
    type Err = String;
    /// `<source>=<file>`, `<source>=-`, `<file>` or `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (source, file) = match s.split_once('=') {
            Some((source, file)) => (Some(source.to_string()), file),
            None => (None, s),
        };
        if file.is_empty() {
            return Err(format!("{s:?}: no file (use - for standard input)"));
        }
        Ok(InputSpec {
            source,
            path: (file != "-").then(|| PathBuf::from(file)),
        })
    }
}

pub struct LocalOptions {
    pub resources: Vec<PathBuf>,
    pub pipeline: Option<String>,
    pub inputs: Vec<InputSpec>,
    pub output: PathBuf,
    /// Overrides `spec.checkpointInterval`.
    pub checkpoint_interval: Option<Duration>,
    /// Memory budget of the join's hot tier; beyond it, state is evicted to RocksDB.
    pub max_hot_bytes: usize,
    /// Start over: remove the state and outputs of an earlier run in `output`.
    pub fresh: bool,
    pub progress: bool,
    /// Run the join only: no process stage (no metrics, alerts or processes summary).
    pub join_only: bool,
}

/// The checkpoint record of local mode.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Checkpoint {
    inputs: Vec<Position>,
    cursor: usize,
    outputs: BTreeMap<String, u64>,
    watermarks: Vec<i64>,
    join: JoinStats,
    counters: Counters,
    finished: bool,
    #[serde(default)]
    processes: Vec<ProcessMeta>,
    #[serde(default)]
    process_watermarks: Vec<i64>,
    #[serde(default)]
    join_only: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Counters {
    events: u64,
    filtered: u64,
    dead_letters: BTreeMap<String, u64>,
    checkpoints: u64,
    restarts: u64,
    seconds: f64,
    peak_hot_bytes: u64,
    peak_hot_entries: u64,
    /// The state's files on disk, the most they held at a checkpoint (the one before written).
    #[serde(default)]
    peak_disk_bytes: u64,
}

impl Counters {
    fn note_peaks(&mut self, engine: &JoinEngine) {
        self.peak_hot_bytes = self.peak_hot_bytes.max(engine.hot_bytes() as u64);
        self.peak_hot_entries = self.peak_hot_entries.max(engine.hot_entries() as u64);
    }
}

/// What summary.json holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub pipeline: String,
    pub events: u64,
    pub actions: ActionCounts,
    pub duplicates: u64,
    pub dead_letters: u64,
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    pub filtered: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub state: StateSummary,
    pub checkpoints: u64,
    pub restarts: u64,
    /// Per ProcessDefinition.
    pub processes: BTreeMap<String, ProcessSummary>,
}

/// The `processes` section of summary.json for one definition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSummary {
    pub actions: u64,
    /// Actions that matched no step.
    pub unmatched: u64,
    pub no_instance_key: u64,
    pub duplicates: u64,
    /// Actions for an instance that had ended before them.
    pub after_end: u64,
    pub instances: InstanceCounts,
    pub steps: BTreeMap<String, StepSummary>,
    pub returns: BTreeMap<String, i64>,
    /// Instances that did not start at the first step or jumped over one.
    pub skipped_steps: i64,
    pub outcomes: BTreeMap<String, i64>,
    /// Outcome count / instances started.
    pub outcome_rates: BTreeMap<String, f64>,
    pub sla_breaches: BTreeMap<String, i64>,
    /// The most common step sequences of ended instances, most common first (top 10).
    pub variants: Vec<VariantCount>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceCounts {
    pub started: i64,
    pub completed: i64,
    pub abandoned: i64,
    pub in_progress: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepSummary {
    pub entered: i64,
    /// Instances in the step now.
    pub in_progress: i64,
    /// Time in the step, over the instances that left it.
    pub left: i64,
    pub mean_seconds: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VariantCount {
    pub steps: String,
    pub count: i64,
}

/// The counts a summary is built from, besides the engines'.
pub struct SummaryCounts {
    pub events: u64,
    pub filtered: u64,
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    pub seconds: f64,
    pub checkpoints: u64,
    pub restarts: u64,
    pub peak_hot_bytes: u64,
    pub peak_hot_entries: u64,
    pub peak_disk_bytes: u64,
    pub sst_bytes: u64,
    pub hot_budget_bytes: u64,
}

impl Summary {
    pub fn build(
        pipeline: String,
        counts: &SummaryCounts,
        stats: &JoinStats,
        step_names: &[(String, Vec<String>)],
        process: &ProcessEngine,
    ) -> Summary {
        let actions = stats.complete + stats.incomplete;
        Summary {
            pipeline,
            events: counts.events,
            actions: ActionCounts {
                complete: stats.complete,
                incomplete: stats.incomplete,
            },
            duplicates: stats.duplicates,
            dead_letters: counts.dead_letters_by_reason.values().sum(),
            dead_letters_by_reason: counts.dead_letters_by_reason.clone(),
            filtered: counts.filtered,
            seconds: counts.seconds,
            events_per_second: if counts.seconds > 0.0 {
                counts.events as f64 / counts.seconds
            } else {
                0.0
            },
            state: StateSummary {
                hot_budget_bytes: counts.hot_budget_bytes,
                peak_hot_bytes: counts.peak_hot_bytes,
                peak_hot_entries: counts.peak_hot_entries,
                peak_disk_bytes: counts.peak_disk_bytes,
                sst_bytes: counts.sst_bytes,
                actions_persisted: stats.actions_persisted,
                never_persisted_share: if actions > 0 {
                    1.0 - stats.actions_persisted as f64 / actions as f64
                } else {
                    1.0
                },
            },
            checkpoints: counts.checkpoints,
            restarts: counts.restarts,
            processes: step_names
                .iter()
                .zip(&process.processes)
                .map(|((name, steps), state)| {
                    (name.clone(), ProcessSummary::new(steps, &state.totals()))
                })
                .collect(),
        }
    }
}

/// Compiles the definitions a pipeline uses.
pub fn compile_plans(
    processes: &[(String, ProcessDefinitionSpec)],
) -> anyhow::Result<Vec<ProcessPlan>> {
    processes
        .iter()
        .map(|(name, spec)| {
            ProcessPlan::compile(name, spec)
                .map_err(|e| anyhow::anyhow!("ProcessDefinition/{name} {e}"))
        })
        .collect()
}

/// [`compile_plans`] for classifying the actions the join writes from `sources`' messages.
pub fn classifying_plans(
    processes: &[(String, ProcessDefinitionSpec)],
    sources: &[SourcePlan],
) -> anyhow::Result<Vec<ProcessPlan>> {
    let mut plans = compile_plans(processes)?;
    plans.iter_mut().for_each(|p| p.expect_members(sources));
    Ok(plans)
}

/// Each definition's name and its step names, in order.
pub fn step_names(plans: &[ProcessPlan]) -> Vec<(String, Vec<String>)> {
    plans
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.steps.iter().map(|s| s.name.clone()).collect(),
            )
        })
        .collect()
}

/// The process totals in the Prometheus text format.
pub fn process_exposition(step_names: &[(String, Vec<String>)], process: &ProcessEngine) -> String {
    let prom: Vec<(String, Totals, Vec<String>)> = step_names
        .iter()
        .zip(&process.processes)
        .map(|((name, steps), state)| (name.clone(), state.totals(), steps.clone()))
        .collect();
    crate::process::exposition::render(&prom)
}

impl ProcessSummary {
    pub fn new(step_names: &[String], totals: &Totals) -> ProcessSummary {
        let steps = step_names
            .iter()
            .map(|name| {
                let sketch = totals.durations.get(name);
                (
                    name.clone(),
                    StepSummary {
                        entered: totals.entered.get(name).copied().unwrap_or(0),
                        in_progress: totals.wip.get(name).copied().unwrap_or(0),
                        left: sketch.map_or(0, |s| s.count),
                        mean_seconds: sketch.and_then(|s| s.mean()),
                        p50_seconds: sketch.and_then(|s| s.quantile(0.5)),
                        p90_seconds: sketch.and_then(|s| s.quantile(0.9)),
                        p99_seconds: sketch.and_then(|s| s.quantile(0.99)),
                    },
                )
            })
            .collect();
        let mut variants: Vec<VariantCount> = totals
            .variants
            .iter()
            .map(|(steps, count)| VariantCount {
                steps: steps.clone(),
                count: *count,
            })
            .collect();
        variants.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.steps.cmp(&b.steps)));
        variants.truncate(10);
        ProcessSummary {
            actions: totals.actions,
            unmatched: totals.unmatched,
            no_instance_key: totals.no_instance_key,
            duplicates: totals.duplicates,
            after_end: totals.after_end,
            instances: InstanceCounts {
                started: totals.started,
                completed: totals.completed,
                abandoned: totals.abandoned,
                in_progress: totals.started - totals.completed - totals.abandoned,
            },
            steps,
            returns: totals.returns.clone(),
            skipped_steps: totals.skipped_steps,
            outcomes: totals.outcomes.clone(),
            outcome_rates: totals
                .outcomes
                .iter()
                .map(|(name, n)| (name.clone(), *n as f64 / totals.started.max(1) as f64))
                .collect(),
            sla_breaches: totals.sla_breaches.clone(),
            variants,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActionCounts {
    pub complete: u64,
    pub incomplete: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StateSummary {
    /// The hot tier's budget the run had (`--max-hot-mib`, or a share of the memory limit).
    #[serde(default)]
    pub hot_budget_bytes: u64,
    pub peak_hot_bytes: u64,
    pub peak_hot_entries: u64,
    /// The most the state's files held on disk (write-ahead log and SST files), as seen at
    /// each checkpoint once the one before it was written.
    #[serde(default)]
    pub peak_disk_bytes: u64,
    /// SST files at the end of the run.
    pub sst_bytes: u64,
    pub actions_persisted: u64,
    /// Share of actions whose state never touched RocksDB.
    pub never_persisted_share: f64,
}

struct Outputs {
    actions: JsonLinesFile,
    incomplete: JsonLinesFile,
    dead_letters: JsonLinesFile,
    buf: Vec<u8>,
    /// Where the values of the record in `buf` lie, for its classification.
    layout: RecordLayout,
    error: Option<std::io::Error>,
    /// Actions (complete and incomplete), classified, not yet given to the process stage.
    for_process: ClassifiedBatch,
    /// Classifies actions for the process stage; `None` with `--join-only`.
    classifier: Option<Classifier>,
}

/// Classified actions gathered before they go to the process thread.
pub(crate) const PROCESS_BATCH: usize = 64 << 10;

/// The process stage's outputs (on its thread).
struct ProcessSinks {
    metrics: JsonLinesFile,
    alerts: JsonLinesFile,
    error: Option<std::io::Error>,
}

impl ProcessOutput for ProcessSinks {
    fn metric(&mut self, record: &[u8]) {
        Outputs::write(&mut self.metrics, record, &mut self.error);
    }
    fn alert(&mut self, record: &[u8]) {
        Outputs::write(&mut self.alerts, record, &mut self.error);
    }
}

impl StageOutput for ProcessSinks {
    /// The lengths of metrics.jsonl and alerts.jsonl.
    type Flushed = [(&'static str, u64); 2];

    fn flush(&mut self) -> Result<Self::Flushed, String> {
        let lengths = (|| {
            if let Some(e) = self.error.take() {
                return Err(e);
            }
            Ok([
                ("metrics", self.metrics.flush()?),
                ("alerts", self.alerts.flush()?),
            ])
        })();
        lengths.map_err(|e| format!("writing metrics or alerts: {e}"))
    }
}

impl Outputs {
    fn write(file: &mut JsonLinesFile, buf: &[u8], error: &mut Option<std::io::Error>) {
        if error.is_none()
            && let Err(e) = file.write(buf)
        {
            *error = Some(e);
        }
    }

    fn dead_letter(
        &mut self,
        source: &str,
        file: Option<&Path>,
        position: u64,
        line: u64,
        raw: &[u8],
        rejection: &Rejection,
    ) {
        self.buf.clear();
        write_dead_letter(
            &mut self.buf,
            source,
            &Origin::File {
                path: file,
                offset: position,
                line,
            },
            raw,
            rejection,
        );
        Self::write(&mut self.dead_letters, &self.buf, &mut self.error);
    }

    /// Classifies the action record in `buf`, written with `layout`, for the process stage.
    fn classify(&mut self) {
        let Some(classifier) = &self.classifier else {
            return;
        };
        let record = std::str::from_utf8(&self.buf)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                classifier
                    .add(text.trim_end(), Some(&self.layout), &mut self.for_process)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = record
            && self.error.is_none()
        {
            self.error = Some(std::io::Error::other(format!("classifying an action: {e}")));
        }
    }

    /// Flushes the join's outputs; their lengths.
    fn flush(&mut self) -> std::io::Result<BTreeMap<String, u64>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        Ok(BTreeMap::from([
            ("actions".to_string(), self.actions.flush()?),
            ("incomplete".to_string(), self.incomplete.flush()?),
            ("deadLetters".to_string(), self.dead_letters.flush()?),
        ]))
    }

    /// Gives the actions the join emitted to the process stage: a batch once it is big
    /// enough, everything when `all`.
    fn feed_process(
        &mut self,
        process: &mut ProcessThread<ProcessSinks>,
        all: bool,
    ) -> anyhow::Result<()> {
        if all || self.for_process.len() >= PROCESS_BATCH {
            process.send(&mut self.for_process)?;
        }
        Ok(())
    }
}

impl JoinOutput for Outputs {
    fn action(
        &mut self,
        key_group: u16,
        tracking_number: &str,
        parts: &Parts<'_>,
        completed_at: i64,
    ) {
        self.buf.clear();
        write_action(
            &mut self.buf,
            &mut self.layout,
            key_group,
            tracking_number,
            parts,
            completed_at,
        );
        Self::write(&mut self.actions, &self.buf, &mut self.error);
        self.classify();
    }

    fn incomplete(
        &mut self,
        key_group: u16,
        tracking_number: &str,
        parts: &Parts<'_>,
        missing: u8,
    ) {
        self.buf.clear();
        write_incomplete(
            &mut self.buf,
            &mut self.layout,
            key_group,
            tracking_number,
            parts,
            missing,
        );
        Self::write(&mut self.incomplete, &self.buf, &mut self.error);
        self.classify();
    }
}

/// The files a path names: itself, or the `*.yaml`/`*.yml` files under a directory (sorted,
/// recursively). Hidden entries are skipped: a mounted ConfigMap's `..data` and timestamped
/// directories hold the same files its visible links point to.
pub fn collect_yaml(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            let hidden = entry
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if entry.is_dir() || entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                collect_yaml(&entry, files)?;
            }
        }
    } else {
        files.push(path.to_path_buf());
    }
    Ok(())
}

/// Loads the pipeline named (or the only one) and the definitions it uses from the files,
/// validated exactly as the operator validates them.
pub fn load_pipeline(
    resources: &[PathBuf],
    name: Option<&str>,
) -> anyhow::Result<(JoinPipeline, Vec<(String, ProcessDefinitionSpec)>)> {
    let mut files = Vec::new();
    for path in resources {
        collect_yaml(path, &mut files).with_context(|| format!("reading {}", path.display()))?;
    }
    let mut all = Vec::new();
    for path in &files {
        all.extend(read_file(path)?);
    }
    let pipelines: Vec<&JoinPipeline> = all
        .iter()
        .filter_map(|r| match r {
            Resource::JoinPipeline(jp) => Some(jp.as_ref()),
            Resource::ProcessDefinition(_) => None,
        })
        .filter(|jp| name.is_none_or(|n| jp.metadata.name.as_deref() == Some(n)))
        .collect();
    let pipeline = match pipelines.as_slice() {
        [one] => (*one).clone(),
        [] => bail!(
            "no JoinPipeline{} in the given files",
            name.map(|n| format!(" named {n}")).unwrap_or_default()
        ),
        _ => bail!("several JoinPipelines in the given files: choose one with --pipeline"),
    };
    let processes: Vec<(String, ProcessDefinitionSpec)> = all
        .iter()
        .filter_map(|r| match r {
            Resource::ProcessDefinition(pd) if weft_crds::manifest::uses(&pipeline, pd) => {
                Some((r.name().to_string(), pd.spec.clone()))
            }
            _ => None,
        })
        .collect();
    for wanted in &pipeline.spec.processes.names {
        if !processes.iter().any(|(n, _)| n == wanted) {
            bail!(
                "JoinPipeline {} uses ProcessDefinition {wanted}, which is not in the given files",
                pipeline.metadata.name.as_deref().unwrap_or_default()
            );
        }
    }
    let refs: Vec<(&str, &ProcessDefinitionSpec)> =
        processes.iter().map(|(n, p)| (n.as_str(), p)).collect();
    if let Err(errors) = pipeline.spec.validate_with_processes(&refs) {
        bail!(
            "JoinPipeline {} is invalid: {errors}",
            pipeline.metadata.name.as_deref().unwrap_or_default()
        );
    }
    Ok((pipeline, processes))
}

/// Runs local mode to the end of its inputs and returns the summary (also in summary.json).
pub fn run(options: &LocalOptions) -> anyhow::Result<Summary> {
    run_leaving(options).map(|(summary, _)| summary)
}

/// What a run holds in memory at its end: the state of its join and process stages.
pub struct Leftovers {
    _join: JoinEngine,
    _process: ProcessEngine,
}

/// [`run`], handing back its state instead of freeing it: a process that exits right after
/// leaves it to the exit (`std::mem::forget`), where the kernel takes the memory back whole.
/// Freeing its allocations one by one (an instance's actions, each window's aggregates) took
/// ~1% of a run's CPU.
pub fn run_leaving(options: &LocalOptions) -> anyhow::Result<(Summary, Leftovers)> {
    let started = Instant::now();
    let (pipeline, processes) = load_pipeline(&options.resources, options.pipeline.as_deref())?;
    let process_plans = if options.join_only {
        Vec::new()
    } else {
        compile_plans(&processes)?
    };
    let step_names = step_names(&process_plans);
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    let spec = &pipeline.spec;

    let plans: Vec<SourcePlan> = spec.sources.iter().map(SourcePlan::new).collect();
    let mut bindings: Vec<(usize, Option<PathBuf>)> = Vec::new();
    for input in &options.inputs {
        let index = match &input.source {
            Some(source) => spec
                .sources
                .iter()
                .position(|s| &s.name == source)
                .with_context(|| {
                    format!("--input {source}=...: the pipeline has no source {source}")
                })?,
            None if spec.sources.len() == 1 => 0,
            None => bail!(
                "the pipeline has {} sources: name the source of each input as <source>=<file>",
                spec.sources.len()
            ),
        };
        bindings.push((index, input.path.clone()));
    }
    if bindings.is_empty() {
        bail!("no input: give --input <source>=<file> (or - for standard input), or --generate");
    }
    if bindings.iter().filter(|(_, p)| p.is_none()).count() > 1 {
        bail!("only one input can be standard input");
    }

    let state_dir = options.output.join("state");
    if options.fresh {
        for file in [
            "actions.jsonl",
            "incomplete.jsonl",
            "dead-letters.jsonl",
            "metrics.jsonl",
            "alerts.jsonl",
            "metrics.prom",
            "summary.json",
        ] {
            let _ = std::fs::remove_file(options.output.join(file));
        }
        if state_dir.exists() {
            std::fs::remove_dir_all(&state_dir)
                .with_context(|| format!("removing {}", state_dir.display()))?;
        }
    }
    std::fs::create_dir_all(&options.output)
        .with_context(|| format!("creating {}", options.output.display()))?;
    let store = Store::open(&state_dir)
        .with_context(|| format!("opening state in {}", state_dir.display()))?;
    let mut checkpoint: Checkpoint = match store.checkpoint()? {
        Some(bytes) => serde_json::from_slice(&bytes).context("reading the checkpoint record")?,
        None => Checkpoint::default(),
    };
    let resumed = checkpoint.inputs.iter().any(|p| p.offset > 0) || checkpoint.finished;
    if resumed {
        checkpoint.counters.restarts += 1;
        if checkpoint.join_only != options.join_only {
            bail!(
                "{} holds a checkpoint of a run {} --join-only: resume it the same way, or use --fresh",
                options.output.display(),
                if checkpoint.join_only {
                    "with"
                } else {
                    "without"
                }
            );
        }
        if bindings.iter().any(|(_, p)| p.is_none()) && !checkpoint.finished {
            bail!(
                "{} holds a checkpoint of an earlier run, and standard input cannot be resumed: use --fresh",
                options.output.display()
            );
        }
        if checkpoint.inputs.len() != bindings.len() {
            bail!(
                "{} holds a checkpoint for {} inputs, not {}: use --fresh",
                options.output.display(),
                checkpoint.inputs.len(),
                bindings.len()
            );
        }
    }
    checkpoint
        .inputs
        .resize(bindings.len(), Position::default());

    // Each output cut back to the length the checkpoint recorded (0 for a fresh run).
    let open = |file: &str, key: &str| {
        JsonLinesFile::open(
            &options.output.join(file),
            checkpoint.outputs.get(key).copied().unwrap_or(0),
        )
    };
    let mut outputs = Outputs {
        actions: open("actions.jsonl", "actions")?,
        incomplete: open("incomplete.jsonl", "incomplete")?,
        dead_letters: open("dead-letters.jsonl", "deadLetters")?,
        buf: Vec::with_capacity(4096),
        layout: RecordLayout::default(),
        error: None,
        for_process: ClassifiedBatch::with_capacity(PROCESS_BATCH + 4096),
        classifier: if options.join_only {
            None
        } else {
            Some(Classifier::new(classifying_plans(&processes, &plans)?))
        },
    };
    let process_sinks = ProcessSinks {
        metrics: open("metrics.jsonl", "metrics")?,
        alerts: open("alerts.jsonl", "alerts")?,
        error: None,
    };

    let owned = KeyGroupRange {
        start: 0,
        end: spec.key_groups,
    };
    let mut engine = JoinEngine::new(JoinConfig::new(&spec.join, spec.key_groups), owned);
    engine.restore(
        &checkpoint.watermarks,
        checkpoint.join.clone(),
        &store,
        options.max_hot_bytes,
    )?;
    let mut process_engine = ProcessEngine::new(
        process_plans,
        spec.key_groups,
        owned,
        i64::try_from(spec.join.lateness.as_millis()).unwrap_or(i64::MAX / 4),
    );
    process_engine
        .restore(
            checkpoint.processes.clone(),
            &checkpoint.process_watermarks,
            store.process_instances()?,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut process = ProcessThread::start(process_engine, process_sinks)
        .context("starting the process stage")?;

    let mut readers = Vec::new();
    for ((index, path), position) in bindings.iter().zip(&checkpoint.inputs) {
        let reader = LineReader::open(path.as_deref(), position).with_context(|| {
            format!(
                "opening {}",
                path.as_ref()
                    .map_or("standard input".into(), |p| p.display().to_string())
            )
        })?;
        readers.push((*index, reader));
    }

    let interval = options
        .checkpoint_interval
        .unwrap_or_else(|| spec.checkpoint_interval.std());
    let interactive = options.progress && std::io::stderr().is_terminal();
    let mut last_checkpoint = Instant::now();
    let mut last_progress = Instant::now();
    let mut counters = checkpoint.counters.clone();
    let mut cursor = checkpoint.cursor;
    let previous_seconds = counters.seconds;
    let mut since_check = 0u32;

    let do_checkpoint = |engine: &mut JoinEngine,
                         process: &mut ProcessThread<ProcessSinks>,
                         outputs: &mut Outputs,
                         readers: &[(usize, LineReader)],
                         cursor: usize,
                         counters: &mut Counters,
                         finished: bool,
                         evict: Evict|
     -> anyhow::Result<()> {
        counters.checkpoints += 1;
        counters.seconds = previous_seconds + started.elapsed().as_secs_f64();
        // The checkpoint before is written by now (this one's write would wait for it
        // anyway): the state's files hold what it left, the most they hold between two.
        store.settle()?;
        counters.peak_disk_bytes = counters.peak_disk_bytes.max(store.disk_bytes());
        // The process stage takes its part after every action sent before, while the join
        // takes its own.
        outputs.feed_process(process, true)?;
        // A finished run is never resumed (a rerun only writes its summary again, from the
        // record's counts): its instances are deleted, not written.
        let stage = match finished {
            true => process.last_checkpoint()?,
            false => process.checkpoint()?,
        };
        let mut lengths = outputs.flush().context("writing outputs")?;
        // After the end of input every entry has resolved and every marker expired.
        let clear_join = finished && engine.holds_nothing();
        let changes = engine.checkpoint_changes(evict);
        let stage = stage.wait(process)?;
        lengths.extend(stage.flushed.map(|(name, len)| (name.to_string(), len)));
        let record = Checkpoint {
            inputs: readers.iter().map(|(_, r)| r.position().clone()).collect(),
            cursor,
            outputs: lengths,
            watermarks: engine.watermarks().to_vec(),
            join: engine.stats.clone(),
            counters: counters.clone(),
            finished,
            processes: stage.meta,
            process_watermarks: stage.watermarks,
            join_only: options.join_only,
        };
        // Written while the next events are read (see `Store`).
        store.write_checkpoint(
            changes,
            stage.changes,
            serde_json::to_vec(&record)?,
            clear_join,
        )?;
        Ok(())
    };

    if !checkpoint.finished {
        let mut exhausted = vec![false; readers.len()];
        // Each message's projected fields, until the join copies them or writes them out.
        let mut fields = String::new();
        while exhausted.iter().any(|e| !e) {
            let i = cursor % readers.len();
            cursor = (cursor + 1) % readers.len();
            if exhausted[i] {
                continue;
            }
            let (index, reader) = &mut readers[i];
            let plan = &plans[*index];
            let Some((raw, offset, line_no)) = reader.next_line().context("reading input")? else {
                exhausted[i] = true;
                continue;
            };
            counters.events += 1;
            let rejection = match plan.extract(raw, &mut fields) {
                Ok(Extracted::Message(msg)) => match engine.process(msg, &store, &mut outputs) {
                    Ok(()) => {
                        outputs.feed_process(&mut process, false)?;
                        None
                    }
                    Err(JoinError::Rejected(r)) => Some(r),
                    Err(e) => return Err(e.into()),
                },
                Ok(Extracted::Filtered) => {
                    counters.filtered += 1;
                    None
                }
                Err(r) => Some(r),
            };
            if let Some(r) = rejection {
                *counters
                    .dead_letters
                    .entry(r.reason.as_str().to_string())
                    .or_default() += 1;
                // The input paths, not the reader (which lends `raw`): no clone per line.
                outputs.dead_letter(
                    &plan.name,
                    bindings[i].1.as_deref(),
                    offset,
                    line_no,
                    raw,
                    &r,
                );
            }

            since_check += 1;
            if since_check >= 4096 {
                since_check = 0;
                counters.note_peaks(&engine);
                let over_budget = engine.hot_bytes() > options.max_hot_bytes;
                // The process stage changes many aggregates per action; a checkpoint writes
                // them in one batch, which RocksDB holds whole in memory (and its memtable
                // too), so so many changes make a checkpoint due.
                let due = last_checkpoint.elapsed() >= interval
                    || process.unsaved() >= PROCESS_CHANGES_PER_CHECKPOINT;
                if over_budget || due {
                    let mut evict = Evict::Nothing;
                    loop {
                        let before = engine.hot_entries();
                        do_checkpoint(
                            &mut engine,
                            &mut process,
                            &mut outputs,
                            &readers,
                            cursor,
                            &mut counters,
                            false,
                            evict,
                        )?;
                        let evicted = before.saturating_sub(engine.hot_entries());
                        match evict.next(evicted, engine.hot_bytes(), options.max_hot_bytes) {
                            Some(next) => evict = next,
                            None => break,
                        }
                    }
                    last_checkpoint = Instant::now();
                }
                if interactive && last_progress.elapsed() >= Duration::from_secs(1) {
                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                    eprint!(
                        "\r{} events, {:.0}/s, {} pending, {} complete, {} incomplete   ",
                        counters.events,
                        counters.events as f64 / secs,
                        engine.hot_pending(),
                        engine.stats.complete,
                        engine.stats.incomplete
                    );
                    last_progress = Instant::now();
                }
            }
        }
        // End of input: time runs out for everything still pending.
        engine.finish_and_forget_store(&store, &mut outputs)?;
        outputs.feed_process(&mut process, true)?;
        process.finish_input()?;
        counters.note_peaks(&engine);
        do_checkpoint(
            &mut engine,
            &mut process,
            &mut outputs,
            &readers,
            cursor,
            &mut counters,
            true,
            Evict::Everything { max: usize::MAX },
        )?;
        store.settle()?;
        if interactive {
            eprintln!();
        }
    }
    let (process_engine, _) = process.close()?;
    // The run's time ends here, after the last checkpoint is written and the process stage
    // has emitted its last windows (a checkpoint record holds the time up to its start).
    counters.seconds = previous_seconds + started.elapsed().as_secs_f64();

    let summary = Summary::build(
        name,
        &SummaryCounts {
            events: counters.events,
            filtered: counters.filtered,
            dead_letters_by_reason: counters.dead_letters.clone(),
            seconds: counters.seconds,
            checkpoints: counters.checkpoints,
            restarts: counters.restarts,
            peak_hot_bytes: counters.peak_hot_bytes,
            peak_hot_entries: counters.peak_hot_entries,
            peak_disk_bytes: counters.peak_disk_bytes,
            sst_bytes: store.sst_bytes(),
            hot_budget_bytes: options.max_hot_bytes as u64,
        },
        &engine.stats,
        &step_names,
        &process_engine,
    );
    std::fs::write(
        options.output.join("metrics.prom"),
        process_exposition(&step_names, &process_engine),
    )
    .context("writing metrics.prom")?;
    let tmp = options.output.join("summary.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&summary)?).context("writing summary.json")?;
    std::fs::rename(&tmp, options.output.join("summary.json")).context("writing summary.json")?;
    Ok((
        summary,
        Leftovers {
            _join: engine,
            _process: process_engine,
        },
    ))
}
