//! `ProcessDefinition`: the business process a pipeline assembles joined actions into.
//! Business users iterate on it; it is hot-reloaded by the workers.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::pointer::JsonPointer;

/// Names of steps, dimensions and outcomes: they become metric labels and map keys.
pub const NAME_PATTERN: &str = r"^[a-z][a-z0-9_-]{0,62}$";

/// A business process (for example a credit-card application: apply → review → issue →
/// make → deliver → activate) assembled from the joined actions of one or more JoinPipelines.
// Several printer columns repeat `type_ = ...`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "ProcessDefinition",
    namespaced,
    shortname = "pd",
    category = "weft",
    status = "ProcessDefinitionStatus",
    doc = "A business process assembled from joined actions: its steps (happy path in order), the instance key, metric dimensions, outcomes and timeouts.",
    printcolumn(
        name = "Steps",
        type_ = "integer",
        json_path = ".status.stepCount",
        description = "Number of steps"
    ),
    printcolumn(
        name = "Pipelines",
        type_ = "string",
        json_path = ".status.pipelines",
        description = "JoinPipelines that use this definition"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProcessDefinitionSpec {
    /// What the process is, for people reading the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// The steps of the process in happy-path order. An action enters the first step whose
    /// `match` it satisfies; moving to an earlier step than the current one is a return (rework).
    #[schemars(length(min = 1, max = 64))]
    pub steps: Vec<StepSpec>,

    /// Where the process-instance id (e.g. an application number) lives in a joined action.
    pub instance_key: InstanceKeySpec,

    /// Fields to slice metrics by (channel, product, institution ...). Each dimension keeps at
    /// most `maxValues` distinct values; further values are counted under `other`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub dimensions: Vec<DimensionSpec>,

    /// Named results of an instance (approved, rejected, activated ...), counted for
    /// pass and activation rates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub outcomes: Vec<OutcomeSpec>,

    /// How long an instance may go without reaching a final step before it counts as abandoned.
    #[serde(default = "default_instance_timeout")]
    pub instance_timeout: Duration,

    /// Size of the tumbling windows that process metrics are emitted in.
    #[serde(default = "default_metrics_window")]
    pub metrics_window: Duration,
}

/// One step of the process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepSpec {
    /// Step name, unique within the definition (lower case, digits, `-` and `_`).
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,

    /// A CEL predicate over the joined action, e.g.
    /// `request.path == '/cc/apply' && response.status == 200`. Variables: `request`,
    /// `response`, `tracking` (each part's projected fields and `eventTime`) and `trackingNumber`.
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 4096))]
    pub match_: String,

    /// How long an instance may stay in this step before an SLA-breach alert is raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<Duration>,

    /// Whether reaching this step ends the instance. The last step is always final; mark
    /// others final for early ends such as a rejection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub r#final: bool,
}

/// Where the instance id lives in a joined action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceKeySpec {
    /// JSON Pointers into the joined action (e.g. `/request/applicationNo`), tried in order;
    /// the first one present gives the instance id. An action with none of them belongs to
    /// no instance and is counted as unmatched.
    #[schemars(length(min = 1, max = 8))]
    pub fields: Vec<JsonPointer>,
}

/// A metric dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DimensionSpec {
    /// Dimension name, used as the metric label.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,

    /// JSON Pointer into the joined action where the value lives, e.g. `/tracking/channel`.
    /// An instance takes the value from the first action that has it.
    pub field: JsonPointer,

    /// Bound on distinct values kept for this dimension; values beyond it are counted as `other`.
    #[serde(default = "default_max_values")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_values: u32,
}

/// A named outcome of an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeSpec {
    /// Outcome name, e.g. `approved`.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,

    /// A CEL predicate over a joined action (same variables as a step's `match`); the instance
    /// has this outcome once any of its actions satisfies it.
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 4096))]
    pub match_: String,
}

/// Observed state of a ProcessDefinition, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessDefinitionStatus {
    /// `Accepted` (True when the definition is valid; False with reason `Invalid` and a
    /// message naming the field otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Number of steps of the definition the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_count: Option<i32>,

    /// Names of the JoinPipelines (same namespace) that use this definition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipelines: Vec<String>,
}

fn default_instance_timeout() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_metrics_window() -> Duration {
    Duration::from_secs(60)
}

fn default_max_values() -> u32 {
    100
}

impl ProcessDefinitionSpec {
    /// The index of the step instances end in unless an earlier one is marked final.
    pub fn is_final_step(&self, index: usize) -> bool {
        index + 1 == self.steps.len() || self.steps.get(index).is_some_and(|s| s.r#final)
    }
}
