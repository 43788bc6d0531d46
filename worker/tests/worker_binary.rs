//! `weft-worker run`, the process a pod runs, against the mock cluster: the admin API
//! (probes, metrics, status, the token-protected checkpoint endpoint), SIGTERM ending in a
//! final checkpoint and exit 0, and a restart resuming from it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, outside #[test] fns

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use weft_worker::admin::Status;
use weft_worker::generate::{GenerateOptions, generate_file};
use weft_worker::kafka::Topics;
use weft_worker::kafka::embedded::{EmbeddedKafka, RAW_PARTITIONS};
use weft_worker::local::load_pipeline;

const WAIT: Duration = Duration::from_secs(90);

/// One HTTP/1.1 request; returns the status code and the body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    http_with_body(port, method, path, token, "")
}

fn http_with_body(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

fn status(port: u16) -> Option<Status> {
    let (code, body) = http(port, "GET", "/status", None)?;
    (code == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// Polls `check` until it holds; fails after `WAIT`, or when the worker exits.
fn wait_for(what: &str, worker: &mut Child, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if let Some(exit) = worker.try_wait().unwrap() {
            panic!("the worker exited ({exit}) while waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the first sample of `name` on /metrics.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn edit(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} in {}", path.display());
    // Replaced whole, as the kubelet swaps a ConfigMap's files.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.replace(from, to)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the worker if the test fails before it stopped it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn terminate(worker: &mut Child) -> std::process::ExitStatus {
    let pid = worker.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(exit) = worker.try_wait().unwrap() {
            return exit;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_worker_serves_its_admin_api_stops_on_sigterm_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    for file in ["processdefinition.yaml", "joinpipeline.yaml"] {
        std::fs::copy(
            common::examples().join("credit-card").join(file),
            config.join(file),
        )
        .unwrap();
    }
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let (pipeline, _) = load_pipeline(
        &[
            config.join("processdefinition.yaml"),
            config.join("joinpipeline.yaml"),
        ],
        None,
    )
    .unwrap();
    let kafka = EmbeddedKafka::start().unwrap();
    let topics = Topics::new("test", &pipeline);
    kafka.create_topics(&topics, &pipeline).unwrap();
    let input = dir.path().join("traffic.jsonl");
    let truth = generate_file(
        &GenerateOptions {
            actions: 1_000,
            ..GenerateOptions::default()
        },
        &input,
    )
    .unwrap();
    let text = std::fs::read(&input).unwrap();
    kafka
        .produce_lines(
            &pipeline.spec.sources[0].topics[0],
            RAW_PARTITIONS,
            text.split(|b| *b == b'\n').filter(|l| !l.is_empty()),
        )
        .unwrap();

    let port = free_port();
    let start = || {
        common::worker()
            .args(["run", "-f"])
            .arg(&config)
            .args(["--namespace", "test", "--ordinal", "0", "--replicas", "1"])
            .args(["--bootstrap-servers", &kafka.bootstrap_servers()])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--admin-addr", &format!("127.0.0.1:{port}")])
            .arg("--admin-token-file")
            .arg(&token_file)
            .args(["--checkpoint-interval", "1h", "--log-format", "json"])
            .stderr(std::fs::File::create(dir.path().join("worker.log")).unwrap())
            .spawn()
            .map(Running)
            .unwrap()
    };
    let mut worker = start();
    wait_for("/healthz", &mut worker, || {
        http(port, "GET", "/healthz", None).is_some_and(|(c, _)| c == 200)
    });
    wait_for("/readyz", &mut worker, || {
        http(port, "GET", "/readyz", None).is_some_and(|(c, _)| c == 200)
    });
    wait_for("every message shuffled and joined", &mut worker, || {
        status(port).is_some_and(|s| s.events >= 2 * truth.lines)
    });

    let (code, metrics) = http(port, "GET", "/metrics", None).unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("weft_worker_events_in_total{stage=\"shuffle\",source=\"channel-logs\"} "),
        "{metrics}"
    );
    assert!(metrics.contains("weft_worker_join_completion_latency_seconds_bucket"));
    assert_eq!(metrics.matches("# EOF").count(), 1);
    assert!(metrics.ends_with("# EOF\n"));

    // The mutating endpoints want the token.
    assert_eq!(http(port, "POST", "/v1/checkpoint", None).unwrap().0, 401);
    assert_eq!(
        http(port, "POST", "/v1/checkpoint", Some("wrong"))
            .unwrap()
            .0,
        401
    );
    let before = status(port)
        .unwrap()
        .last_checkpoint
        .map_or(0, |c| c.number);
    assert_eq!(
        http(port, "POST", "/v1/checkpoint", Some("s3cret"))
            .unwrap()
            .0,
        202
    );
    wait_for("the requested checkpoint", &mut worker, || {
        status(port)
            .and_then(|s| s.last_checkpoint)
            .is_some_and(|c| c.number > before)
    });
    let s = status(port).unwrap();
    assert_eq!(s.owned.map(|r| r.len()), Some(pipeline.spec.key_groups));
    assert!(s.partitions.iter().any(|p| p.checkpointed_offset > 0));
    // The process totals are on /metrics once a checkpoint has rendered them.
    let (_, metrics) = http(port, "GET", "/metrics", None).unwrap();
    assert!(
        metrics.contains("weft_process_instances_started"),
        "{metrics}"
    );

    // An assignment over the API: the same key groups under a new epoch apply at once;
    // other key groups are refused while this worker holds their state.
    let assign = |epoch: u64, start: u16, end: u16| {
        let body = format!(r#"{{"epoch":{epoch},"keyGroups":{{"start":{start},"end":{end}}}}}"#);
        http_with_body(port, "POST", "/v1/assignment", Some("s3cret"), &body).unwrap()
    };
    let all = pipeline.spec.key_groups;
    assert_eq!(assign(1, 0, all).0, 202);
    wait_for("the new epoch", &mut worker, || {
        status(port).is_some_and(|s| s.epoch == 1)
    });
    assert_eq!(assign(1, 0, all).0, 409, "an epoch that is not later");
    assert_eq!(assign(2, 0, all / 2).0, 409, "key groups with state");
    assert_eq!(assign(2, 0, all + 1).0, 422, "beyond keyGroups");
    let (code, _) = http_with_body(
        port,
        "POST",
        "/v1/assignment",
        Some("s3cret"),
        "{\"epoch\":",
    )
    .unwrap();
    assert!((400..500).contains(&code), "{code}");

    let started = sample(&metrics, "weft_process_instances_started_total").unwrap();
    assert!(started > 0.0);

    // A changed definition applies without a restart, and the instances stay.
    let definition = config.join("processdefinition.yaml");
    let checkpoints = status(port).unwrap().last_checkpoint.unwrap().number;
    edit(&definition, "sla: 48h", "sla: 24h");
    wait_for(
        "the reload and the checkpoint after it",
        &mut worker,
        || {
            status(port).is_some_and(|s| {
                s.config.reloads == 1 && s.last_checkpoint.is_some_and(|c| c.number > checkpoints)
            })
        },
    );
    let (_, metrics) = http(port, "GET", "/metrics", None).unwrap();
    assert_eq!(
        sample(&metrics, "weft_process_instances_started_total"),
        Some(started)
    );
    // An invalid change is refused and reported; the worker runs on.
    edit(&definition, "sla: 24h", "sla: soon");
    wait_for("the refused change", &mut worker, || {
        status(port).is_some_and(|s| s.config.error.is_some())
    });
    assert_eq!(status(port).unwrap().config.reloads, 1);
    assert!(status(port).unwrap().ready);

    let exit = terminate(&mut worker);
    assert!(exit.success(), "{exit}");
    // Changed while stopped: a step renamed. The restart restores the state under the
    // definitions it was saved with, then applies the new ones.
    edit(&definition, "sla: soon", "sla: 24h");
    edit(&definition, "name: make", "name: produce");

    // Started again: it resumes from its checkpoint, not from the beginning.
    let mut worker = start();
    wait_for("/readyz after the restart", &mut worker, || {
        http(port, "GET", "/readyz", None).is_some_and(|(c, _)| c == 200)
    });
    let s = status(port).unwrap();
    let resumed: i64 = s.partitions.iter().map(|p| p.checkpointed_offset).sum();
    assert!(resumed > 0, "{s:?}");
    assert_eq!(s.epoch, 1, "the assignment file outlives the restart");
    http(port, "POST", "/v1/checkpoint", Some("s3cret")).unwrap();
    wait_for("a checkpoint after the restart", &mut worker, || {
        status(port).and_then(|s| s.last_checkpoint).is_some()
    });
    let (_, metrics) = http(port, "GET", "/metrics", None).unwrap();
    assert_eq!(
        sample(&metrics, "weft_process_instances_started_total"),
        Some(started)
    );
    assert!(metrics.contains("step=\"produce\""), "{metrics}");
    let exit = terminate(&mut worker);
    assert!(exit.success(), "{exit}");
    let log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with('{') && l.contains("stopped after a final checkpoint")),
        "{log}"
    );
    assert!(log.contains("ProcessDefinitions changed since the last checkpoint"));
}
