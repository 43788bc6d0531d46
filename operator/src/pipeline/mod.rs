//! The JoinPipeline controller: dereference (the ProcessDefinitions it uses) → validate (into
//! a [`ValidatedPipeline`]) → build the children (`builders`) → apply them (server-side
//! apply, owned by the pipeline) → status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use weft_crds::join_pipeline::{
    AssignmentStatus, DeletionPolicy, LagStatus, Phase, WorkerAssignment,
};
use weft_crds::keygroup::even_assignment;
use weft_crds::{JoinPipeline, JoinPipelineStatus, ProcessDefinition};

use crate::builders::{self, MANAGER, ValidatedPipeline};
use crate::conditions::{Decided, merge, now};
use crate::context::{Context, ErrorLabel, Timer};
use crate::definition::truncate;
use crate::error::{Error, Result};

/// The StatefulSet annotation remembering the key groups the workers were started with:
/// `keyGroups` cannot change under running state.
pub const KEY_GROUPS_ANNOTATION: &str = "weft.dev/key-groups";

/// What went wrong before anything could be applied.
enum Refusal {
    /// The spec (or a definition it uses) is invalid: the message names the fields.
    Invalid(String),
    /// `keyGroups` changed: the running pipeline is left as it was.
    KeyGroupsChanged { running: u16, wanted: u16 },
}

/// Kept on a pipeline with `deletionPolicy: Delete` until its internal topics are deleted.
pub const FINALIZER: &str = "weft.dev/internal-topics";

pub async fn reconcile(jp: Arc<JoinPipeline>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = Timer::start(&ctx.metrics, "JoinPipeline");
    let ns = jp.namespace().ok_or(Error::Unnamed("JoinPipeline"))?;
    let name = jp.name_any();
    let client = &ctx.client;
    let api: Api<JoinPipeline> = Api::namespaced(client.clone(), &ns);
    let wants_cleanup = jp.spec.deletion_policy == DeletionPolicy::Delete;
    let has_finalizer = jp.finalizers().iter().any(|f| f == FINALIZER);
    if jp.metadata.deletion_timestamp.is_some() {
        // The children go by garbage collection; the topics only through us.
        if has_finalizer {
            if wants_cleanup {
                let topics = weft_crds::join_pipeline::internal_topics(&ns, &name).to_vec();
                ctx.topic_cleaner
                    .delete(
                        jp.spec.kafka.bootstrap_servers.clone(),
                        jp.spec.kafka.properties.clone(),
                        topics.clone(),
                    )
                    .await
                    .map_err(Error::Finalizer)?;
                tracing::info!(pipeline = %name, ?topics, "deleted the internal topics");
            }
            set_finalizer(&api, &jp, false).await?;
        }
        return Ok(Action::await_change());
    }
    if wants_cleanup != has_finalizer {
        // The next reconcile (triggered by this change) does the rest.
        set_finalizer(&api, &jp, wants_cleanup).await?;
        return Ok(Action::await_change());
    }

    // Dereference and validate.
    let definitions: Api<ProcessDefinition> = Api::namespaced(client.clone(), &ns);
    let all = definitions.list(&ListParams::default()).await?.items;
    let validated = validate(&jp, &ns, &all);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let child = format!("weft-{name}");
    let existing = statefulsets.get_opt(&child).await?;
    let refusal = match &validated {
        Err(message) => Some(Refusal::Invalid(message.clone())),
        Ok(_) => running_key_groups(existing.as_ref())
            .filter(|running| *running != jp.spec.key_groups)
            .map(|running| Refusal::KeyGroupsChanged {
                running,
                wanted: jp.spec.key_groups,
            }),
    };
    if let Some(refusal) = refusal {
        return refuse(&jp, &ctx, refusal, existing.as_ref()).await;
    }
    let Ok(v) = validated else {
        return Ok(Action::await_change());
    };

    // Build and apply.
    let params = PatchParams::apply(MANAGER).force();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let config = builders::configmap::build(&v)?;
    let previous_config = configmaps.get_opt(&child).await?;
    apply(&configmaps, &config, &params).await?;
    if let Some(previous) = previous_config
        && previous.data != config.data
    {
        event(&ctx, &jp, EventType::Normal, "ConfigurationUpdated",
            "the rendered pipeline changed; workers reload changed ProcessDefinitions without a restart").await?;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    apply(&services, &builders::service::headless(&v), &params).await?;
    apply(&services, &builders::service::metrics(&v), &params).await?;
    ensure_admin_secret(&ctx, &v).await?;
    let mut sts = builders::statefulset::build(&v, ctx.capabilities);
    sts.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            KEY_GROUPS_ANNOTATION.to_string(),
            v.pipeline.spec.key_groups.to_string(),
        );
    let applied = apply(&statefulsets, &sts, &params).await?;
    if existing.is_none() {
        event(
            &ctx,
            &jp,
            EventType::Normal,
            "Created",
            &format!(
                "created {} workers ({} key groups)",
                v.pipeline.spec.workers.replicas, v.pipeline.spec.key_groups
            ),
        )
        .await?;
    }
    if ctx.capabilities.pdb_v1 {
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        apply(&pdbs, &builders::pdb::build(&v), &params).await?;
    } else {
        tracing::debug!(pipeline = %name, "no PodDisruptionBudget: the API server has no policy/v1");
    }

    // Status, with what the workers report about themselves.
    let mut status = running_status(&jp, &v, &applied);
    let addresses = (ctx.worker_addresses)(&v);
    if let Some(observed) = crate::workers::observe(&addresses).await {
        status.lag = Some(LagStatus {
            messages: observed.lag,
            seconds: None,
            observed_at: Some(now()),
        });
        status.last_checkpoint = observed
            .oldest_checkpoint
            .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok())
            .map(Time);
    }
    if let Some(not_ready) = not_ready_event(&jp, &status) {
        event(&ctx, &jp, EventType::Warning, "WorkersNotReady", &not_ready).await?;
    }
    write_status(&ctx, &jp, status).await?;
    // Readiness comes through the StatefulSet watch; lag and checkpoints are asked for.
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Adds or removes the finalizer, with the resourceVersion so a concurrent change wins.
async fn set_finalizer(api: &Api<JoinPipeline>, jp: &JoinPipeline, on: bool) -> Result<()> {
    let mut finalizers: Vec<String> = jp
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if on {
        finalizers.push(FINALIZER.to_string());
    }
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": jp.resource_version(),
        }
    });
    api.patch(
        &jp.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// The pipeline with the definitions it uses, checked as the workers will check them.
fn validate(
    jp: &JoinPipeline,
    ns: &str,
    all: &[ProcessDefinition],
) -> Result<ValidatedPipeline, String> {
    let mut missing = Vec::new();
    for (i, wanted) in jp.spec.processes.names.iter().enumerate() {
        if !all.iter().any(|pd| pd.name_any() == *wanted) {
            missing.push(format!(
                "spec.processes.names[{i}]: ProcessDefinition {wanted} does not exist in namespace {ns}"
            ));
        }
    }
    if !missing.is_empty() {
        return Err(missing.join("; "));
    }
    let mut used: Vec<&ProcessDefinition> = all
        .iter()
        .filter(|pd| weft_crds::manifest::uses(jp, pd))
        .collect();
    used.sort_by_key(|pd| pd.name_any());
    let specs: Vec<(String, &weft_crds::ProcessDefinitionSpec)> =
        used.iter().map(|pd| (pd.name_any(), &pd.spec)).collect();
    let refs: Vec<(&str, &weft_crds::ProcessDefinitionSpec)> =
        specs.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    jp.spec.validate_with_processes(&refs).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    Ok(ValidatedPipeline {
        pipeline: jp.clone(),
        name: jp.name_any(),
        namespace: ns.to_string(),
        definitions: used
            .iter()
            .map(|pd| (pd.name_any(), pd.spec.clone()))
            .collect(),
    })
}

fn running_key_groups(sts: Option<&StatefulSet>) -> Option<u16> {
    sts?.metadata
        .annotations
        .as_ref()?
        .get(KEY_GROUPS_ANNOTATION)?
        .parse()
        .ok()
}

/// Nothing is applied: an invalid spec leaves what runs as it is (or creates nothing), and a
/// changed `keyGroups` is refused. The status and an Event say why.
async fn refuse(
    jp: &JoinPipeline,
    ctx: &Context,
    refusal: Refusal,
    existing: Option<&StatefulSet>,
) -> Result<Action> {
    let (reason, message, phase): (&str, String, Phase) = match &refusal {
        Refusal::Invalid(message) => (
            "InvalidSpec",
            message.clone(),
            if existing.is_some() {
                Phase::Degraded
            } else {
                Phase::Failed
            },
        ),
        Refusal::KeyGroupsChanged { running, wanted } => (
            "KeyGroupsImmutable",
            format!(
                "spec.keyGroups: cannot change from {running} to {wanted} while the workers hold state keyed by {running} key groups; the pipeline keeps running with {running}"
            ),
            Phase::Degraded,
        ),
    };
    let previous = jp.status.clone().unwrap_or_default();
    let already = previous
        .conditions
        .iter()
        .any(|c| c.type_ == "Degraded" && c.status == "True" && c.message == message);
    if !already {
        event(ctx, jp, EventType::Warning, reason, &message).await?;
    }
    let decided = [
        Decided::new("Degraded", true, reason, message.clone()),
        Decided::new(
            "Ready",
            existing.is_some() && matches!(refusal, Refusal::KeyGroupsChanged { .. }),
            reason,
            message.clone(),
        ),
        Decided::new("Progressing", false, reason, "waiting for a valid spec"),
    ];
    let status = JoinPipelineStatus {
        phase: Some(phase),
        conditions: merge(
            &previous.conditions,
            &decided,
            jp.metadata.generation,
            &now(),
        ),
        observed_generation: jp.metadata.generation,
        ..previous
    };
    write_status(ctx, jp, status).await?;
    Ok(Action::await_change())
}

fn running_status(
    jp: &JoinPipeline,
    v: &ValidatedPipeline,
    sts: &StatefulSet,
) -> JoinPipelineStatus {
    let wanted = v.pipeline.spec.workers.replicas;
    let observed = sts.status.as_ref();
    let replicas = observed.map_or(0, |s| s.replicas);
    let ready = observed.and_then(|s| s.ready_replicas).unwrap_or(0);
    let all_ready = ready >= wanted && replicas == wanted;
    let previous = jp.status.clone().unwrap_or_default();
    let ready_message = format!("{ready} of {wanted} workers ready");
    let decided = [
        Decided::new(
            "Ready",
            all_ready,
            if all_ready {
                "WorkersReady"
            } else {
                "WorkersNotReady"
            },
            ready_message.clone(),
        ),
        Decided::new(
            "Progressing",
            !all_ready,
            if all_ready { "Stable" } else { "Rolling" },
            ready_message,
        ),
        Decided::new(
            "Degraded",
            false,
            "Healthy",
            "the spec is valid and applied",
        ),
    ];
    let key_groups = v.pipeline.spec.key_groups;
    let workers = u32::try_from(wanted).unwrap_or(0);
    JoinPipelineStatus {
        phase: Some(if all_ready {
            Phase::Running
        } else {
            Phase::Pending
        }),
        conditions: merge(
            &previous.conditions,
            &decided,
            jp.metadata.generation,
            &now(),
        ),
        observed_generation: jp.metadata.generation,
        replicas,
        selector: Some(v.selector_string()),
        assignment: Some(AssignmentStatus {
            epoch: previous.assignment.as_ref().map_or(0, |a| a.epoch),
            workers: even_assignment(workers, key_groups)
                .into_iter()
                .enumerate()
                .map(|(ordinal, range)| WorkerAssignment {
                    ordinal: ordinal as u32,
                    ranges: vec![range],
                })
                .collect(),
        }),
        ..previous
    }
}

/// A Warning when the workers stopped being ready (not on every reconcile while they start).
fn not_ready_event(jp: &JoinPipeline, status: &JoinPipelineStatus) -> Option<String> {
    let was_ready = jp
        .status
        .as_ref()?
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    (was_ready && ready.status == "False").then(|| ready.message.clone())
}

async fn write_status(ctx: &Context, jp: &JoinPipeline, status: JoinPipelineStatus) -> Result<()> {
    if jp.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let ns = jp.namespace().ok_or(Error::Unnamed("JoinPipeline"))?;
    let api: Api<JoinPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "JoinPipeline",
        "status": status,
    });
    api.patch_status(
        &jp.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

async fn apply<K>(api: &Api<K>, object: &K, params: &PatchParams) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    Ok(api.patch(&name, params, &Patch::Apply(object)).await?)
}

/// The admin token is created once and never re-applied: rotating it would lock the
/// operator out of running workers until they restart.
async fn ensure_admin_secret(ctx: &Context, v: &ValidatedPipeline) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &v.namespace);
    let name = builders::secret::name(v);
    if secrets.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let token = builders::secret::random_token().map_err(Error::Token)?;
    match secrets
        .create(&PostParams::default(), &builders::secret::build(v, &token))
        .await
    {
        Ok(_) => Ok(()),
        // Another reconcile (or replica) created it first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn event(
    ctx: &Context,
    jp: &JoinPipeline,
    type_: EventType,
    reason: &str,
    note: &str,
) -> Result<()> {
    ctx.recorder
        .publish(
            &Event {
                type_,
                reason: reason.to_string(),
                note: Some(truncate(note)),
                action: "Reconcile".to_string(),
                secondary: None,
            },
            &jp.object_ref(&()),
        )
        .await?;
    Ok(())
}

fn error_policy(jp: Arc<JoinPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(pipeline = %jp.name_any(), %error, "reconcile failed");
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabel {
            kind: "JoinPipeline",
            reason: error.metric_label(),
        })
        .inc();
    Action::requeue(Duration::from_secs(15))
}

fn definition_error_policy(pd: Arc<ProcessDefinition>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(definition = %pd.name_any(), %error, "reconcile failed");
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabel {
            kind: "ProcessDefinition",
            reason: error.metric_label(),
        })
        .inc();
    Action::requeue(Duration::from_secs(15))
}

/// Runs both controllers until `shutdown` resolves. A ProcessDefinition change re-renders
/// every pipeline that uses it (mapped through the pipeline controller's cache, not polled).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    let (pipelines, definitions, statefulsets, configmaps, services) = match &namespace {
        Some(ns) => (
            Api::<JoinPipeline>::namespaced(client.clone(), ns),
            Api::<ProcessDefinition>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let children =
        watcher::Config::default().labels(&format!("{}={}", builders::MANAGED_BY_LABEL, MANAGER));
    let controller = Controller::new(pipelines, watcher::Config::default());
    let store = controller.store();
    let pipeline_controller = controller
        .owns(statefulsets, children.clone())
        .owns(configmaps, children.clone())
        .owns(services, children)
        .watches(definitions.clone(), watcher::Config::default(), move |pd| {
            store
                .state()
                .into_iter()
                .filter(|jp| jp.namespace() == pd.namespace() && weft_crds::manifest::uses(jp, &pd))
                .map(|jp| ObjectRef::from_obj(jp.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "pipeline controller");
            }
        });
    let definition_controller = Controller::new(definitions, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(crate::definition::reconcile, definition_error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "definition controller");
            }
        });
    futures::join!(pipeline_controller, definition_controller);
}

#[cfg(test)]
mod tests;
