//! `weft-worker replay` through the real binary: the report of a definition that fits the
//! data, of one that misses a step (the unmatched actions show which), and of an invalid one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;
use common::{example, worker};

fn traffic(dir: &Path) -> PathBuf {
    let file = dir.join("traffic.jsonl");
    // 100 s of event time: long enough for some applications to be sent back from review.
    let out = worker()
        .args(["generate", "--actions", "20000", "--seed", "5", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    file
}

fn replay(definition: &Path, input: &Path, format: &str) -> Output {
    worker()
        .arg("replay")
        .arg("-f")
        .arg(definition)
        .arg("-f")
        .arg(format!("{}/joinpipeline.yaml", example()))
        .arg("--input")
        .arg(format!("channel-logs={}", input.display()))
        .args(["--format", format])
        .output()
        .unwrap()
}

fn report(definition: &Path, input: &Path) -> Value {
    let out = replay(definition, input, "json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_report_accounts_for_every_action() {
    let dir = tempfile::tempdir().unwrap();
    let input = traffic(dir.path());
    let definition = PathBuf::from(format!("{}/processdefinition.yaml", example()));
    let r = report(&definition, &input);
    let p = &r["processes"]["credit-card"];
    let matched: u64 = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["actions"].as_u64().unwrap())
        .sum();
    let total = r["actions"].as_u64().unwrap() + r["incompleteActions"].as_u64().unwrap();
    assert_eq!(matched + p["unmatched"]["actions"].as_u64().unwrap(), total);
    assert_eq!(p["steps"][0]["step"], "apply");
    // Failed applications (HTTP 500) match no step: the report says so.
    let statuses = &p["unmatched"]["commonValues"]["/response/status"];
    assert_eq!(statuses[0]["value"], "500", "{statuses}");
    // The generator sends some applications back from review: they go back to apply.
    assert!(p["goingBack"]["instances"].as_u64().unwrap() > 0);
    assert!(
        p["goingBack"]["examples"][0]
            .as_str()
            .unwrap()
            .contains("apply>review>apply")
    );
    assert!(p["summary"]["instances"]["started"].as_i64().unwrap() > 0);

    let text = replay(&definition, &input, "text");
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("ProcessDefinition credit-card"), "{text}");
    assert!(text.contains("match no step"), "{text}");
}

#[test]
fn a_missing_step_shows_among_the_unmatched_actions() {
    let dir = tempfile::tempdir().unwrap();
    let input = traffic(dir.path());
    // The definition a user wrote by intuition: no review step.
    let full = std::fs::read_to_string(format!("{}/processdefinition.yaml", example())).unwrap();
    let without_review = full.replace(
        "    - name: review\n      match: request.path == '/cc/review' && response.status == 200\n      sla: 48h\n",
        "",
    );
    assert_ne!(full, without_review);
    let definition = dir.path().join("no-review.yaml");
    std::fs::write(&definition, without_review).unwrap();
    let r = report(&definition, &input);
    let p = &r["processes"]["credit-card"];
    let count = |report: &Value, path: &str| -> u64 {
        report["processes"]["credit-card"]["unmatched"]["commonValues"]["/request/path"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["value"] == path)
            .map_or(0, |v| v["count"].as_u64().unwrap())
    };
    // Every review action, matched by the full definition or not, is now unmatched.
    let full_report = report(
        &PathBuf::from(format!("{}/processdefinition.yaml", example())),
        &input,
    );
    let reviews = full_report["processes"]["credit-card"]["steps"][1]["actions"]
        .as_u64()
        .unwrap();
    assert!(reviews > 0);
    assert_eq!(
        count(&r, "/cc/review"),
        reviews + count(&full_report, "/cc/review")
    );
    assert!(
        p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["step"] != "review")
    );
}

#[test]
fn an_invalid_definition_fails_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let input = traffic(dir.path());
    let full = std::fs::read_to_string(format!("{}/processdefinition.yaml", example())).unwrap();
    let broken = full.replace(
        "match: request.path == '/cc/issue' && response.status == 200",
        "match: request.path == '/cc/issue' &&",
    );
    let definition = dir.path().join("broken.yaml");
    std::fs::write(&definition, broken).unwrap();
    let out = replay(&definition, &input, "text");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.steps[2].match"), "{err}");
}
