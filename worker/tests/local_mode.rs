//! Local mode end to end, through the real binary: generated traffic against the truth,
//! bad input going to the dead letters, and `kill -9` at random points followed by a rerun
//! that ends with exactly the uninterrupted run's outputs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, outside #[test] fns

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{example, holds_nothing, metric_values, worker};

fn resources() -> Vec<String> {
    ["processdefinition.yaml", "joinpipeline.yaml"]
        .iter()
        .flat_map(|f| ["-f".to_string(), format!("{}/{f}", example())])
        .collect()
}

fn generate(dir: &Path, actions: u64, seed: u64) -> (PathBuf, Value) {
    let file = dir.join(format!("traffic-{actions}-{seed}.jsonl"));
    let out = worker()
        .args([
            "generate",
            "--actions",
            &actions.to_string(),
            "--seed",
            &seed.to_string(),
            "-o",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: Value =
        serde_json::from_slice(&std::fs::read(format!("{}.truth.json", file.display())).unwrap())
            .unwrap();
    (file, truth)
}

fn local(input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut cmd = worker();
    cmd.arg("local")
        .args(resources())
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--quiet")
        .args(extra);
    cmd
}

fn run_local(input: &Path, output: &Path, extra: &[&str]) -> Value {
    let out = local(input, output, extra).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(output.join("summary.json")).unwrap()).unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn generated_traffic_matches_its_truth() {
    let dir = tempfile::tempdir().unwrap();
    let (input, truth) = generate(dir.path(), 20_000, 7);
    let out = dir.path().join("out");
    let summary = run_local(&input, &out, &[]);

    assert_eq!(summary["events"], truth["lines"]);
    assert_eq!(summary["actions"]["complete"], truth["complete"]);
    assert_eq!(summary["actions"]["incomplete"], truth["incomplete"]);
    assert_eq!(summary["duplicates"], truth["duplicates"]);
    assert_eq!(summary["filtered"], truth["filtered"]);
    assert_eq!(summary["deadLetters"], 0);

    let actions = lines(&out.join("actions.jsonl"));
    assert_eq!(actions.len() as u64, truth["complete"].as_u64().unwrap());
    let keys: BTreeSet<String> = actions
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["trackingNumber"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys.len(), actions.len(), "each action once");
    let first: Value = serde_json::from_str(&actions[0]).unwrap();
    for part in ["request", "response", "tracking"] {
        assert!(first[part]["eventTime"].is_i64(), "{first}");
    }
    assert!(
        first["request"]["path"]
            .as_str()
            .unwrap()
            .starts_with("/cc/"),
        "projected fields: {first}"
    );
    assert!(
        first["request"].get("method").is_none(),
        "unprojected fields are not kept: {first}"
    );

    for line in lines(&out.join("incomplete.jsonl")) {
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["missing"].as_array().unwrap().len(), 1, "{v}");
    }

    // The process stage ran on the joined actions: every action is matched or unmatched,
    // the windowed records add up to the summary, and metrics.prom holds the totals.
    let p = &summary["processes"]["credit-card"];
    assert_eq!(
        p["actions"].as_u64().unwrap(),
        truth["complete"].as_u64().unwrap() + truth["incomplete"].as_u64().unwrap()
    );
    let started = p["instances"]["started"].as_i64().unwrap();
    assert!(started > 0, "{p}");
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    for line in lines(&out.join("metrics.jsonl")) {
        let v: Value = serde_json::from_str(&line).unwrap();
        latest.insert(v["id"].as_str().unwrap().to_string(), v);
    }
    let of_kind = |metric: &'static str| latest.values().filter(move |v| v["metric"] == metric);
    let started_in_records: i64 = of_kind("step")
        .flat_map(|v| metric_values(v).unwrap().values())
        .map(|step| step["started"].as_i64().unwrap())
        .sum();
    assert_eq!(started_in_records, started);
    let completed: i64 = of_kind("completed")
        .map(|v| v["count"].as_i64().unwrap())
        .sum();
    assert_eq!(completed, p["instances"]["completed"].as_i64().unwrap());
    let returns: i64 = of_kind("return")
        .flat_map(|v| metric_values(v).unwrap().values())
        .map(|n| n.as_i64().unwrap())
        .sum();
    let summary_returns: i64 = (p["returns"].as_object().unwrap().values())
        .map(|n| n.as_i64().unwrap())
        .sum();
    assert_eq!(returns, summary_returns);
    let prom = std::fs::read_to_string(out.join("metrics.prom")).unwrap();
    assert!(
        prom.contains(&format!(
            "weft_process_instances_started_total{{process=\"credit-card\"}} {started}"
        )),
        "{prom}"
    );
}

#[test]
fn bad_lines_go_to_the_dead_letters_and_good_lines_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let (input, truth) = generate(dir.path(), 2_000, 3);
    let good = std::fs::read_to_string(&input).unwrap();
    let bad_lines = [
        ("not-json", "this is not json".to_string()),
        (
            "not-json",
            r#"{"logType":"REQ","traceId":"x1","ts":1763798400000,"env":"prod""#.to_string(),
        ),
        (
            "no-tracking-number",
            r#"{"logType":"REQ","ts":1763798400000,"env":"prod"}"#.to_string(),
        ),
        (
            "no-tracking-number",
            r#"{"logType":"REQ","traceId":{"a":1},"ts":1763798400000,"env":"prod"}"#.to_string(),
        ),
        (
            "no-event-time",
            r#"{"logType":"REQ","traceId":"x2","env":"prod"}"#.to_string(),
        ),
        (
            "bad-event-time",
            r#"{"logType":"REQ","traceId":"x3","ts":"yesterday","env":"prod"}"#.to_string(),
        ),
        (
            "implausible-event-time",
            r#"{"logType":"REQ","traceId":"x4","ts":1763798400,"env":"prod"}"#.to_string(),
        ),
        (
            "no-discriminator",
            r#"{"traceId":"x5","ts":1763798400000,"env":"prod"}"#.to_string(),
        ),
        (
            "unknown-discriminator",
            r#"{"logType":"AUDIT","traceId":"x6","ts":1763798400000,"env":"prod"}"#.to_string(),
        ),
        (
            "oversized",
            format!(
                r#"{{"logType":"REQ","traceId":"x7","ts":1763798400000,"env":"prod","pad":"{}"}}"#,
                "x".repeat(1 << 20)
            ),
        ),
        ("not-json", "\u{feff}{\u{0}}".to_string()),
    ];
    // A blank line is no message, but it still counts in line numbers.
    let mut mixed = String::from("\n");
    for (i, line) in good.lines().enumerate() {
        mixed.push_str(line);
        mixed.push('\n');
        if i % 150 == 0 && i / 150 < bad_lines.len() {
            mixed.push_str(&bad_lines[i / 150].1);
            mixed.push('\n');
        }
    }
    let mixed_path = dir.path().join("mixed.jsonl");
    std::fs::write(&mixed_path, &mixed).unwrap();

    let clean = run_local(&input, &dir.path().join("clean"), &[]);
    let summary = run_local(&mixed_path, &dir.path().join("mixed"), &[]);
    assert_eq!(summary["deadLetters"], bad_lines.len() as u64);
    assert_eq!(summary["actions"], clean["actions"]);
    assert_eq!(summary["actions"]["complete"], truth["complete"]);
    assert_eq!(
        lines(&dir.path().join("mixed/actions.jsonl")),
        lines(&dir.path().join("clean/actions.jsonl")),
        "good lines give the same actions"
    );

    let letters: Vec<Value> = lines(&dir.path().join("mixed/dead-letters.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = bad_lines.iter().map(|(r, _)| *r).collect();
    assert_eq!(reasons, expected);
    for letter in &letters {
        assert!(
            letter["line"].as_u64().unwrap() > 0
                && letter["offset"].is_u64()
                && !letter["detail"].as_str().unwrap().is_empty()
        );
    }
    // The position is exact: the offset points at the bad line in the input.
    let third = &letters[2];
    let offset = third["offset"].as_u64().unwrap() as usize;
    assert!(mixed[offset..].starts_with(&bad_lines[2].1));
    assert_eq!(
        third["line"].as_u64().unwrap() as usize,
        mixed[..offset].matches('\n').count() + 1
    );
    assert_eq!(summary["deadLettersByReason"]["not-json"], 3);
}

#[test]
fn killed_runs_resume_and_end_with_the_uninterrupted_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = generate(dir.path(), 60_000, 11);
    let reference = dir.path().join("reference");
    let expected = run_local(&input, &reference, &["--checkpoint-interval", "100ms"]);

    let out = dir.path().join("killed");
    // Kill points from a fixed seed, spread over a run's length.
    let run_time = Duration::from_secs_f64(expected["seconds"].as_f64().unwrap().max(0.2));
    let mut rng = weft_worker::generate::Rng::new(42);
    let mut killed_mid_run = 0;
    for _ in 0..4 {
        let mut child = local(
            &input,
            &out,
            &["--checkpoint-interval", "100ms", "--max-hot-mib", "1"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        // Each kill lands within 10-35% of a full run, so at least two land before the end.
        let at = run_time.mul_f64(0.10 + rng.below(25) as f64 / 100.0);
        let deadline = Instant::now() + at;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            // SIGKILL: no chance to flush or checkpoint.
            child.kill().unwrap();
            killed_mid_run += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        killed_mid_run >= 2,
        "only {killed_mid_run} kills landed mid-run"
    );
    let summary = run_local(
        &input,
        &out,
        &["--checkpoint-interval", "100ms", "--max-hot-mib", "1"],
    );
    assert!(summary["restarts"].as_u64().unwrap() >= 2, "{summary}");

    // Metric records are upserts by id: when late changes are re-emitted depends on when
    // checkpoints happen, the final value of each id does not. A window whose count went
    // back to zero reads as no window: whether the zero was emitted depends on whether an
    // emission saw it before (and a restore rebuilds windows without the zeros).
    let latest = |dir: &Path| -> BTreeMap<String, Value> {
        let all: BTreeMap<String, Value> = lines(&dir.join("metrics.jsonl"))
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["id"].as_str().unwrap().to_string(), v)
            })
            .collect();
        all.into_iter().filter(|(_, v)| !holds_nothing(v)).collect()
    };
    let want_metrics = latest(&reference);
    assert!(!want_metrics.is_empty(), "the process stage ran");
    assert_eq!(latest(&out), want_metrics);
    for file in [
        "actions.jsonl",
        "incomplete.jsonl",
        "dead-letters.jsonl",
        "alerts.jsonl",
    ] {
        let got = lines(&out.join(file));
        let want = lines(&reference.join(file));
        assert_eq!(got.len(), want.len(), "{file}: every record exactly once");
        assert_eq!(
            got.iter().collect::<BTreeSet<_>>(),
            want.iter().collect::<BTreeSet<_>>(),
            "{file}"
        );
    }
    for key in [
        "events",
        "actions",
        "duplicates",
        "deadLetters",
        "filtered",
        "processes",
    ] {
        assert_eq!(summary[key], expected[key], "{key}");
    }
    // The totals' exposition, byte for byte (each family's samples in a fixed order).
    let prom = |dir: &Path| std::fs::read_to_string(dir.join("metrics.prom")).unwrap();
    assert_eq!(prom(&out), prom(&reference));
    assert!(
        summary["state"]["actionsPersisted"].as_u64().unwrap() > 0,
        "the 1 MiB budget forced state into RocksDB"
    );
    assert!(
        summary["state"]["peakDiskBytes"].as_u64().unwrap() > 0,
        "the state written mid-run is on disk: {}",
        summary["state"]
    );
}

#[test]
fn a_finished_run_keeps_only_its_counts_and_a_rerun_writes_the_same_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = generate(dir.path(), 3_000, 5);
    let out = dir.path().join("out");
    let first = run_local(&input, &out, &[]);
    let started = first["processes"]["credit-card"]["instances"]["started"]
        .as_i64()
        .unwrap();
    assert!(started > 0, "{first}");
    let read = |file: &str| std::fs::read_to_string(out.join(file)).unwrap();
    let (metrics, prom) = (read("metrics.jsonl"), read("metrics.prom"));

    // The last checkpoint of a finished run deleted the instances instead of writing them:
    // nothing resumes a finished run.
    let store = weft_worker::state::Store::open(&out.join("state")).unwrap();
    assert_eq!(store.process_instances().unwrap().len(), 0);
    drop(store);

    // A rerun reads no input and writes the summary and the totals again from the
    // checkpoint record's counts: the same numbers, nothing emitted twice.
    let second = run_local(&input, &out, &[]);
    assert_eq!(second["restarts"], 1);
    for key in [
        "events",
        "actions",
        "duplicates",
        "deadLetters",
        "processes",
    ] {
        assert_eq!(second[key], first[key], "{key}");
    }
    assert_eq!(read("metrics.prom"), prom);
    assert_eq!(read("metrics.jsonl"), metrics);
}
