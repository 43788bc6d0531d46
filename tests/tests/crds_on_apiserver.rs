//! The generated CRDs against a real kube-apiserver (v1.20, etcd-backed): they install and
//! become Established, the examples apply and are defaulted by the server as by the Rust
//! types, schema violations are refused with the server's message, `/scale` drives
//! `spec.workers.replicas`, printer columns show, and every field is documented for
//! `kubectl explain`.
//!
//! One control plane serves all scenarios (it takes 6-12 s to start on 2 cores).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Resource};
use serde_json::{Value, json};
use weft_crds::manifest::parse_dynamic;
use weft_crds::{JoinPipeline, ProcessDefinition};
use weft_tests::TestCluster;

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(30);

fn example(path: &str) -> Result<String> {
    let full = weft_crds::repo_dir().join("manifests/examples").join(path);
    std::fs::read_to_string(&full).with_context(|| full.display().to_string())
}

fn dynamic_api<K: Resource<DynamicType = ()>>(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<K>(&()))
}

#[tokio::test]
async fn crds_on_a_real_api_server() -> Result<()> {
    let cluster = TestCluster::start().await?;
    let client = cluster.client().await?;

    let missing = weft_operator::preflight::check_crds(&client).await;
    ensure!(
        matches!(&missing, Err(weft_operator::preflight::PreflightError::Missing(name)) if name == "processdefinitions.weft.dev"),
        "preflight before install: {missing:?}"
    );
    install_crds(&client).await.context("installing the CRDs")?;
    weft_operator::preflight::check_crds(&client)
        .await
        .context("preflight after install")?;
    apply_examples(&client)
        .await
        .context("applying the examples")?;
    schema_violations_are_refused(&client)
        .await
        .context("schema violations")?;
    scale_subresource_drives_worker_replicas(&client)
        .await
        .context("the /scale subresource")?;
    printer_columns_show(&client)
        .await
        .context("printer columns")?;
    every_field_is_documented(&client)
        .await
        .context("the published OpenAPI schema")?;
    kubectl_explain_documents_the_spec(&cluster).context("kubectl explain")?;
    Ok(())
}

async fn install_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, crd) in weft_crds::crds() {
        // Install the committed YAML (what users apply), not the in-memory type.
        let text =
            std::fs::read_to_string(weft_crds::repo_dir().join("manifests/crds").join(file))?;
        let committed: CustomResourceDefinition = serde_yaml::from_str(&text)?;
        let name = committed
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow!("{file} has no name"))?;
        ensure!(
            name == crd.metadata.name.clone().unwrap_or_default(),
            "{file} names {name}"
        );
        // A plain create: v1.20's server-side apply refuses the schema's
        // `x-kubernetes-validations` (CEL arrived in 1.23), while create drops what it does not
        // know, as older servers do with `kubectl apply`.
        crds.create(&PostParams::default(), &committed).await?;
        tokio::time::timeout(
            WAIT,
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("{name} not Established within {WAIT:?}"))??;
    }
    Ok(())
}

async fn apply_examples(client: &Client) -> Result<()> {
    for file in [
        "credit-card/processdefinition.yaml",
        "credit-card/joinpipeline.yaml",
        "cash-pickup/processdefinition.yaml",
        "cash-pickup/joinpipeline.yaml",
    ] {
        for object in parse_dynamic(&example(file)?)? {
            let api = match object.types.as_ref().map(|t| t.kind.as_str()) {
                Some("ProcessDefinition") => dynamic_api::<ProcessDefinition>(client),
                Some("JoinPipeline") => dynamic_api::<JoinPipeline>(client),
                other => bail!("{file}: unexpected kind {other:?}"),
            };
            api.create(&PostParams::default(), &object)
                .await
                .with_context(|| file.to_string())?;
        }
    }
    // The server fills in what the file leaves out, and agrees with the Rust defaults.
    let pipelines: Api<JoinPipeline> = Api::namespaced(client.clone(), NS);
    let cash = pipelines.get("cash-pickup").await?;
    ensure!(
        cash.spec.key_groups == 120,
        "keyGroups defaulted to {}",
        cash.spec.key_groups
    );
    ensure!(cash.spec.checkpoint_interval.to_string() == "10s");
    ensure!(cash.spec.join.required == weft_crds::Part::ALL.to_vec());
    ensure!(cash.spec.join.max_future_skew.to_string() == "5m");
    ensure!(cash.spec.workers.storage.size.0 == "10Gi");
    ensure!(
        cash.spec.sources[2].event_time.format
            == weft_crds::join_pipeline::EventTimeFormat::EpochMillis
    );
    let definitions: Api<ProcessDefinition> = Api::namespaced(client.clone(), NS);
    let pd = definitions.get("cash-pickup").await?;
    ensure!(pd.spec.metrics_window.to_string() == "1m");
    ensure!(pd.spec.dimensions[0].max_values == 100);
    Ok(())
}

/// Creates a variant of the credit-card pipeline and returns the server's refusal message.
async fn refusal(client: &Client, name: &str, edit: impl FnOnce(&mut Value)) -> Result<String> {
    let mut object = parse_dynamic(&example("credit-card/joinpipeline.yaml")?)?.remove(0);
    object.metadata.name = Some(name.to_string());
    edit(&mut object.data);
    match dynamic_api::<JoinPipeline>(client)
        .create(&PostParams::default(), &object)
        .await
    {
        Ok(_) => bail!("{name}: the server accepted it"),
        Err(kube::Error::Api(status)) => {
            ensure!(
                status.code == 422,
                "{name}: expected 422 Invalid, got {status:?}"
            );
            Ok(status.message)
        }
        Err(other) => Err(other.into()),
    }
}

async fn schema_violations_are_refused(client: &Client) -> Result<()> {
    let message = refusal(client, "zero-key-groups", |d| {
        d["spec"]["keyGroups"] = json!(0)
    })
    .await?;
    ensure!(
        message.contains("spec.keyGroups") && message.contains("greater than or equal to 1"),
        "keyGroups: 0 refused with {message:?}"
    );
    let message = refusal(client, "no-tracking-number", |d| {
        if let Some(source) = d["spec"]["sources"][0].as_object_mut() {
            source.remove("trackingNumber");
        }
    })
    .await?;
    ensure!(
        message.contains("spec.sources.trackingNumber") && message.contains("Required value"),
        "missing tracking number refused with {message:?}"
    );
    let message = refusal(client, "bad-lateness", |d| {
        d["spec"]["join"]["lateness"] = json!("1 hour")
    })
    .await?;
    ensure!(
        message.contains("spec.join.lateness"),
        "bad duration refused with {message:?}"
    );
    let message = refusal(client, "bad-pointer", |d| {
        d["spec"]["sources"][0]["trackingNumber"] = json!("traceId")
    })
    .await?;
    ensure!(
        message.contains("spec.sources.trackingNumber"),
        "bad pointer refused with {message:?}"
    );
    let message = refusal(client, "bad-part", |d| {
        d["spec"]["join"]["required"] = json!(["reqest"])
    })
    .await?;
    ensure!(
        message.contains("spec.join.required") && message.contains("Unsupported value"),
        "{message:?}"
    );
    Ok(())
}

async fn scale_subresource_drives_worker_replicas(client: &Client) -> Result<()> {
    let pipelines: Api<JoinPipeline> = Api::namespaced(client.clone(), NS);
    // What `kubectl scale jp/credit-card --replicas 5` sends.
    pipelines
        .patch_scale(
            "credit-card",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await?;
    let jp = pipelines.get("credit-card").await?;
    ensure!(
        jp.spec.workers.replicas == 5,
        "spec.workers.replicas is {}",
        jp.spec.workers.replicas
    );

    let status = json!({"status": {"replicas": 3, "selector": "app.kubernetes.io/instance=credit-card", "phase": "Rescaling", "lag": {"messages": 42}}});
    pipelines
        .patch_status(
            "credit-card",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
    let scale = pipelines.get_scale("credit-card").await?;
    let scale_status = scale
        .status
        .ok_or_else(|| anyhow!("/scale has no status"))?;
    ensure!(
        scale_status.replicas == 3,
        "/scale status.replicas {}",
        scale_status.replicas
    );
    ensure!(scale_status.selector.as_deref() == Some("app.kubernetes.io/instance=credit-card"));
    ensure!(scale.spec.and_then(|s| s.replicas) == Some(5));
    Ok(())
}

async fn table(client: &Client, plural: &str) -> Result<Value> {
    let request = http::Request::get(format!("/apis/weft.dev/v1alpha1/namespaces/{NS}/{plural}"))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())?;
    Ok(serde_json::from_str(&client.request_text(request).await?)?)
}

fn column_names(table: &Value) -> Vec<String> {
    table["columnDefinitions"]
        .as_array()
        .map(|cols| {
            cols.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn row<'t>(table: &'t Value, name: &str) -> Result<&'t Vec<Value>> {
    table["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["cells"][0] == json!(name)))
        .and_then(|r| r["cells"].as_array())
        .ok_or_else(|| anyhow!("no row {name} in {table}"))
}

async fn printer_columns_show(client: &Client) -> Result<()> {
    let pipelines = table(client, "joinpipelines").await?;
    ensure!(
        column_names(&pipelines) == ["Name", "Phase", "Replicas", "Lag", "Age"],
        "{:?}",
        column_names(&pipelines)
    );
    let cells = row(&pipelines, "credit-card")?;
    ensure!(
        cells[1] == json!("Rescaling") && cells[2] == json!(3) && cells[3] == json!(42),
        "cells {cells:?}"
    );

    let definitions: Api<ProcessDefinition> = Api::namespaced(client.clone(), NS);
    let status =
        json!({"status": {"stepCount": 6, "pipelines": ["credit-card", "cards-backfill"]}});
    definitions
        .patch_status(
            "credit-card",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
    let definitions = table(client, "processdefinitions").await?;
    ensure!(
        column_names(&definitions) == ["Name", "Steps", "Pipelines", "Age"],
        "{:?}",
        column_names(&definitions)
    );
    let cells = row(&definitions, "credit-card")?;
    ensure!(cells[1] == json!(6), "Steps column {cells:?}");
    let pipelines = cells[2].as_str().unwrap_or_default();
    ensure!(
        pipelines.contains("credit-card") && pipelines.contains("cards-backfill"),
        "Pipelines column {cells:?}"
    );
    Ok(())
}

/// `kubectl explain` reads the published OpenAPI schema; check that every property of both
/// resources has a description there.
async fn every_field_is_documented(client: &Client) -> Result<()> {
    let request = http::Request::get("/openapi/v2").body(Vec::new())?;
    // CRD schemas reach the aggregated OpenAPI document shortly after the CRD is Established.
    let deadline = tokio::time::Instant::now() + WAIT;
    let definitions = loop {
        let spec: Value = serde_json::from_str(&client.request_text(request.clone()).await?)?;
        let defs = spec["definitions"].clone();
        if defs.get("dev.weft.v1alpha1.JoinPipeline").is_some()
            && defs.get("dev.weft.v1alpha1.ProcessDefinition").is_some()
        {
            break defs;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "CRD schemas not published in /openapi/v2 within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut undocumented = Vec::new();
    let mut documented = 0;
    for kind in ["JoinPipeline", "ProcessDefinition"] {
        let schema = &definitions[format!("dev.weft.v1alpha1.{kind}")];
        for part in ["spec", "status"] {
            walk(
                &schema["properties"][part],
                &format!("{kind}.{part}"),
                &mut undocumented,
                &mut documented,
            );
        }
    }
    ensure!(
        undocumented.is_empty(),
        "fields without a description: {undocumented:#?}"
    );
    // The published schema has every field of the CRD's own schema.
    let mut in_crds = 0;
    for (_, crd) in weft_crds::crds() {
        let crd = serde_json::to_value(&crd)?;
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
        for part in ["spec", "status"] {
            walk(
                &schema["properties"][part],
                &format!("{kind}.{part}"),
                &mut Vec::new(),
                &mut in_crds,
            );
        }
    }
    ensure!(
        documented == in_crds && documented > 50,
        "published {documented} documented fields, the CRDs have {in_crds}"
    );
    Ok(())
}

fn walk(schema: &Value, path: &str, undocumented: &mut Vec<String>, documented: &mut usize) {
    if schema.is_null() {
        undocumented.push(format!("{path} (missing)"));
        return;
    }
    if schema["description"]
        .as_str()
        .is_some_and(|d| !d.trim().is_empty())
    {
        *documented += 1;
    } else {
        undocumented.push(path.to_string());
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, child) in properties {
            walk(child, &format!("{path}.{name}"), undocumented, documented);
        }
    }
    if let Some(properties) = schema["items"]["properties"].as_object() {
        for (name, child) in properties {
            walk(child, &format!("{path}[].{name}"), undocumented, documented);
        }
    }
}

/// `kubectl explain joinpipeline.spec` lists every spec field with the start of its description.
fn kubectl_explain_documents_the_spec(cluster: &TestCluster) -> Result<()> {
    let out = cluster.kubectl(&["explain", "joinpipeline.spec"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("WEFT_SHOW_EXPLAIN").is_some() {
        eprintln!("{text}");
    }
    ensure!(
        out.status.success(),
        "kubectl explain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, crd) = weft_crds::crds()
        .into_iter()
        .find(|(file, _)| file.starts_with("joinpipelines"))
        .ok_or_else(|| anyhow!("no JoinPipeline CRD"))?;
    let crd = serde_json::to_value(crd)?;
    let properties = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    ensure!(
        properties.len() >= 10,
        "spec has {} properties",
        properties.len()
    );
    for (name, schema) in properties {
        let description = schema["description"].as_str().unwrap_or_default();
        let opening: Vec<&str> = description.split_whitespace().take(3).collect();
        ensure!(
            text.contains(&format!("   {name}\t")) || text.contains(&format!("   {name} ")),
            "{name} missing from:\n{text}"
        );
        ensure!(
            text.contains(&opening.join(" ")),
            "description of {name} ({:?}) missing from:\n{text}",
            opening.join(" ")
        );
    }
    Ok(())
}
