//! Conformance replay: runs a pipeline and its ProcessDefinitions over recorded events and
//! reports, for the business user who wrote the definition, how well it fits the data: how
//! many actions each step matched, what the unmatched ones look like (examples and their
//! most common field values: a missing step shows up there), instances that skip steps or go
//! back, the variants and the step durations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::local::{InputSpec, LocalOptions, ProcessSummary, Summary, load_pipeline};
use crate::process::instance::{Applied, Instance};
use crate::process::plan::ProcessPlan;

/// Examples shown per finding.
const EXAMPLES: usize = 3;
/// Most common values shown per field.
const TOP_VALUES: usize = 5;

pub struct ReplayOptions {
    pub resources: Vec<PathBuf>,
    pub pipeline: Option<String>,
    pub inputs: Vec<InputSpec>,
    /// Where the run's state and outputs go (a fresh temporary directory when `None`).
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub pipeline: String,
    pub events: u64,
    pub actions: u64,
    pub incomplete_actions: u64,
    pub dead_letters: u64,
    pub processes: BTreeMap<String, ProcessReport>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessReport {
    /// Actions per step, in the definition's order.
    pub steps: Vec<StepMatches>,
    pub unmatched: Unmatched,
    /// Instances whose first step is not the definition's first, or that jump over a step.
    pub skipping_steps: Finding,
    /// Instances that go back to an earlier step.
    pub going_back: Finding,
    pub summary: ProcessSummary,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepMatches {
    pub step: String,
    pub actions: u64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unmatched {
    pub actions: u64,
    pub examples: Vec<Value>,
    /// Per field (`/request/path`), its most common values among the unmatched actions.
    pub common_values: BTreeMap<String, Vec<ValueCount>>,
}

#[derive(Debug, Serialize)]
pub struct ValueCount {
    pub value: String,
    pub count: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Finding {
    pub instances: u64,
    /// Instance keys with their step sequences.
    pub examples: Vec<String>,
}

/// Runs the replay. An invalid definition is an error naming the field.
pub fn run(options: &ReplayOptions) -> anyhow::Result<Report> {
    let (_, processes) = load_pipeline(&options.resources, options.pipeline.as_deref())?;
    let plans = processes
        .iter()
        .map(|(name, spec)| {
            ProcessPlan::compile(name, spec)
                .map_err(|e| anyhow::anyhow!("ProcessDefinition/{name} {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let work = match &options.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("weft-replay-{}", std::process::id())),
    };
    let summary = crate::local::run(&LocalOptions {
        resources: options.resources.clone(),
        pipeline: options.pipeline.clone(),
        inputs: options.inputs.clone(),
        output: work.clone(),
        checkpoint_interval: None,
        max_hot_bytes: crate::state::budget::default_hot_budget(None).0,
        fresh: true,
        progress: false,
        join_only: false,
    });
    let report = summary.and_then(|summary| analyse(&work, &plans, summary));
    if options.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    report
}

#[derive(Default)]
struct Tally {
    per_step: Vec<u64>,
    unmatched: Unmatched,
    values: BTreeMap<String, BTreeMap<String, u64>>,
    instances: BTreeMap<String, Instance>,
}

fn analyse(dir: &Path, plans: &[ProcessPlan], summary: Summary) -> anyhow::Result<Report> {
    let mut tallies: Vec<Tally> = plans
        .iter()
        .map(|p| Tally {
            per_step: vec![0; p.steps.len()],
            ..Tally::default()
        })
        .collect();
    for file in ["actions.jsonl", "incomplete.jsonl"] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            for (plan, tally) in plans.iter().zip(&mut tallies) {
                let c = plan.classify(line).map_err(anyhow::Error::msg)?;
                match c.step {
                    Some(step) => {
                        tally.per_step[step] += 1;
                        if let (Some(key), Some(time)) = (c.instance, c.time) {
                            let instance =
                                tally.instances.entry(key.to_string()).or_insert_with(|| {
                                    Instance {
                                        key: key.as_ref().into(),
                                        ..Instance::default()
                                    }
                                });
                            let applied = Applied {
                                time,
                                tracking: c.tracking,
                                step: step as u16,
                                outcomes: 0,
                            };
                            let at = instance.actions.partition_point(|a| *a < applied);
                            instance.actions.insert(at, applied);
                        }
                    }
                    None => {
                        tally.unmatched.actions += 1;
                        let action: Value = serde_json::from_str(line)?;
                        count_values(&action, &mut tally.values);
                        if tally.unmatched.examples.len() < EXAMPLES {
                            tally.unmatched.examples.push(action);
                        }
                    }
                }
            }
        }
    }

    let mut processes = BTreeMap::new();
    for (plan, tally) in plans.iter().zip(tallies) {
        let mut unmatched = tally.unmatched;
        unmatched.common_values = tally
            .values
            .into_iter()
            .map(|(field, counts)| {
                let mut top: Vec<ValueCount> = counts
                    .into_iter()
                    .map(|(value, count)| ValueCount { value, count })
                    .collect();
                top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
                top.truncate(TOP_VALUES);
                (field, top)
            })
            .collect();
        let mut skipping = Finding::default();
        let mut going_back = Finding::default();
        for instance in tally.instances.values() {
            let visits = instance.visits(&plan.steps);
            let skips = visits.first().is_some_and(|v| v.step > 0)
                || visits.windows(2).any(|w| w[1].step > w[0].step + 1);
            let back = visits.windows(2).any(|w| w[1].step < w[0].step);
            for (flag, finding) in [(skips, &mut skipping), (back, &mut going_back)] {
                if flag {
                    finding.instances += 1;
                    if finding.examples.len() < EXAMPLES {
                        finding.examples.push(format!(
                            "{}: {}",
                            instance.key,
                            instance.variant(&plan.steps)
                        ));
                    }
                }
            }
        }
        let process_summary = summary
            .processes
            .get(&plan.name)
            .cloned()
            .context("the run reported no results for a definition")?;
        processes.insert(
            plan.name.clone(),
            ProcessReport {
                steps: plan
                    .steps
                    .iter()
                    .zip(&tally.per_step)
                    .map(|(s, n)| StepMatches {
                        step: s.name.clone(),
                        actions: *n,
                    })
                    .collect(),
                unmatched,
                skipping_steps: skipping,
                going_back,
                summary: process_summary,
            },
        );
    }
    Ok(Report {
        pipeline: summary.pipeline,
        events: summary.events,
        actions: summary.actions.complete,
        incomplete_actions: summary.actions.incomplete,
        dead_letters: summary.dead_letters,
        processes,
    })
}

/// Counts every field value of an action's parts (`/request/path` → `/cc/apply`).
fn count_values(action: &Value, values: &mut BTreeMap<String, BTreeMap<String, u64>>) {
    for part in ["request", "response", "tracking"] {
        let Some(fields) = action.get(part).and_then(Value::as_object) else {
            continue;
        };
        for (name, value) in fields {
            if name == "eventTime" {
                continue;
            }
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            *values
                .entry(format!("/{part}/{name}"))
                .or_default()
                .entry(text)
                .or_default() += 1;
        }
    }
}

fn seconds(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s >= 3600.0 => format!("{:.1}h", s / 3600.0),
        Some(s) if s >= 60.0 => format!("{:.1}m", s / 60.0),
        Some(s) => format!("{s:.1}s"),
    }
}

/// The report as text for a person.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Pipeline {}: {} events, {} complete actions, {} incomplete, {} dead letters",
        report.pipeline,
        report.events,
        report.actions,
        report.incomplete_actions,
        report.dead_letters
    );
    for (name, p) in &report.processes {
        let total: u64 = p.steps.iter().map(|s| s.actions).sum::<u64>() + p.unmatched.actions;
        let _ = writeln!(out, "\nProcessDefinition {name}");
        let _ = writeln!(out, "  Actions per step ({total} actions):");
        for s in &p.steps {
            let d = p.summary.steps.get(&s.step);
            let _ = writeln!(
                out,
                "    {:<16} {:>9}   time in step p50 {:>7}  p90 {:>7}",
                s.step,
                s.actions,
                seconds(d.and_then(|d| d.p50_seconds)),
                seconds(d.and_then(|d| d.p90_seconds)),
            );
        }
        let share = |n: u64| {
            if total == 0 {
                0.0
            } else {
                100.0 * n as f64 / total as f64
            }
        };
        let _ = writeln!(
            out,
            "    {:<16} {:>9}   ({:.1}% of actions match no step)",
            "(no step)",
            p.unmatched.actions,
            share(p.unmatched.actions)
        );
        if p.unmatched.actions > 0 {
            let _ = writeln!(
                out,
                "  Most common values among actions that match no step:"
            );
            for (field, values) in &p.unmatched.common_values {
                let shown: Vec<String> = values
                    .iter()
                    .map(|v| format!("{} ({})", v.value, v.count))
                    .collect();
                let _ = writeln!(out, "    {field}: {}", shown.join(", "));
            }
            let _ = writeln!(out, "  Examples:");
            for e in &p.unmatched.examples {
                let _ = writeln!(out, "    {e}");
            }
        }
        let i = &p.summary.instances;
        let _ = writeln!(
            out,
            "  Instances: {} started, {} completed, {} abandoned, {} in progress",
            i.started, i.completed, i.abandoned, i.in_progress
        );
        for (label, finding) in [
            ("skip steps", &p.skipping_steps),
            ("go back to an earlier step", &p.going_back),
        ] {
            let _ = writeln!(out, "  {} instances {label}", finding.instances);
            for e in &finding.examples {
                let _ = writeln!(out, "    e.g. {e}");
            }
        }
        if !p.summary.returns.is_empty() {
            let returns: Vec<String> = p
                .summary
                .returns
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "  Returns: {}", returns.join(", "));
        }
        if !p.summary.variants.is_empty() {
            let _ = writeln!(out, "  Variants of ended instances:");
            for v in &p.summary.variants {
                let _ = writeln!(out, "    {:>7}  {}", v.count, v.steps);
            }
        }
    }
    out
}
