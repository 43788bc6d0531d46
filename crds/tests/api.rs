//! The committed YAML (CRDs and examples) and the Rust types agree, and validation names the
//! exact field of every problem.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, outside #[test] fns

use std::path::PathBuf;

use weft_crds::manifest::{Resource, parse_documents, read_file, validate_set};
use weft_crds::{JoinPipeline, ProcessDefinition};

fn repo() -> PathBuf {
    weft_crds::repo_dir()
}

fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in std::fs::read_dir(repo().join("manifests/examples")).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn credit_card() -> (ProcessDefinition, JoinPipeline) {
    let dir = repo().join("manifests/examples/credit-card");
    let mut pd = None;
    let mut jp = None;
    for file in ["processdefinition.yaml", "joinpipeline.yaml"] {
        for resource in read_file(&dir.join(file)).unwrap() {
            match resource {
                Resource::ProcessDefinition(p) => pd = Some(*p),
                Resource::JoinPipeline(j) => jp = Some(*j),
            }
        }
    }
    (pd.unwrap(), jp.unwrap())
}

fn errors_of(pd: &ProcessDefinition, jp: &JoinPipeline) -> Vec<String> {
    match jp
        .spec
        .validate_with_processes(&[("credit-card", &pd.spec)])
    {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn committed_crds_match_the_rust_types() {
    for (file, crd) in weft_crds::crds() {
        let generated = weft_crds::crd_yaml(&crd).unwrap();
        let committed = std::fs::read_to_string(repo().join("manifests/crds").join(file)).unwrap();
        assert!(
            committed == generated,
            "manifests/crds/{file} is stale: run `cargo run -p weft-crds --bin crdgen`"
        );
    }
}

#[test]
fn every_example_loads_and_validates() {
    let files = example_files();
    assert!(files.len() >= 4, "examples: {files:?}");
    let mut resources = Vec::new();
    for file in &files {
        resources.extend(read_file(file).unwrap());
    }
    let kinds: Vec<String> = resources
        .iter()
        .map(|r| match r {
            Resource::ProcessDefinition(_) => format!("pd/{}", r.name()),
            Resource::JoinPipeline(_) => format!("jp/{}", r.name()),
        })
        .collect();
    for expected in [
        "pd/credit-card",
        "jp/credit-card",
        "pd/cash-pickup",
        "jp/cash-pickup",
    ] {
        assert!(
            kinds.contains(&expected.to_string()),
            "{expected} missing from {kinds:?}"
        );
    }
    let failures = validate_set(&resources);
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn the_examples_are_what_their_documentation_says() {
    let (pd, jp) = credit_card();
    let steps: Vec<&str> = pd.spec.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        steps,
        ["apply", "review", "issue", "make", "deliver", "activate"]
    );
    assert!(pd.spec.steps[1].sla.is_some(), "review has an SLA");
    assert_eq!(
        jp.spec.sources.len(),
        1,
        "one topic carries all three parts"
    );
    assert_eq!(jp.spec.sources[0].parts(), weft_crds::Part::ALL.to_vec());

    let cash = read_file(&repo().join("manifests/examples/cash-pickup/joinpipeline.yaml")).unwrap();
    let Resource::JoinPipeline(cash) = &cash[0] else {
        panic!("not a JoinPipeline")
    };
    let parts: Vec<_> = cash.spec.sources.iter().map(|s| s.part).collect();
    assert_eq!(
        parts,
        [
            Some(weft_crds::Part::Request),
            Some(weft_crds::Part::Response),
            Some(weft_crds::Part::Tracking)
        ]
    );
}

#[test]
fn a_misspelled_field_is_reported_with_its_exact_path() {
    let (mut pd, jp) = credit_card();
    pd.spec.steps[2].match_ = "request.pth == '/cc/issue'".to_string();
    assert_eq!(
        errors_of(&pd, &jp),
        ["ProcessDefinition/credit-card spec.steps[2].match: unknown field /request/pth"]
    );
    let err = jp
        .spec
        .validate_with_processes(&[("credit-card", &pd.spec)])
        .unwrap_err();
    assert_eq!(err.0[0].path, "spec.steps[2].match");
    assert_eq!(err.0[0].message, "unknown field /request/pth");
}

#[test]
fn every_problem_is_reported_at_once() {
    let (mut pd, mut jp) = credit_card();
    pd.spec.steps[3].name = "review".into();
    pd.spec.steps[0].match_ = "request.path ==".into();
    pd.spec.steps[4].match_ = "foo.bar == 1".into();
    pd.spec.dimensions[0].field = "/trackng/channel".parse().unwrap();
    pd.spec.outcomes[0].match_ = "response.decison == 'approved'".into();
    jp.spec.join.dedupe = "30m".parse().unwrap();
    jp.spec.join.required = vec![weft_crds::Part::Request, weft_crds::Part::Request];
    jp.spec
        .kafka
        .properties
        .insert("group.id".into(), "mine".into());
    jp.spec.workers.replicas = 121;
    let errors = errors_of(&pd, &jp);
    let expected_prefixes = [
        "spec.kafka.properties.group.id: is managed by Weft",
        "spec.join.required[1]: part request is listed twice",
        "spec.join.dedupe: dedupe horizon 30m is shorter than lateness 1h",
        "spec.workers.replicas: 121 workers for 120 key groups",
        "ProcessDefinition/credit-card spec.steps[3].name: duplicate step name \"review\" (also spec.steps[1])",
        "ProcessDefinition/credit-card spec.steps[0].match: invalid CEL",
        "ProcessDefinition/credit-card spec.steps[4].match: unknown variable \"foo\"",
        "ProcessDefinition/credit-card spec.dimensions[0].field: unknown field /trackng/channel",
        "ProcessDefinition/credit-card spec.outcomes[0].match: unknown field /response/decison",
    ];
    for prefix in expected_prefixes {
        assert!(
            errors.iter().any(|e| e.starts_with(prefix)),
            "no error starting {prefix:?} in {errors:#?}"
        );
    }
    assert_eq!(
        errors.len(),
        expected_prefixes.len(),
        "each problem once: {errors:#?}"
    );
}

#[test]
fn pipeline_rules_name_their_fields() {
    let (_, jp) = credit_card();
    let check = |edit: &dyn Fn(&mut JoinPipeline), path: &str, needle: &str| {
        let mut jp = jp.clone();
        edit(&mut jp);
        let errors = jp.spec.validate().unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.path == path && e.message.contains(needle)),
            "expected {path}: ..{needle}.. in {errors}"
        );
    };
    check(
        &|jp| jp.spec.sources[0].part = Some(weft_crds::Part::Request),
        "spec.sources[0]",
        "not both",
    );
    check(
        &|jp| {
            jp.spec.sources[0]
                .discriminator
                .as_mut()
                .unwrap()
                .values
                .retain(|_, p| *p != weft_crds::Part::Tracking);
        },
        "spec.join.required[2]",
        "required part tracking has no source",
    );
    check(
        &|jp| jp.spec.outputs.alerts = Some("bank.channel.logs".into()),
        "spec.outputs.alerts",
        "also a source topic",
    );
    check(
        &|jp| jp.spec.outputs.metrics = None,
        "spec.outputs.metrics",
        "required when spec.processes is set",
    );
    check(
        &|jp| jp.spec.sources[0].fields[2].name = "path".into(),
        "spec.sources[0].fields[2].name",
        "duplicate field \"path\" for part request (also spec.sources[0].fields[0])",
    );
    check(
        &|jp| jp.spec.sources[0].fields[0].name = "eventTime".into(),
        "spec.sources[0].fields[0].name",
        "reserved",
    );
    check(
        &|jp| jp.spec.sources[0].filter[0].values.clear(),
        "spec.sources[0].filter[0].values",
        "at least one value",
    );
    check(
        &|jp| jp.spec.autoscaling.as_mut().unwrap().lag_per_replica = Some(10),
        "spec.autoscaling",
        "exactly one",
    );
    check(
        &|jp| jp.spec.autoscaling.as_mut().unwrap().min_replicas = 20,
        "spec.autoscaling.minReplicas",
        "above",
    );
    check(
        &|jp| jp.spec.checkpoint_interval = "10ms".parse().unwrap(),
        "spec.checkpointInterval",
        "100ms",
    );
}

#[test]
fn an_sla_needs_an_alerts_topic() {
    let (pd, mut jp) = credit_card();
    jp.spec.outputs.alerts = None;
    assert_eq!(
        errors_of(&pd, &jp),
        [
            "spec.outputs.alerts: required: ProcessDefinition/credit-card has an SLA on step \"review\""
        ]
    );
}

#[test]
fn predicates_may_use_macros_and_whole_payloads() {
    let (mut pd, mut jp) = credit_card();
    pd.spec.steps[0].match_ =
        "has(request.path) && [1, 2].exists(x, x == response.status) && tracking.eventTime > 0 && trackingNumber != ''"
            .into();
    assert_eq!(errors_of(&pd, &jp), Vec::<String>::new());
    pd.spec.steps[0].match_ = "request.headers.host == 'x'".into();
    assert_eq!(
        errors_of(&pd, &jp),
        ["ProcessDefinition/credit-card spec.steps[0].match: unknown field /request/headers/host"]
    );
    jp.spec.sources[0].keep_payload = true;
    assert_eq!(errors_of(&pd, &jp), Vec::<String>::new());
}

#[test]
fn defaults_fill_what_a_minimal_pipeline_leaves_out() {
    let text = r#"
apiVersion: weft.dev/v1alpha1
kind: JoinPipeline
metadata: {name: minimal}
spec:
  kafka: {bootstrapServers: "k:9092"}
  sources:
    - {name: all, topics: [t], part: request, trackingNumber: /tn, eventTime: {pointer: /ts}}
  join: {required: [request]}
  outputs: {actions: a, incomplete: i, deadLetters: d}
"#;
    let resources = parse_documents("inline", text).unwrap();
    let Resource::JoinPipeline(jp) = &resources[0] else {
        panic!()
    };
    assert_eq!(jp.spec.key_groups, 120);
    assert_eq!(jp.spec.join.lateness.to_string(), "1h");
    assert_eq!(jp.spec.workers.replicas, 1);
    assert_eq!(jp.spec.checkpoint_interval.to_string(), "10s");
    jp.spec.validate().unwrap();
}

#[test]
fn malformed_documents_are_errors_not_panics() {
    let wrong_kind = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
    let err = parse_documents("f.yaml", wrong_kind)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "f.yaml: document 0: v1/ConfigMap is not a weft.dev/v1alpha1 resource"
    );

    let bad_duration = "apiVersion: weft.dev/v1alpha1\nkind: ProcessDefinition\nmetadata: {name: x}\nspec:\n  instanceKey: {fields: [/request/a]}\n  instanceTimeout: 3 days\n  steps: [{name: a, match: 'true'}]\n";
    let err = parse_documents("f.yaml", bad_duration)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.instanceTimeout") && err.contains("invalid duration"),
        "{err}"
    );

    let bad_pointer = "apiVersion: weft.dev/v1alpha1\nkind: ProcessDefinition\nmetadata: {name: x}\nspec:\n  instanceKey: {fields: [request/a]}\n  steps: [{name: a, match: 'true'}]\n";
    let err = parse_documents("f.yaml", bad_pointer)
        .unwrap_err()
        .to_string();
    assert!(err.contains("must start with '/'"), "{err}");
}
