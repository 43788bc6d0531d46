//! The operator's controllers against a real kube-apiserver (v1.20), with exactly the rights
//! of manifests/operator/rbac.yaml (cluster-admin impersonating the operator's
//! ServiceAccount): a pipeline gets its children and an honest status, a definition its
//! condition and its users, a definition change re-renders the pipeline's configuration, an
//! invalid definition names its field, and a `keyGroups` change is refused.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use weft_crds::manifest::{Resource as Manifest, read_file};
use weft_crds::{JoinPipeline, ProcessDefinition};
use weft_operator::builders::Capabilities;
use weft_operator::context::{Context as OperatorContext, Metrics};
use weft_operator::leader::Elector;
use weft_tests::TestCluster;

const NS: &str = "banking";
const WAIT: Duration = Duration::from_secs(60);

async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    condition: impl Condition<K>,
) -> Result<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let found = tokio::time::timeout(WAIT, await_condition(api.clone(), name, condition))
        .await
        .with_context(|| format!("timed out waiting for {what}"))??;
    found.ok_or_else(|| anyhow!("{what}: {name} is gone"))
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The whole install (`kubectl apply -k manifests/`) and the test's namespace.
async fn install(cluster: &TestCluster, admin: &Client) -> Result<()> {
    cluster.install_weft()?;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
    Ok(())
}

async fn create_examples(admin: &Client) -> Result<()> {
    let dir = weft_crds::repo_dir().join("manifests/examples/credit-card");
    for file in ["processdefinition.yaml", "joinpipeline.yaml"] {
        for resource in read_file(&dir.join(file))? {
            match resource {
                Manifest::ProcessDefinition(pd) => {
                    let api: Api<ProcessDefinition> = Api::namespaced(admin.clone(), NS);
                    api.create(&PostParams::default(), &pd).await?;
                }
                Manifest::JoinPipeline(jp) => {
                    let api: Api<JoinPipeline> = Api::namespaced(admin.clone(), NS);
                    api.create(&PostParams::default(), &jp).await?;
                }
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_operator_reconciles_pipelines_and_definitions_with_its_own_rights() -> Result<()> {
    let cluster = TestCluster::start().await?;
    let admin = cluster.client().await?;
    install(&cluster, &admin).await?;

    // The operator as its ServiceAccount: every request below is authorized by rbac.yaml.
    let client = cluster
        .client_as_service_account("weft-system", "weft-operator")
        .await?;
    weft_operator::preflight::check_crds(&client)
        .await
        .context("the preflight check with the operator's rights")?;
    let version = client.apiserver_version().await?;
    let capabilities = Capabilities::of_version(&version.major, &version.minor);
    ensure!(!capabilities.pdb_v1, "a 1.20 server has no policy/v1");
    let metrics = Arc::new(Metrics::default());
    // No kubelet runs pods here: a stand-in answers for the workers on /status.
    let worker = fake_worker().await?;
    let mut ctx = OperatorContext::new(client.clone(), capabilities, metrics.clone());
    ctx.worker_addresses = Arc::new(move |_| vec![worker.clone()]);
    let cleaner = Arc::new(RecordingCleaner::default());
    ctx.topic_cleaner = cleaner.clone();
    let ctx = Arc::new(ctx);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = futures::FutureExt::shared(async move {
        let _ = stopped.await;
    });
    let operator = tokio::spawn(weft_operator::pipeline::run(
        ctx,
        Some(NS.to_string()),
        shutdown,
    ));

    create_examples(&admin).await?;

    // The children, owned by the pipeline.
    let statefulsets: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    let sts = wait_for(
        &statefulsets,
        "weft-credit-card",
        "the StatefulSet",
        |o: Option<&StatefulSet>| o.is_some(),
    )
    .await?;
    let owner = &sts.owner_references()[0];
    ensure!(owner.kind == "JoinPipeline" && owner.name == "credit-card");
    ensure!(
        sts.spec
            .volume_claim_templates
            .as_ref()
            .is_some_and(|v| v.len() == 1)
    );
    // The server kept the worker's memory limit for the hot tier's budget (the example sets
    // limits.memory).
    let worker = sts
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|pod| pod.containers.first())
        .context("the worker container")?;
    let memory_limit = worker
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "WEFT_MEMORY_LIMIT_MIB")
        .and_then(|e| e.value_from.as_ref()?.resource_field_ref.as_ref())
        .context("WEFT_MEMORY_LIMIT_MIB from the downward API")?;
    ensure!(memory_limit.resource == "limits.memory");
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    let cm = configmaps.get("weft-credit-card").await?;
    let rendered = cm
        .data
        .as_ref()
        .and_then(|d| d.get("pipeline.yaml"))
        .context("the rendered pipeline")?;
    ensure!(
        rendered.contains("kind: ProcessDefinition") && rendered.contains("kind: JoinPipeline")
    );
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    services.get("weft-credit-card-workers").await?;
    services.get("weft-credit-card-metrics").await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let secret = secrets.get("weft-credit-card-admin").await?;
    ensure!(secret.data.is_some_and(|d| d["token"].0.len() == 64));

    // The pipeline's status: no kubelet here, so the workers never get ready.
    let pipelines: Api<JoinPipeline> = Api::namespaced(admin.clone(), NS);
    let jp = wait_for(
        &pipelines,
        "credit-card",
        "the pipeline's status",
        |o: Option<&JoinPipeline>| {
            o.and_then(|jp| jp.status.as_ref())
                .is_some_and(|s| s.observed_generation.is_some() && s.selector.is_some())
        },
    )
    .await?;
    let status = jp.status.clone().context("status")?;
    ensure!(status.observed_generation == jp.metadata.generation);
    let ready = condition(&status.conditions, "Ready").context("Ready")?;
    ensure!(ready.status == "False", "{ready:?}");
    ensure!(condition(&status.conditions, "Progressing").is_some_and(|c| c.status == "True"));
    ensure!(condition(&status.conditions, "Degraded").is_some_and(|c| c.status == "False"));
    let assignment = status.assignment.context("assignment")?;
    ensure!(assignment.workers.len() == usize::try_from(jp.spec.workers.replicas)?);
    let lag = status.lag.context("the workers' lag")?;
    ensure!(lag.messages == 42, "{lag:?}");
    ensure!(status.last_checkpoint.is_some());
    let covered: u32 = assignment
        .workers
        .iter()
        .flat_map(|w| &w.ranges)
        .map(|r| u32::from(r.len()))
        .sum();
    ensure!(covered == u32::from(jp.spec.key_groups));

    // The definition's status.
    let definitions: Api<ProcessDefinition> = Api::namespaced(admin.clone(), NS);
    let pd = wait_for(
        &definitions,
        "credit-card",
        "the definition's status",
        |o: Option<&ProcessDefinition>| {
            o.and_then(|pd| pd.status.as_ref())
                .is_some_and(|s| !s.pipelines.is_empty())
        },
    )
    .await?;
    let pd_status = pd.status.context("status")?;
    ensure!(pd_status.pipelines == vec!["credit-card".to_string()]);
    ensure!(condition(&pd_status.conditions, "Accepted").is_some_and(|c| c.status == "True"));
    ensure!(pd_status.step_count == Some(6));

    // A definition change re-renders the pipeline's configuration (a watch, not a poll).
    definitions
        .patch(
            "credit-card",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"metricsWindow": "5m"}})),
        )
        .await?;
    wait_for(
        &configmaps,
        "weft-credit-card",
        "the re-rendered pipeline",
        |o: Option<&ConfigMap>| {
            o.and_then(|cm| cm.data.as_ref())
                .and_then(|d| d.get("pipeline.yaml"))
                .is_some_and(|text| text.contains("metricsWindow: 5m"))
        },
    )
    .await?;
    // … without touching the pod template: workers reload definitions.
    let rolled = statefulsets.get("weft-credit-card").await?;
    ensure!(
        rolled
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            == sts
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
        "a definition change must not roll the workers"
    );

    // An invalid definition: Accepted=False naming the field.
    let mut broken = pd_template(&admin).await?;
    broken.metadata = Default::default();
    broken.metadata.name = Some("broken".into());
    broken.spec.steps[0].match_ = "request.path == ".into();
    definitions.create(&PostParams::default(), &broken).await?;
    let broken = wait_for(
        &definitions,
        "broken",
        "the invalid definition's condition",
        |o: Option<&ProcessDefinition>| {
            o.and_then(|pd| pd.status.as_ref())
                .is_some_and(|s| !s.conditions.is_empty())
        },
    )
    .await?;
    let accepted = broken
        .status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Accepted").cloned())
        .context("Accepted")?;
    ensure!(accepted.status == "False" && accepted.reason == "Invalid");
    ensure!(
        accepted.message.contains("spec.steps[0].match"),
        "{}",
        accepted.message
    );

    // keyGroups cannot change under running state: Degraded, an Event, nothing applied.
    pipelines
        .patch(
            "credit-card",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"keyGroups": 60}})),
        )
        .await?;
    let jp = wait_for(
        &pipelines,
        "credit-card",
        "the refused keyGroups change",
        |o: Option<&JoinPipeline>| {
            o.and_then(|jp| jp.status.as_ref())
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded").cloned())
                .is_some_and(|c| c.status == "True" && c.reason == "KeyGroupsImmutable")
        },
    )
    .await?;
    let degraded = condition(
        &jp.status.as_ref().context("status")?.conditions,
        "Degraded",
    )
    .context("Degraded")?
    .clone();
    ensure!(
        degraded.message.contains("spec.keyGroups"),
        "{}",
        degraded.message
    );
    let unchanged = statefulsets.get("weft-credit-card").await?;
    ensure!(
        unchanged
            .annotations()
            .get(weft_operator::pipeline::KEY_GROUPS_ANNOTATION)
            == Some(&"120".to_string())
    );
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for wanted in ["Created", "ConfigurationUpdated", "KeyGroupsImmutable"] {
        ensure!(
            reasons.iter().any(|r| r == wanted),
            "no {wanted} Event in {reasons:?}"
        );
    }

    // deletionPolicy: Delete — a finalizer holds the pipeline until its internal topics are
    // deleted. (A Kafka Admin API is not available here: the mock cluster does not serve
    // DeleteTopics, so a recording cleaner stands in for KafkaTopicCleaner.)
    let mut disposable = pipelines.get("credit-card").await?;
    disposable.metadata = Default::default();
    disposable.metadata.name = Some("disposable".into());
    disposable.spec.key_groups = 120;
    disposable.spec.deletion_policy = weft_crds::join_pipeline::DeletionPolicy::Delete;
    let uid = pipelines
        .create(&PostParams::default(), &disposable)
        .await?
        .uid()
        .context("uid")?;
    wait_for(
        &pipelines,
        "disposable",
        "the finalizer",
        |o: Option<&JoinPipeline>| {
            o.is_some_and(|jp| {
                jp.finalizers()
                    .iter()
                    .any(|f| f == weft_operator::pipeline::FINALIZER)
            })
        },
    )
    .await?;
    pipelines.delete("disposable", &Default::default()).await?;
    tokio::time::timeout(
        WAIT,
        await_condition(
            pipelines.clone(),
            "disposable",
            conditions::is_deleted(&uid),
        ),
    )
    .await
    .context("the pipeline was not deleted")??;
    let deleted = cleaner.calls.lock().map(|c| c.clone()).unwrap_or_default();
    ensure!(
        // At least once: a reconcile working from a cache that still shows the finalizer
        // may delete again, which is why deleting a topic that is gone counts as done.
        !deleted.is_empty()
            && deleted.iter().all(|call| {
                *call
                    == (
                        disposable.spec.kafka.bootstrap_servers.clone(),
                        vec![
                            "banking.disposable.keyed".to_string(),
                            "banking.disposable.actions".to_string(),
                        ],
                    )
            }),
        "{deleted:?}"
    );

    // Leader election with the operator's rights: one holder at a time, and a lease that
    // is not renewed passes to the other replica.
    let leases = Api::namespaced(client.clone(), "weft-system");
    let first = Elector::new(leases.clone(), "weft-operator-test", "first").with_lease_seconds(1);
    let second = Elector::new(leases.clone(), "weft-operator-test", "second").with_lease_seconds(1);
    ensure!(
        first.try_acquire().await?,
        "the first candidate takes a free lease"
    );
    ensure!(!second.try_acquire().await?, "a held lease is not taken");
    ensure!(first.try_acquire().await?, "the holder renews");
    // Not renewed for longer than its duration: it is free.
    tokio::time::timeout(WAIT, async {
        while !second.try_acquire().await? {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    })
    .await
    .context("the lease never passed on")??;
    ensure!(!first.try_acquire().await?, "the old holder has lost it");

    let _ = stop.send(());
    tokio::time::timeout(WAIT, operator)
        .await
        .context("the controllers did not stop")??;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry)?;
    ensure!(
        text.contains("weft_operator_reconciles_total{kind=\"JoinPipeline\"}"),
        "{text}"
    );
    Ok(())
}

/// Records which topics it was asked to delete.
#[derive(Default)]
struct RecordingCleaner {
    calls: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

impl weft_operator::topics::TopicCleaner for RecordingCleaner {
    fn delete(
        &self,
        bootstrap: String,
        _: std::collections::BTreeMap<String, String>,
        topics: Vec<String>,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((bootstrap, topics));
        }
        Box::pin(async { Ok(()) })
    }
}

/// Answers every connection with a worker's `/status`: 42 messages of lag.
async fn fake_worker() -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let body = r#"{"partitions":[{"lag":40},{"lag":2}],"lastCheckpoint":{"number":1,"at":1800000000000,"durationMs":3.0}}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    Ok(address)
}

async fn pd_template(admin: &Client) -> Result<ProcessDefinition> {
    let api: Api<ProcessDefinition> = Api::namespaced(admin.clone(), NS);
    Ok(api.get("credit-card").await?)
}
