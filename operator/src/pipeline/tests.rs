//! Reconcile scenarios against a scripted API (tower-test, as kube-rs's controller-rs does):
//! which requests a reconcile makes, in which order, with which bodies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::Handle;
use weft_crds::{JoinPipeline, ProcessDefinition};

use super::reconcile;
use crate::builders::Capabilities;
use crate::context::{Context, Metrics};

const NS: &str = "banking";

#[derive(Clone, Debug)]
struct Call {
    method: Method,
    path: String,
    query: String,
    body: Option<Value>,
}

/// The objects the scripted API knows, by path; everything else is 404. Writes are
/// answered with what was sent.
#[derive(Default)]
struct FakeApi {
    objects: HashMap<String, Value>,
    calls: Vec<Call>,
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "not found", "reason": "NotFound", "code": 404})
}

/// What a write returns: the object sent, with the metadata a server would add.
fn with_metadata(body: Option<Value>, path: &str) -> Value {
    let mut object = body.unwrap_or_else(|| json!({}));
    if object.get("metadata").is_none() {
        let name = path
            .trim_end_matches("/status")
            .rsplit('/')
            .next()
            .unwrap_or_default();
        object["metadata"] = json!({ "name": name });
    }
    object
}

async fn serve(mut handle: Handle<Request<Body>, Response<Body>>, api: Arc<Mutex<FakeApi>>) {
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let (code, answer) = {
            let mut api = api.lock().unwrap();
            api.calls.push(Call {
                method: method.clone(),
                path: path.clone(),
                query,
                body: body.clone(),
            });
            match method {
                Method::GET => match api.objects.get(&path) {
                    Some(object) => (200, object.clone()),
                    None => (404, not_found()),
                },
                Method::POST => (201, with_metadata(body, &path)),
                // A status write answers with the whole object.
                Method::PATCH if path.ends_with("/status") => {
                    let mut object = api
                        .objects
                        .get(path.trim_end_matches("/status"))
                        .cloned()
                        .unwrap_or_else(|| json!({}));
                    object["status"] = body.map_or(Value::Null, |b| b["status"].clone());
                    (200, object)
                }
                _ => (200, with_metadata(body, &path)),
            }
        };
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
    }
}

fn examples() -> (JoinPipeline, ProcessDefinition) {
    let dir = weft_crds::repo_dir().join("manifests/examples/credit-card");
    let mut jp = None;
    let mut pd = None;
    for file in ["processdefinition.yaml", "joinpipeline.yaml"] {
        for r in weft_crds::manifest::read_file(&dir.join(file)).unwrap() {
            match r {
                weft_crds::manifest::Resource::JoinPipeline(p) => jp = Some(*p),
                weft_crds::manifest::Resource::ProcessDefinition(d) => pd = Some(*d),
            }
        }
    }
    let (mut jp, mut pd) = (jp.unwrap(), pd.unwrap());
    for meta in [&mut jp.metadata, &mut pd.metadata] {
        meta.namespace = Some(NS.into());
        meta.uid = Some("uid-1".into());
        meta.generation = Some(1);
    }
    (jp, pd)
}

const DEFINITIONS: &str = "/apis/weft.dev/v1alpha1/namespaces/banking/processdefinitions";
const STATEFULSET: &str = "/apis/apps/v1/namespaces/banking/statefulsets/weft-credit-card";
const CONFIGMAP: &str = "/api/v1/namespaces/banking/configmaps/weft-credit-card";
const STATUS: &str = "/apis/weft.dev/v1alpha1/namespaces/banking/joinpipelines/credit-card/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/banking/events";

/// The StatefulSet the operator applied for `jp` (with 120 key groups).
fn running_statefulset(jp: &JoinPipeline, pd: &ProcessDefinition) -> Value {
    let v = crate::builders::ValidatedPipeline {
        pipeline: jp.clone(),
        name: "credit-card".into(),
        namespace: NS.into(),
        definitions: vec![("credit-card".into(), pd.spec.clone())],
    };
    let mut sts = crate::builders::statefulset::build(&v, Capabilities::all());
    sts.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(super::KEY_GROUPS_ANNOTATION.into(), "120".into());
    serde_json::to_value(&sts).unwrap()
}

fn definitions_list(pds: &[ProcessDefinition]) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "ProcessDefinitionList",
           "metadata": {}, "items": pds})
}

/// Reconciles `jp` against an API holding `objects`; returns every call it made.
async fn reconcile_with(jp: JoinPipeline, mut objects: HashMap<String, Value>) -> Vec<Call> {
    objects.insert(
        STATUS.trim_end_matches("/status").to_string(),
        serde_json::to_value(&jp).unwrap(),
    );
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let api = Arc::new(Mutex::new(FakeApi {
        objects,
        calls: Vec::new(),
    }));
    let server = tokio::spawn(serve(handle, api.clone()));
    let client = Client::new(service, NS);
    let mut ctx = Context::new(client, Capabilities::all(), Arc::new(Metrics::default()));
    // No workers to ask here.
    ctx.worker_addresses = Arc::new(|_| Vec::new());
    let ctx = Arc::new(ctx);
    reconcile(Arc::new(jp), ctx).await.unwrap();
    // The client is gone with the context: the scripted API ends.
    server.await.unwrap();
    api.lock().unwrap().calls.clone()
}

fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method != Method::GET)
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

fn body_of<'c>(calls: &'c [Call], method: Method, path: &str) -> &'c Value {
    calls
        .iter()
        .find(|c| c.method == method && c.path == path)
        .and_then(|c| c.body.as_ref())
        .unwrap_or_else(|| panic!("no {method} {path}"))
}

fn condition<'v>(status: &'v Value, type_: &str) -> &'v Value {
    status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn a_new_pipeline_gets_every_child_applied_then_its_status() {
    let (jp, pd) = examples();
    let objects = HashMap::from([(DEFINITIONS.to_string(), definitions_list(&[pd]))]);
    let calls = reconcile_with(jp, objects).await;
    assert_eq!(
        writes(&calls),
        [
            format!("PATCH {CONFIGMAP}"),
            "PATCH /api/v1/namespaces/banking/services/weft-credit-card-workers".to_string(),
            "PATCH /api/v1/namespaces/banking/services/weft-credit-card-metrics".to_string(),
            "POST /api/v1/namespaces/banking/secrets".to_string(),
            format!("PATCH {STATEFULSET}"),
            format!("POST {EVENTS}"),
            "PATCH /apis/policy/v1/namespaces/banking/poddisruptionbudgets/weft-credit-card"
                .to_string(),
            format!("PATCH {STATUS}"),
        ]
    );
    // Server-side apply, as the operator's field manager.
    let sts_call = calls
        .iter()
        .find(|c| c.method == Method::PATCH && c.path == STATEFULSET)
        .unwrap();
    assert!(
        sts_call.query.contains("fieldManager=weft-operator"),
        "{}",
        sts_call.query
    );
    assert!(sts_call.query.contains("force=true"));
    let sts = body_of(&calls, Method::PATCH, STATEFULSET);
    assert_eq!(sts["metadata"]["annotations"]["weft.dev/key-groups"], "120");
    assert_eq!(
        sts["metadata"]["ownerReferences"][0]["kind"],
        "JoinPipeline"
    );
    let event = body_of(&calls, Method::POST, EVENTS);
    assert_eq!(event["reason"], "Created");
    let status = body_of(&calls, Method::PATCH, STATUS);
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(status["status"]["phase"], "Pending");
    assert_eq!(status["status"]["observedGeneration"], 1);
}

#[tokio::test]
async fn a_definition_change_rerenders_the_configuration_and_says_so() {
    let (jp, mut pd) = examples();
    // What runs was rendered from the definition before its change.
    let before = crate::builders::configmap::build(&crate::builders::ValidatedPipeline {
        pipeline: jp.clone(),
        name: "credit-card".into(),
        namespace: NS.into(),
        definitions: vec![("credit-card".into(), pd.spec.clone())],
    })
    .unwrap();
    let running = running_statefulset(&jp, &pd);
    pd.spec.metrics_window = weft_crds::Duration::from_secs(300);
    let objects = HashMap::from([
        (DEFINITIONS.to_string(), definitions_list(&[pd])),
        (
            CONFIGMAP.to_string(),
            serde_json::to_value(&before).unwrap(),
        ),
        (
            "/api/v1/namespaces/banking/secrets/weft-credit-card-admin".to_string(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "weft-credit-card-admin"}}),
        ),
        (STATEFULSET.to_string(), running),
    ]);
    let calls = reconcile_with(jp, objects).await;
    let cm = body_of(&calls, Method::PATCH, CONFIGMAP);
    assert!(
        cm["data"]["pipeline.yaml"]
            .as_str()
            .unwrap()
            .contains("metricsWindow: 5m")
    );
    let reasons: Vec<&Value> = calls
        .iter()
        .filter(|c| c.method == Method::POST && c.path == EVENTS)
        .map(|c| &c.body.as_ref().unwrap()["reason"])
        .collect();
    assert_eq!(
        reasons,
        [&json!("ConfigurationUpdated")],
        "no Created: it existed"
    );
    // The admin token is never re-applied.
    assert!(!writes(&calls).iter().any(|w| w.contains("/secrets")));
}

#[tokio::test]
async fn an_invalid_spec_applies_nothing_and_names_the_field() {
    let (mut jp, pd) = examples();
    jp.spec.processes.names.push("missing".into());
    let objects = HashMap::from([(DEFINITIONS.to_string(), definitions_list(&[pd]))]);
    let calls = reconcile_with(jp, objects).await;
    assert_eq!(
        writes(&calls),
        [format!("POST {EVENTS}"), format!("PATCH {STATUS}")]
    );
    let status = body_of(&calls, Method::PATCH, STATUS);
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("spec.processes.names[1]"),
        "{degraded}"
    );
    assert_eq!(status["status"]["phase"], "Failed");
    assert_eq!(body_of(&calls, Method::POST, EVENTS)["type"], "Warning");
}

#[tokio::test]
async fn a_key_groups_change_is_refused_and_the_workers_are_left_alone() {
    let (mut jp, pd) = examples();
    let running = running_statefulset(&jp, &pd);
    jp.spec.key_groups = 60;
    let objects = HashMap::from([
        (DEFINITIONS.to_string(), definitions_list(&[pd])),
        (STATEFULSET.to_string(), running),
    ]);
    let calls = reconcile_with(jp, objects).await;
    assert_eq!(
        writes(&calls),
        [format!("POST {EVENTS}"), format!("PATCH {STATUS}")]
    );
    let status = body_of(&calls, Method::PATCH, STATUS);
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["reason"], "KeyGroupsImmutable");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("from 120 to 60")
    );
    assert_eq!(status["status"]["phase"], "Degraded");
}
