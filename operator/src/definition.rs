//! The ProcessDefinition controller: validation into the `Accepted` condition, and the list
//! of pipelines that use the definition. Pipelines re-render on a definition change through
//! their own controller's watch (see `pipeline::controller`).

use std::sync::Arc;
use std::time::Duration;

use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use weft_crds::{JoinPipeline, ProcessDefinition, ProcessDefinitionStatus};

use crate::builders::MANAGER;
use crate::conditions::{Decided, merge, now};
use crate::context::{Context, Timer};
use crate::error::{Error, Result};

pub async fn reconcile(pd: Arc<ProcessDefinition>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = Timer::start(&ctx.metrics, "ProcessDefinition");
    let ns = pd.namespace().ok_or(Error::Unnamed("ProcessDefinition"))?;
    let name = pd.name_any();
    let pipelines: Api<JoinPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let mut users: Vec<String> = pipelines
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|jp| weft_crds::manifest::uses(jp, &pd))
        .map(ResourceExt::name_any)
        .collect();
    users.sort();
    let accepted = match pd.spec.validate() {
        Ok(()) => Decided::new("Accepted", true, "Valid", "the definition is valid"),
        Err(errors) => {
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let was_invalid = pd.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "False" && c.message == message)
            });
            if !was_invalid {
                ctx.recorder
                    .publish(
                        &Event {
                            type_: EventType::Warning,
                            reason: "InvalidSpec".into(),
                            note: Some(truncate(&message)),
                            action: "Validate".into(),
                            secondary: None,
                        },
                        &pd.object_ref(&()),
                    )
                    .await?;
            }
            Decided::new("Accepted", false, "Invalid", message)
        }
    };
    let previous = pd.status.clone().unwrap_or_default();
    let status = ProcessDefinitionStatus {
        conditions: merge(
            &previous.conditions,
            &[accepted],
            pd.metadata.generation,
            &now(),
        ),
        observed_generation: pd.metadata.generation,
        step_count: i32::try_from(pd.spec.steps.len()).ok(),
        pipelines: users,
    };
    // Unchanged conditions keep their times, so an unchanged status compares equal.
    if Some(&status) != pd.status.as_ref() {
        let api: Api<ProcessDefinition> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({
            "apiVersion": "weft.dev/v1alpha1",
            "kind": "ProcessDefinition",
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    }
    // Pipelines come and go: look again now and then.
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Event notes are limited to 1 KiB.
pub fn truncate(message: &str) -> String {
    if message.len() <= 1000 {
        return message.to_string();
    }
    let mut end = 1000;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}
