//! `weft-operator`: the Kubernetes operator of Weft.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Parser, Subcommand};
use futures::FutureExt;
use weft_operator::builders::Capabilities;
use weft_operator::context::{Context, Metrics};
use weft_operator::leader::Elector;

#[derive(Parser)]
#[command(name = "weft-operator", version, about = "Weft Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the Weft CRDs are installed and Established in the cluster of the current
    /// kubeconfig (or the in-cluster service account); exit 1 with the reason when not.
    CheckCrds,
    /// Run the controllers: reconcile ProcessDefinitions and JoinPipelines into workers.
    Run {
        /// Only this namespace (the default: all namespaces).
        #[arg(long, env = "WEFT_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// /metrics, /healthz and /readyz.
        #[arg(long, env = "WEFT_OPERATOR_ADDR", default_value = "0.0.0.0:8080")]
        addr: SocketAddr,
        /// Namespace of the leader-election Lease (the operator's own).
        #[arg(long, env = "POD_NAMESPACE", default_value = "weft-system")]
        lease_namespace: String,
        /// Run without leader election (one replica only).
        #[arg(long)]
        no_leader_election: bool,
        /// Log format; `auto` is human on a terminal, JSON otherwise.
        #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "auto", value_parser = ["auto", "json", "text"])]
        log_format: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run { log_format, .. } => weft_crds::logging::init(log_format),
        Command::CheckCrds => weft_crds::logging::init("text"),
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

struct Served {
    metrics: Arc<Metrics>,
    /// Connected to the API server with the CRDs installed.
    ready: AtomicBool,
}

async fn serve_metrics(State(served): State<Arc<Served>>) -> impl IntoResponse {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &served.metrics.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn readyz(State(served): State<Arc<Served>>) -> impl IntoResponse {
    if served.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckCrds => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            weft_operator::preflight::check_crds(&client).await?;
            println!("weft.dev CRDs are installed and Established");
            Ok(())
        }
        Command::Run {
            namespace,
            addr,
            lease_namespace,
            no_leader_election,
            ..
        } => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            // A missing install step is one clear message, not a stream of watch errors.
            weft_operator::preflight::check_crds(&client).await?;
            let version = client
                .apiserver_version()
                .await
                .context("reading the API server's version")?;
            let capabilities = Capabilities::of_version(&version.major, &version.minor);
            tracing::info!(
                version = %version.git_version,
                ?capabilities,
                "connected to the API server"
            );
            let metrics = Arc::new(Metrics::default());
            let served = Arc::new(Served {
                metrics: metrics.clone(),
                ready: AtomicBool::new(true),
            });
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let shutdown = async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                tracing::info!("stopping");
            }
            .shared();
            let app = Router::new()
                .route("/healthz", get(|| async { "ok\n" }))
                .route("/readyz", get(readyz))
                .route("/metrics", get(serve_metrics))
                .with_state(served.clone());
            let server = tokio::spawn(
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.clone())
                    .into_future(),
            );
            let ctx = Arc::new(Context::new(client.clone(), capabilities, metrics));
            let identity = std::env::var("HOSTNAME").unwrap_or_else(|_| "weft-operator".into());
            if no_leader_election {
                weft_operator::pipeline::run(ctx, namespace, shutdown).await;
            } else {
                let elector = Elector::new(
                    kube::Api::namespaced(client, &lease_namespace),
                    "weft-operator",
                    &identity,
                );
                tokio::select! {
                    acquired = elector.acquire() => acquired.context("leader election")?,
                    () = shutdown.clone() => return Ok(()),
                }
                tracing::info!(%identity, "leading");
                tokio::select! {
                    () = weft_operator::pipeline::run(ctx, namespace, shutdown) => {}
                    lost = elector.hold() => {
                        // Another replica may be reconciling now: stop at once.
                        anyhow::bail!("{lost}");
                    }
                }
            }
            let _ = server.await;
            Ok(())
        }
    }
}
