//! The worker's admin API (axum), one port: probes, metrics, status, and the mutating
//! endpoints the operator drives under `/v1/`, behind a bearer token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use weft_crds::keygroup::KeyGroupRange;

use crate::metrics::WorkerMetrics;

/// What the stages share with the admin API.
pub struct Shared {
    pub metrics: Mutex<WorkerMetrics>,
    /// Restored, consuming, and the brokers reachable.
    pub ready: AtomicBool,
    /// Graceful stop requested (SIGTERM): stop consuming, flush, checkpoint, exit.
    pub stop: AtomicBool,
    /// Bounded runs: the inputs are complete, their ends can be read. Cleared by a caller
    /// that is still producing the input (local mode over embedded Kafka).
    pub input_complete: AtomicBool,
    /// A checkpoint requested through the API, taken at the next chance.
    pub checkpoint_requested: AtomicBool,
    pub status: Mutex<Status>,
    /// The process stage's totals in the Prometheus text format, refreshed at checkpoints.
    pub process_exposition: Mutex<String>,
    /// Bearer token of the mutating endpoints; `None` disables them.
    pub token: Option<String>,
    /// An assignment given through the API, taken by the stages at their next turn.
    pub assignment_request: Mutex<Option<Assignment>>,
}

/// Which key groups a worker owns, and the epoch of that decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub epoch: u64,
    pub key_groups: KeyGroupRange,
}

impl Shared {
    pub fn new(token: Option<String>) -> Shared {
        Shared {
            metrics: Mutex::new(WorkerMetrics::new()),
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            input_complete: AtomicBool::new(true),
            checkpoint_requested: AtomicBool::new(false),
            status: Mutex::new(Status::default()),
            process_exposition: Mutex::new(String::new()),
            token,
            assignment_request: Mutex::new(None),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        if let Ok(metrics) = self.metrics.lock() {
            metrics.ready.set(i64::from(ready));
        }
        self.update_status(|s| s.ready = ready);
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn update_status(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut status) = self.status.lock() {
            f(&mut status);
        }
    }
}

/// `/status`.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub pipeline: String,
    pub ordinal: u32,
    pub replicas: u32,
    pub epoch: u64,
    /// The pipeline's number of key groups.
    pub key_groups: u16,
    pub owned: Option<KeyGroupRange>,
    /// restoring, running, stopping, finished.
    pub phase: String,
    pub ready: bool,
    pub brokers_down: bool,
    pub last_error: Option<String>,
    pub events: u64,
    /// Messages read from the sources (each input message once).
    pub source_events: u64,
    pub partitions: Vec<PartitionStatus>,
    pub last_checkpoint: Option<CheckpointStatus>,
    pub config: ConfigStatus,
}

/// The configuration the worker runs on.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// The ProcessDefinitions in use.
    pub definitions: Vec<String>,
    /// Times changed definitions were applied without a restart.
    pub reloads: u64,
    /// The JoinPipeline changed in a way that applies only after a restart.
    pub restart_required: bool,
    /// Why the latest change was not applied.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// Next offset to read, as of the last checkpoint.
    pub checkpointed_offset: i64,
    /// Next offset to read now.
    pub offset: i64,
    pub high_watermark: Option<i64>,
    /// High watermark minus the checkpointed offset (what a restart would replay).
    pub lag: Option<i64>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    pub number: u64,
    /// Unix milliseconds.
    pub at: i64,
    pub duration_ms: f64,
}

pub fn router(shared: Arc<Shared>) -> Router {
    // Mutating endpoints: the rescale handoff (export, import, release) joins them here.
    let mutating = Router::new()
        .route("/checkpoint", post(request_checkpoint))
        .route("/assignment", post(request_assignment))
        .route_layer(middleware::from_fn_with_state(shared.clone(), authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .nest("/v1", mutating)
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let status = shared.status();
        let why = if status.brokers_down {
            "brokers unreachable"
        } else {
            status.phase.as_str()
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut text = String::new();
    if let Ok(metrics) = shared.metrics.lock() {
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &metrics.registry);
    }
    // Two registries, one exposition: a single `# EOF` at the very end.
    strip_eof(&mut text);
    if let Ok(process) = shared.process_exposition.lock() {
        text.push_str(&process);
        strip_eof(&mut text);
    }
    text.push_str("# EOF\n");
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn strip_eof(text: &mut String) {
    if text.ends_with("# EOF\n") {
        text.truncate(text.len() - "# EOF\n".len());
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.status()).into_response()
}

async fn request_checkpoint(State(shared): State<Arc<Shared>>) -> Response {
    shared.checkpoint_requested.store(true, Ordering::Relaxed);
    (StatusCode::ACCEPTED, "checkpoint requested\n").into_response()
}

/// A new assignment: a later epoch than the current one, within the pipeline's key groups.
/// The same key groups apply at once. Other ones only to a worker without state yet, which
/// restarts with them; moving key groups that hold state is the checkpoint handoff's job.
async fn request_assignment(
    State(shared): State<Arc<Shared>>,
    axum::Json(assignment): axum::Json<Assignment>,
) -> Response {
    let status = shared.status();
    if assignment.epoch <= status.epoch {
        return (
            StatusCode::CONFLICT,
            format!(
                "epoch {} is not after the current epoch {}\n",
                assignment.epoch, status.epoch
            ),
        )
            .into_response();
    }
    let range = assignment.key_groups;
    if range.start > range.end || range.end > status.key_groups {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "keyGroups {}..{} is not a range within the pipeline's {} key groups\n",
                range.start, range.end, status.key_groups
            ),
        )
            .into_response();
    }
    if status.owned != Some(range) && status.last_checkpoint.is_some() {
        return (
            StatusCode::CONFLICT,
            format!(
                "this worker holds state for key groups {}: moving key groups between workers needs the checkpoint handoff\n",
                status.owned.map_or("none".into(), |o| o.to_string())
            ),
        )
            .into_response();
    }
    if let Ok(mut request) = shared.assignment_request.lock() {
        *request = Some(assignment);
    }
    let applies = if status.owned == Some(range) {
        "now"
    } else {
        "at restart"
    };
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "applies": applies })),
    )
        .into_response()
}

async fn authorize(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(token) = &shared.token else {
        return (
            StatusCode::FORBIDDEN,
            "mutating endpoints are disabled: no admin token configured\n",
        )
            .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the router until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}
