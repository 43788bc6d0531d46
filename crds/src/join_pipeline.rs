//! `JoinPipeline`: how the three message streams flow from Kafka through the join and the
//! process engines, and how the workers that run it are sized and scaled.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::keygroup::{DEFAULT_KEY_GROUPS, KeyGroupRange};
use crate::pointer::JsonPointer;
use crate::process_definition::NAME_PATTERN;

/// Kafka's own rule for topic names.
pub const TOPIC_PATTERN: &str = r"^[a-zA-Z0-9._-]{1,249}$";

/// A pipeline that joins each tracking number's request, response and tracking messages into
/// one business action, assembles actions into process instances and emits process metrics.
// Several printer columns repeat `type_ = ...`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "JoinPipeline",
    namespaced,
    shortname = "jp",
    category = "weft",
    status = "JoinPipelineStatus",
    doc = "A streaming pipeline: Kafka sources of request, response and tracking messages, the one-to-one join by tracking number, the process definitions applied to the joined actions, outputs, and the workers that run it.",
    scale(
        spec_replicas_path = ".spec.workers.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Worker pods running"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag.messages",
        description = "Consumer lag in messages, summed over key groups"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct JoinPipelineSpec {
    /// The Kafka cluster that holds the sources, the internal topics and the outputs.
    pub kafka: KafkaSpec,

    /// Where the request, response and tracking messages come from. A source carries one
    /// part, or several parts told apart by a discriminator field.
    #[schemars(length(min = 1, max = 16))]
    pub sources: Vec<SourceSpec>,

    /// How the parts of one tracking number are joined.
    #[serde(default)]
    pub join: JoinSpec,

    /// The ProcessDefinitions (same namespace) applied to the joined actions. Empty: the
    /// pipeline only joins.
    #[serde(default, skip_serializing_if = "ProcessSelector::is_empty")]
    pub processes: ProcessSelector,

    /// Topics the pipeline writes to.
    pub outputs: OutputsSpec,

    /// Number of key groups (shards of state and of the internal topics' partitions). Fixed at
    /// creation: changing it would re-shard all state, so it is immutable.
    #[serde(default = "default_key_groups")]
    #[schemars(range(min = 1, max = 32768))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "keyGroups is immutable after creation"}]))]
    pub key_groups: u16,

    /// The worker pods.
    #[serde(default)]
    pub workers: WorkersSpec,

    /// Scale workers on consumer lag. Absent: replicas stay as `workers.replicas` says
    /// (which HPA or KEDA may drive through the /scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// How often state and input offsets are made durable together.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: Duration,

    /// What happens to the internal Kafka topics when the pipeline is deleted: `Keep`
    /// (default; a pipeline of the same name can reuse them) or `Delete`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Connection to Kafka.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of bootstrap brokers.
    #[schemars(length(min = 1, max = 2048))]
    pub bootstrap_servers: String,

    /// Extra librdkafka client properties (e.g. `security.protocol: SASL_SSL`). Properties
    /// Weft manages itself (`bootstrap.servers`, `group.id`, `enable.auto.commit`,
    /// `enable.auto.offset.store`, `isolation.level`) may not be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,

    /// A Secret (same namespace) whose keys are client properties, for credentials such as
    /// `sasl.username` and `sasl.password`; they are merged over `properties`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretReference>,
}

/// A Secret in the pipeline's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One of the three messages that make up a business action.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Part {
    /// The HTTP request.
    Request,
    /// The HTTP response.
    Response,
    /// The front-end tracking ("buried point") event.
    Tracking,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Request, Part::Response, Part::Tracking];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::Request => "request",
            Part::Response => "response",
            Part::Tracking => "tracking",
        }
    }

    pub fn from_name(name: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kafka source of one or more parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Source name, unique within the pipeline; used in metrics and dead letters.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,

    /// Topics to consume.
    #[schemars(length(min = 1, max = 32), inner(regex(pattern = TOPIC_PATTERN)))]
    pub topics: Vec<String>,

    /// The part every message of this source is: `request`, `response` or `tracking`. Set
    /// exactly one of `part` and `discriminator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,

    /// For a source that carries several parts: the field that tells them apart. Set exactly
    /// one of `part` and `discriminator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discriminator: Option<DiscriminatorSpec>,

    /// Where the tracking number lives in a message.
    pub tracking_number: JsonPointer,

    /// Where the event time lives in a message, and how it is written.
    pub event_time: EventTimeSpec,

    /// Conditions a message must meet to be used, all of them (like a label selector's
    /// `matchExpressions`). Messages that fail are dropped before any state is touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub filter: Vec<FilterRule>,

    /// Fields to keep from each message (projection). Only these, the tracking number and the
    /// event time are stored and passed on; steps, dimensions and outcomes may use only these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub fields: Vec<FieldSpec>,

    /// Keep the whole message in state and in the joined action instead of only `fields`.
    /// Costs state; for debugging and for consumers that need the raw payloads.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_payload: bool,

    /// The topics are already keyed by tracking number with `keyGroups` partitions and Kafka's
    /// default partitioner, so the shuffle stage is skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partitioned_by_tracking_number: bool,

    /// Messages larger than this many bytes go to the dead-letter topic.
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 64, max = 16_777_216))]
    pub max_message_bytes: u32,
}

/// Tells the parts of a multi-part source apart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscriminatorSpec {
    /// Where the discriminating value lives in a message.
    pub pointer: JsonPointer,

    /// Which part each value means, e.g. `{REQ: request, RESP: response, TRK: tracking}`.
    /// A message with any other value goes to the dead-letter topic.
    #[schemars(length(min = 1, max = 16))]
    pub values: BTreeMap<String, Part>,
}

/// Where and how the event time is written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTimeSpec {
    /// Where the event time lives in a message.
    pub pointer: JsonPointer,

    /// How it is written: `epochMillis` (default; a number or a string of digits),
    /// `epochSeconds` (fractions allowed) or `rfc3339` (e.g. `2026-11-22T08:30:00.123+08:00`).
    #[serde(default)]
    pub format: EventTimeFormat,
}

/// Encodings of an event time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EventTimeFormat {
    /// Milliseconds since the Unix epoch, as a number or a string of digits.
    #[default]
    EpochMillis,
    /// Seconds since the Unix epoch, as a number (fractions allowed) or a string.
    EpochSeconds,
    /// An RFC 3339 timestamp such as `2026-11-22T08:30:00.123+08:00`.
    Rfc3339,
}

/// One filter condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilterRule {
    /// Where the value lives in a message.
    pub pointer: JsonPointer,

    /// How the value is tested: `In`, `NotIn` (absent counts as not in), `Exists` (present and
    /// not null) or `DoesNotExist`.
    pub operator: FilterOperator,

    /// The values for `In` and `NotIn` (compared with the value as text); empty for `Exists`
    /// and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub values: Vec<String>,
}

/// Filter operators, as in a Kubernetes label selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FilterOperator {
    /// The value is one of `values`.
    In,
    /// The value is absent or none of `values`.
    NotIn,
    /// The field is present and not null.
    Exists,
    /// The field is absent or null.
    DoesNotExist,
}

/// A field kept from a message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldSpec {
    /// The field's name in the joined action, e.g. `path` makes `request.path`.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"))]
    pub name: String,

    /// Where the value lives in a message.
    pub pointer: JsonPointer,

    /// The parts this field is taken from (for a multi-part source); empty means every part
    /// the source carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub parts: Vec<Part>,
}

/// Join settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinSpec {
    /// How long after the first part (in event time) the missing parts may still arrive. When
    /// it passes, an incomplete action naming the missing parts is emitted.
    #[serde(default = "default_lateness")]
    pub lateness: Duration,

    /// Parts an action needs to be complete (`request`, `response`, `tracking`; default all
    /// three). A part not listed is included when it arrives before the required ones are
    /// complete; the action is never held back for it.
    #[serde(default = "default_required")]
    #[schemars(length(min = 1, max = 3))]
    pub required: Vec<Part>,

    /// How long a completed or expired tracking number is remembered so that duplicate parts
    /// are dropped instead of starting a new action. At least `lateness`.
    #[serde(default = "default_dedupe")]
    pub dedupe: Duration,

    /// How far ahead of its key group's watermark an event time may be. Later timestamps are
    /// implausible: the message goes to the dead-letter topic and does not move time.
    #[serde(default = "default_max_future_skew")]
    pub max_future_skew: Duration,
}

impl Default for JoinSpec {
    fn default() -> Self {
        JoinSpec {
            lateness: default_lateness(),
            required: default_required(),
            dedupe: default_dedupe(),
            max_future_skew: default_max_future_skew(),
        }
    }
}

/// Which ProcessDefinitions a pipeline uses: by name, by label selector, or both (union).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSelector {
    /// ProcessDefinition names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub names: Vec<String>,

    /// A label selector over ProcessDefinitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

impl ProcessSelector {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.selector.is_none()
    }
}

/// Output topics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputsSpec {
    /// Joined (complete) actions, keyed by tracking number.
    #[schemars(regex(pattern = TOPIC_PATTERN))]
    pub actions: String,

    /// Incomplete actions (lateness passed), naming the missing parts.
    #[schemars(regex(pattern = TOPIC_PATTERN))]
    pub incomplete: String,

    /// Messages that could not be used, with the reason and their source position.
    #[schemars(regex(pattern = TOPIC_PATTERN))]
    pub dead_letters: String,

    /// Windowed process metrics. Required when the pipeline has processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TOPIC_PATTERN))]
    pub metrics: Option<String>,

    /// SLA-breach alerts. Required when a step of one of its processes has an `sla`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TOPIC_PATTERN))]
    pub alerts: Option<String>,
}

/// The internal topics of the pipeline `name` in `namespace`, each with `keyGroups`
/// partitions: the keyed messages (`<namespace>.<name>.keyed`) and the actions routed to the
/// process stage (`<namespace>.<name>.actions`). The workers use them; the operator deletes
/// them for `deletionPolicy: Delete`.
pub fn internal_topics(namespace: &str, name: &str) -> [String; 2] {
    [
        format!("{namespace}.{name}.keyed"),
        format!("{namespace}.{name}.actions"),
    ]
}

/// The worker StatefulSet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// Number of worker pods. Also driven by `kubectl scale`, HPA or KEDA through the /scale
    /// subresource, and by `autoscaling`. 0 pauses the pipeline (state is kept).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1024))]
    pub replicas: i32,

    /// Worker image; defaults to the operator's own version of the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// CPU and memory requests and limits of a worker container. A quarter of the memory
    /// limit (else of the request) is the join's in-memory state budget; what does not fit
    /// moves to RocksDB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The RocksDB volume of each worker.
    #[serde(default)]
    pub storage: StorageSpec,
}

impl Default for WorkersSpec {
    fn default() -> Self {
        WorkersSpec {
            replicas: default_replicas(),
            image: None,
            resources: None,
            storage: StorageSpec::default(),
        }
    }
}

/// A worker's persistent volume for RocksDB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// StorageClass of the volume; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// Size of the volume.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            storage_class_name: None,
            size: default_storage_size(),
        }
    }
}

/// Lag-based autoscaling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Fewest workers.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 1024))]
    pub min_replicas: i32,

    /// Most workers (at most `keyGroups`).
    #[schemars(range(min = 1, max = 1024))]
    pub max_replicas: i32,

    /// Target lag in seconds of input at the current input rate. Set exactly one of
    /// `targetLagSeconds` and `lagPerReplica`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub target_lag_seconds: Option<u32>,

    /// Target lag in messages per worker. Set exactly one of `targetLagSeconds` and
    /// `lagPerReplica`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub lag_per_replica: Option<u64>,

    /// How long a higher recommendation must hold before scaling up.
    #[serde(default = "default_scale_up_stabilization")]
    pub scale_up_stabilization: Duration,

    /// How long a lower recommendation must hold before scaling down.
    #[serde(default = "default_scale_down_stabilization")]
    pub scale_down_stabilization: Duration,

    /// Least time between two rescales (each one moves state).
    #[serde(default = "default_cooldown")]
    pub cooldown: Duration,
}

/// What deleting a pipeline does to its internal Kafka topics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep them (they can be reused by a pipeline of the same name).
    #[default]
    Keep,
    /// Delete them.
    Delete,
}

/// Lifecycle phase of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Accepted; workers are being created.
    Pending,
    /// Every worker is ready and owns its key groups.
    Running,
    /// Key groups are moving between workers.
    Rescaling,
    /// Running with a problem that needs attention (see the conditions).
    Degraded,
    /// The spec is invalid or the pipeline cannot run (see the conditions).
    Failed,
}

/// Observed state of a JoinPipeline, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinPipelineStatus {
    /// Lifecycle phase: `Pending` (workers being created), `Running`, `Rescaling` (key groups
    /// moving), `Degraded` (running with a problem, see conditions) or `Failed` (cannot run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// `Ready`, `Progressing`, `Degraded` and `Rescaling`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Worker pods that exist (the /scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,

    /// Label selector of the worker pods, for the /scale subresource (HPA, KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Which worker owns which key groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<AssignmentStatus>,

    /// Consumer lag of the join stage, as the workers report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagStatus>,

    /// The oldest of the workers' last checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<Time>,

    /// The last completed or aborted rescale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rescale: Option<RescaleStatus>,

    /// The autoscaler's last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_autoscale: Option<AutoscaleDecision>,
}

/// An assignment of key groups to workers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentStatus {
    /// Increases with every new assignment; a worker processes a key group only for the
    /// current epoch.
    pub epoch: u64,

    /// Each worker's key groups.
    #[serde(default)]
    pub workers: Vec<WorkerAssignment>,
}

/// One worker's key groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerAssignment {
    /// Pod ordinal.
    pub ordinal: u32,
    /// Owned key-group ranges.
    #[serde(default)]
    pub ranges: Vec<KeyGroupRange>,
}

/// Consumer lag.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagStatus {
    /// Messages not yet checkpointed, summed over key groups.
    pub messages: i64,
    /// The same lag in seconds at the current input rate, when the rate is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// When the workers were asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
}

/// Record of a rescale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RescaleStatus {
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
    /// Key groups that changed owner.
    pub key_groups_moved: u32,
    /// Bytes of state moved.
    pub bytes_moved: u64,
    /// Longest time a moving key group was paused, in seconds.
    pub pause_seconds: f64,
    /// `Succeeded` or `Aborted` (state stayed with the source workers).
    pub result: String,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// One autoscaler decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleDecision {
    /// Replicas before.
    pub from: i32,
    /// Replicas chosen.
    pub to: i32,
    /// Why.
    pub reason: String,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

fn default_key_groups() -> u16 {
    DEFAULT_KEY_GROUPS
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_lateness() -> Duration {
    Duration::from_secs(3600)
}
fn default_required() -> Vec<Part> {
    Part::ALL.to_vec()
}
fn default_dedupe() -> Duration {
    Duration::from_secs(2 * 3600)
}
fn default_max_future_skew() -> Duration {
    Duration::from_secs(300)
}
fn default_max_message_bytes() -> u32 {
    1024 * 1024
}
fn default_replicas() -> i32 {
    1
}
fn default_storage_size() -> Quantity {
    Quantity("10Gi".to_string())
}
fn default_scale_up_stabilization() -> Duration {
    Duration::from_secs(60)
}
fn default_scale_down_stabilization() -> Duration {
    Duration::from_secs(300)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(120)
}
