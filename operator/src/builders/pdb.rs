//! At most one worker down by a voluntary disruption (a drain): its key groups stop until it
//! is back, so two at once would double the stall.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ValidatedPipeline;

pub fn build(v: &ValidatedPipeline) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: v.metadata(v.child_name()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(v.selector_labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
