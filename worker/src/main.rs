//! `weft-worker`: the Weft stream worker.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_crds::manifest::{read_file, validate_set};
use weft_worker::generate::{GenerateOptions, generate_file};
use weft_worker::local::{InputSpec, LocalOptions};
use weft_worker::state::budget;

/// mimalloc instead of glibc's malloc: the stages allocate and free many small buffers on
/// several threads, and with glibc's per-thread arenas that cost up to a seventh of a run's
/// CPU (local join at 500k actions: 15% less CPU; over Kafka, all three stages: 15% less;
/// docs/benchmarks.md), for 20-70 MB more peak RSS. Built with `no_thp`: mimalloc otherwise
/// asks for transparent huge pages on its arena, and on the VM we measure on (which hands free
/// 2 MiB blocks back to its host) a fresh huge page costs several times the system time of
/// the same memory in 4 KiB pages (join + process at 500k actions: 0.8-1.1 vs 0.2-0.3 s of
/// system time, for ~3% more user time; docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Default: a quarter of --memory-limit-mib, else of the cgroup's memory limit, else of
        /// the machine's memory, within 64 MiB..4 GiB.
        #[arg(long)]
        max_hot_mib: Option<usize>,
        /// The memory this run may use, MiB, for the default --max-hot-mib.
        #[arg(long, env = "WEFT_MEMORY_LIMIT_MIB")]
        memory_limit_mib: Option<u64>,
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
        /// `embedded`: run the real Kafka stages against an in-process Kafka (librdkafka's
        /// mock cluster): the inputs are produced to the source topics, the outputs read back.
        #[arg(long, value_parser = ["embedded"])]
        kafka: Option<String>,
    },
    /// Run the worker over Kafka: the process a StatefulSet pod runs. Reads the rendered
    /// pipeline (the JoinPipeline and its ProcessDefinitions) from the mounted files, serves
    /// the admin API, and stops gracefully on SIGTERM.
    Run(RunArgs),
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

#[derive(clap::Args)]
struct RunArgs {
    /// Resource files or directories (the operator mounts the rendered pipeline).
    #[arg(
        short = 'f',
        long = "filename",
        env = "WEFT_CONFIG",
        default_value = "/etc/weft"
    )]
    resources: Vec<PathBuf>,
    /// Which JoinPipeline, when the files hold several.
    #[arg(long, env = "WEFT_PIPELINE")]
    pipeline: Option<String>,
    /// The pipeline's namespace (part of the internal topic names).
    #[arg(long, env = "WEFT_NAMESPACE", default_value = "default")]
    namespace: String,
    /// This worker's ordinal; by default the number at the end of the pod name (HOSTNAME).
    #[arg(long, env = "WEFT_ORDINAL")]
    ordinal: Option<u32>,
    /// Number of workers of the pipeline.
    #[arg(long, env = "WEFT_REPLICAS", default_value_t = 1)]
    replicas: u32,
    /// Overrides the pipeline's kafka.bootstrapServers.
    #[arg(long, env = "WEFT_BOOTSTRAP_SERVERS")]
    bootstrap_servers: Option<String>,
    /// RocksDB state directory (the pod's volume).
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// Admin API address: /healthz, /readyz, /metrics, /status.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: std::net::SocketAddr,
    /// File holding the bearer token of the mutating admin endpoints (a Secret).
    #[arg(long, env = "WEFT_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Overrides the pipeline's checkpointInterval.
    #[arg(long)]
    checkpoint_interval: Option<weft_crds::Duration>,
    /// Memory budget of the join's in-memory state, MiB. Default: a quarter of
    /// --memory-limit-mib, else of the cgroup's memory limit, else of the machine's memory,
    /// within 64 MiB..4 GiB.
    #[arg(long, env = "WEFT_MAX_HOT_MIB")]
    max_hot_mib: Option<usize>,
    /// The container's memory limit, MiB (the operator sets it from `limits.memory`), for the
    /// default --max-hot-mib.
    #[arg(long, env = "WEFT_MEMORY_LIMIT_MIB")]
    memory_limit_mib: Option<u64>,
    /// Read the inputs up to their current ends, let time run out, and exit (a backfill).
    #[arg(long)]
    bounded: bool,
    /// Do not create missing internal topics.
    #[arg(long)]
    no_create_topics: bool,
    /// Log format; `auto` is human on a terminal, JSON otherwise.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "auto", value_parser = ["auto", "json", "text"])]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run(args) => weft_crds::logging::init(&args.log_format),
        _ => weft_crds::logging::init("text"),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The join's hot-tier budget in bytes: `--max-hot-mib` when given, else a share of the
/// memory limit (see `weft_worker::state::budget`).
fn hot_budget(max_hot_mib: Option<usize>, memory_limit_mib: Option<u64>) -> usize {
    if let Some(mib) = max_hot_mib {
        return mib.saturating_mul(1 << 20);
    }
    let (bytes, limit) = budget::default_hot_budget(memory_limit_mib);
    match limit {
        Some(limit) => tracing::info!(
            hot_budget_mib = bytes >> 20,
            memory_limit_mib = limit.bytes >> 20,
            source = ?limit.source,
            "hot-tier budget: a quarter of the memory limit"
        ),
        None => tracing::warn!(
            hot_budget_mib = bytes >> 20,
            "no memory limit could be read: the fallback hot-tier budget"
        ),
    }
    bytes
}

/// A line to standard output. A reader that went away (`| head`) ends nothing but the output:
/// the run's results are in its files.
fn say(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to standard output"),
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
            memory_limit_mib,
            fresh,
            quiet,
            join_only,
            kafka,
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
            let options = LocalOptions {
                resources,
                pipeline,
                inputs,
                output: output.clone(),
                checkpoint_interval: checkpoint_interval.map(weft_crds::Duration::std),
                max_hot_bytes: hot_budget(max_hot_mib, memory_limit_mib),
                fresh,
                progress: !quiet,
                join_only,
            };
            let summary = if kafka.is_some() {
                if join_only {
                    anyhow::bail!("--join-only is not available with --kafka");
                }
                weft_worker::run::embedded::run(&options)?
            } else {
                let (summary, state) = weft_worker::local::run_leaving(&options)?;
                // The process exits next: see `run_leaving`.
                std::mem::forget(state);
                summary
            };
            say(&serde_json::to_string_pretty(&summary)?)?;
            eprintln!("outputs in {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_worker(args),
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
                say(&serde_json::to_string_pretty(&report)?)?;
            } else {
                say(weft_worker::replay::render(&report).trim_end())?;
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
            say(&serde_json::to_string_pretty(&truth)?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for path in paths {
        weft_worker::local::collect_yaml(path, &mut files)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    let mut resources = Vec::new();
    for file in &files {
        resources.extend(read_file(file)?);
    }
    let failures = validate_set(&resources);
    for resource in &resources {
        let id = resource.id();
        match failures.iter().find(|(failed, _)| *failed == id) {
            None => say(&format!("{id}: valid"))?,
            Some((_, errors)) => {
                for error in errors.iter() {
                    say(&format!("{id}: invalid: {error}"))?;
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

/// The pod's ordinal: the number after the last `-` of the pod name.
fn ordinal_from_hostname() -> Option<u32> {
    let host = std::env::var("HOSTNAME").ok()?;
    host.rsplit_once('-')?.1.parse().ok()
}

fn run_worker(args: RunArgs) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    let (pipeline, processes) =
        weft_worker::local::load_pipeline(&args.resources, args.pipeline.as_deref())?;
    let ordinal = match args.ordinal.or_else(ordinal_from_hostname) {
        Some(o) => o,
        None => anyhow::bail!(
            "no ordinal: give --ordinal, or run in a StatefulSet pod (HOSTNAME ends in -N)"
        ),
    };
    let token = match &args.admin_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let shared = Arc::new(weft_worker::admin::Shared::new(token));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.admin_addr))
        .with_context(|| format!("binding the admin API to {}", args.admin_addr))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(weft_worker::admin::serve(listener, shared.clone(), async {
        let _ = done_rx.await;
    }));
    {
        let shared = shared.clone();
        runtime.spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stop requested: flushing and checkpointing");
            shared.stop.store(true, Ordering::Relaxed);
        });
    }
    let assignment = weft_worker::run::read_assignment(&args.state_dir)?;
    let options = weft_worker::run::RunOptions {
        pipeline,
        processes,
        config: args.resources.clone(),
        pipeline_name: args.pipeline.clone(),
        namespace: args.namespace,
        ordinal,
        replicas: args.replicas,
        assignment,
        bootstrap_servers: args.bootstrap_servers,
        state_dir: args.state_dir,
        checkpoint_interval: args.checkpoint_interval.map(weft_crds::Duration::std),
        max_hot_bytes: hot_budget(args.max_hot_mib, args.memory_limit_mib),
        bounded: args.bounded,
        create_topics: !args.no_create_topics,
        abort_after_events: None,
    };
    let ending = weft_worker::run::run(&options, &shared);
    let _ = done_tx.send(());
    let _ = runtime.block_on(server);
    match ending? {
        weft_worker::run::Ending::Finished(summary) => {
            say(&serde_json::to_string_pretty(&summary)?)?;
        }
        weft_worker::run::Ending::Stopped => tracing::info!("stopped after a final checkpoint"),
        weft_worker::run::Ending::Reassigned => {
            tracing::info!("reassigned: exiting to start again with the new key groups");
        }
        weft_worker::run::Ending::Aborted => {}
    }
    Ok(ExitCode::SUCCESS)
}
