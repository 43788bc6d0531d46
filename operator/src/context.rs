//! What every reconcile shares: the client, the event recorder, the metrics, and what the
//! server supports.

use std::sync::Arc;
use std::time::Instant;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::builders::{Capabilities, MANAGER, ValidatedPipeline};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: &'static str,
    pub reason: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<KindLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub duration: Family<KindLabel, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft_operator");
        let reconciles = Family::<KindLabel, Counter>::default();
        registry.register("reconciles", "Reconciles run, per kind", reconciles.clone());
        let errors = Family::<ErrorLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, per kind and reason",
            errors.clone(),
        );
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile takes",
            duration.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
        }
    }
}

/// Counts a reconcile and times it when dropped.
pub struct Timer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    started: Instant,
}

impl<'a> Timer<'a> {
    pub fn start(metrics: &'a Metrics, kind: &'static str) -> Timer<'a> {
        metrics.reconciles.get_or_create(&KindLabel { kind }).inc();
        Timer {
            metrics,
            kind,
            started: Instant::now(),
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&KindLabel { kind: self.kind })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// The admin API addresses of a pipeline's workers.
pub type WorkerAddresses = Arc<dyn Fn(&ValidatedPipeline) -> Vec<String> + Send + Sync>;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub capabilities: Capabilities,
    /// In a cluster, each worker's DNS name under the headless Service; tests point it
    /// elsewhere.
    pub worker_addresses: WorkerAddresses,
    /// Deletes internal topics for `deletionPolicy: Delete`.
    pub topic_cleaner: Arc<dyn crate::topics::TopicCleaner>,
}

impl Context {
    pub fn new(client: Client, capabilities: Capabilities, metrics: Arc<Metrics>) -> Context {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            capabilities,
            worker_addresses: Arc::new(|v: &ValidatedPipeline| {
                crate::workers::addresses(
                    &v.name,
                    &v.namespace,
                    v.pipeline.spec.workers.replicas,
                    crate::builders::ADMIN_PORT,
                )
            }),
            topic_cleaner: Arc::new(crate::topics::KafkaTopicCleaner),
        }
    }
}
