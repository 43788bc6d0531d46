//! `weft-operator run`, the process the Deployment runs, against a real kube-apiserver: a
//! clear message and exit 1 without the CRDs; with them, leadership, `/healthz`, `/readyz`,
//! `/metrics`, and exit 0 on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weft_tests::TestCluster;

const WAIT: Duration = Duration::from_secs(60);

fn operator(cluster: &TestCluster) -> Command {
    let bin = std::env::var_os("NEXTEST_BIN_EXE_weft-operator")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_weft-operator").into());
    let mut command = Command::new(bin);
    command
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("WEFT_LOG_FORMAT", "json")
        .env("HOSTNAME", "operator-test");
    command
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    Some((code, response.split_once("\r\n\r\n")?.1.to_string()))
}

/// Kills the operator if the test fails before it stopped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_operator_binary_refuses_to_run_without_crds_then_serves_and_stops() -> Result<()> {
    let cluster = TestCluster::start().await?;

    // No CRDs yet: one clear message, exit 1.
    let out = operator(&cluster)
        .args(["run", "--no-leader-election"])
        .output()?;
    ensure!(out.status.code() == Some(1), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("is not installed") && stderr.contains("kubectl apply -k"),
        "{stderr}"
    );

    cluster.install_weft()?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut running = Running(
        operator(&cluster)
            .args([
                "run",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--lease-namespace",
                "weft-system",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()?,
    );
    let deadline = Instant::now() + WAIT;
    loop {
        if get(port, "/readyz").is_some_and(|(c, _)| c == 200) {
            break;
        }
        ensure!(running.0.try_wait()?.is_none(), "the operator exited");
        ensure!(Instant::now() < deadline, "no /readyz");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(get(port, "/healthz").is_some_and(|(c, _)| c == 200));
    // It leads: the Lease names it.
    let deadline = Instant::now() + WAIT;
    loop {
        let lease = cluster.kubectl(&[
            "get",
            "lease",
            "-n",
            "weft-system",
            "weft-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])?;
        if String::from_utf8_lossy(&lease.stdout) == "operator-test" {
            break;
        }
        ensure!(Instant::now() < deadline, "never took the lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It reconciles: a definition shows up in its metrics.
    let example =
        weft_crds::repo_dir().join("manifests/examples/credit-card/processdefinition.yaml");
    let created = cluster.kubectl(&[
        "apply",
        "-n",
        "default",
        "-f",
        &example.display().to_string(),
    ])?;
    ensure!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, metrics) = get(port, "/metrics").context("/metrics")?;
        ensure!(code == 200);
        if metrics.contains("weft_operator_reconciles_total{kind=\"ProcessDefinition\"}") {
            ensure!(metrics.ends_with("# EOF\n"));
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no reconcile in /metrics: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let pid = running.0.id().to_string();
    ensure!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = running.0.try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut log = String::new();
    if let Some(mut stderr) = running.0.stderr.take() {
        stderr.read_to_string(&mut log)?;
    }
    ensure!(status.success(), "{status}: {log}");
    ensure!(
        log.lines()
            .any(|l| l.starts_with('{') && l.contains("leading")),
        "{log}"
    );
    Ok(())
}
