//! `weft-worker validate`: exit 0 on the examples, exit 1 naming the exact field otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, outside #[test] fns

mod common;
use common::{examples, worker};

#[test]
fn the_examples_are_valid() {
    let out = worker()
        .args(["validate", "-f"])
        .arg(examples())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(": valid")).count(),
        4,
        "{stdout}"
    );
}

#[test]
fn a_bad_field_is_named_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let pd =
        std::fs::read_to_string(examples().join("credit-card/processdefinition.yaml")).unwrap();
    let jp = std::fs::read_to_string(examples().join("credit-card/joinpipeline.yaml")).unwrap();
    let broken = pd.replace("request.path == '/cc/issue'", "request.pth == '/cc/issue'");
    assert_ne!(broken, pd);
    std::fs::write(dir.path().join("pd.yaml"), broken).unwrap();
    std::fs::write(dir.path().join("jp.yaml"), jp).unwrap();

    let out = worker()
        .args(["validate", "-f"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "JoinPipeline/credit-card: invalid: ProcessDefinition/credit-card spec.steps[2].match: unknown field /request/pth"
        ),
        "{stdout}"
    );
}

#[test]
fn an_unreadable_file_is_an_error_not_a_panic() {
    let out = worker()
        .args(["validate", "-f", "/nonexistent/weft.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/weft.yaml"));
}

#[test]
fn a_reader_that_goes_away_ends_the_output_not_the_run() {
    let mut child = worker()
        .args(["validate", "-f"])
        .arg(examples())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Like `| head -0`: the reading end closed before anything is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
