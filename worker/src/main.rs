//! `weft-worker`: the Weft stream worker.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_crds::manifest::{read_file, validate_set};
use weft_worker::generate::{GenerateOptions, generate_file};
use weft_worker::local::{InputSpec, LocalOptions};

#[derive(Parser)]
#[command(name = "weft-worker", version, about = "Weft stream worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate ProcessDefinition and JoinPipeline files (or directories of *.yaml) the way the
    /// operator and the worker do; exits 1 and names every bad field when one is invalid.
    Validate {
        /// Files or directories.
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run a JoinPipeline locally over JSON-lines files or stdin, with a local RocksDB:
    /// writes actions.jsonl, incomplete.jsonl, dead-letters.jsonl and summary.json to --output.
    /// Rerun with the same arguments after a crash to resume from the last checkpoint.
    Local {
        /// Resource files (as for kubectl apply): the JoinPipeline and its ProcessDefinitions.
        #[arg(short = 'f', long = "filename", required = true)]
        resources: Vec<PathBuf>,
        /// Which JoinPipeline, when the files hold several.
        #[arg(long)]
        pipeline: Option<String>,
        /// `<source>=<file>`, `<source>=-` for stdin, or just the file when the pipeline has one source.
        #[arg(short, long = "input")]
        inputs: Vec<InputSpec>,
        /// Generate this many actions of credit-card traffic into <output>/generated.jsonl and use it as input.
        #[arg(long)]
        generate: Option<u64>,
        /// Seed for --generate.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// Checkpoint interval, overriding the pipeline's checkpointInterval (e.g. 500ms, 10s).
        #[arg(long)]
        checkpoint_interval: Option<weft_crds::Duration>,
        /// Memory budget of the join's in-memory state, MiB; beyond it state moves to RocksDB.
        #[arg(long, default_value_t = 256)]
        max_hot_mib: usize,
        /// Discard the state and outputs of an earlier run in --output.
        #[arg(long)]
        fresh: bool,
        /// No progress line on the terminal.
        #[arg(long)]
        quiet: bool,
        /// Run the join only, without the process stage (no metrics, alerts or processes
        /// section). A run resumes only the way it started.
        #[arg(long)]
        join_only: bool,
    },
    /// Check ProcessDefinitions against recorded events: runs the pipeline over the inputs and
    /// reports how many actions each step matched, what the unmatched ones look like,
    /// instances that skip steps or go back, variants and step durations. Exits non-zero only
    /// when a definition is invalid.
    Replay {
        /// Resource files: the ProcessDefinitions and the JoinPipeline.
        #[arg(short = 'f', long = "filename", required = true)]
        resources: Vec<PathBuf>,
        /// Which JoinPipeline, when the files hold several.
        #[arg(long)]
        pipeline: Option<String>,
        /// `<source>=<file>`, or just the file when the pipeline has one source.
        #[arg(short, long = "input", required = true)]
        inputs: Vec<InputSpec>,
        /// `text` for people, `json` for machines.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
        /// Keep the run's outputs (actions, metrics ...) here instead of a temporary directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Write generated credit-card traffic (one JSON line per message, in arrival order) and
    /// <file>.truth.json with the counts a correct run reports.
    Generate {
        #[arg(long)]
        actions: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Actions per second of event time.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// The lateness bound the traffic must respect.
        #[arg(long, default_value = "1h")]
        lateness: weft_crds::Duration,
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { paths } => validate(&paths),
        Command::Local {
            resources,
            pipeline,
            mut inputs,
            generate,
            seed,
            output,
            checkpoint_interval,
            max_hot_mib,
            fresh,
            quiet,
            join_only,
        } => {
            if let Some(actions) = generate {
                std::fs::create_dir_all(&output)
                    .with_context(|| format!("creating {}", output.display()))?;
                let file = output.join("generated.jsonl");
                if fresh || !file.exists() {
                    let (jp, _) =
                        weft_worker::local::load_pipeline(&resources, pipeline.as_deref())?;
                    let lateness_ms =
                        i64::try_from(jp.spec.join.lateness.as_millis()).unwrap_or(i64::MAX);
                    let truth = generate_file(
                        &GenerateOptions {
                            actions,
                            seed,
                            lateness_ms,
                            ..GenerateOptions::default()
                        },
                        &file,
                    )
                    .with_context(|| format!("writing {}", file.display()))?;
                    eprintln!(
                        "generated {} lines ({} actions) into {}",
                        truth.lines,
                        truth.actions,
                        file.display()
                    );
                }
                inputs.push(InputSpec {
                    source: None,
                    path: Some(file),
                });
            }
            let summary = weft_worker::local::run(&LocalOptions {
                resources,
                pipeline,
                inputs,
                output: output.clone(),
                checkpoint_interval: checkpoint_interval.map(weft_crds::Duration::std),
                max_hot_bytes: max_hot_mib.saturating_mul(1 << 20),
                fresh,
                progress: !quiet,
                join_only,
            })?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            eprintln!("outputs in {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            resources,
            pipeline,
            inputs,
            format,
            keep,
        } => {
            let report = weft_worker::replay::run(&weft_worker::replay::ReplayOptions {
                resources,
                pipeline,
                inputs,
                work_dir: keep,
            })?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", weft_worker::replay::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            actions,
            seed,
            rate,
            lateness,
            output,
        } => {
            let lateness_ms = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
            let truth = generate_file(
                &GenerateOptions {
                    actions,
                    seed,
                    rate,
                    lateness_ms,
                    ..GenerateOptions::default()
                },
                &output,
            )
            .with_context(|| format!("writing {}", output.display()))?;
            println!("{}", serde_json::to_string_pretty(&truth)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for path in paths {
        collect_yaml(path, &mut files).with_context(|| format!("reading {}", path.display()))?;
    }
    let mut resources = Vec::new();
    for file in &files {
        resources.extend(read_file(file)?);
    }
    let failures = validate_set(&resources);
    for resource in &resources {
        let id = resource.id();
        match failures.iter().find(|(failed, _)| *failed == id) {
            None => println!("{id}: valid"),
            Some((_, errors)) => {
                for error in errors.iter() {
                    println!("{id}: invalid: {error}");
                }
            }
        }
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn collect_yaml(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() || entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                collect_yaml(&entry, files)?;
            }
        }
    } else {
        files.push(path.to_path_buf());
    }
    Ok(())
}
