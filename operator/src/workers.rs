//! What the workers say about themselves on their admin API's `/status`: lag and the last
//! checkpoint, for the pipeline's status. Plain HTTP inside the cluster, best effort: a worker
//! that does not answer (starting, restoring, gone) is left out, and nothing waits long.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one worker may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkerStatus {
    #[serde(default)]
    partitions: Vec<PartitionLag>,
    last_checkpoint: Option<Checkpoint>,
}

#[derive(Debug, Deserialize)]
struct PartitionLag {
    lag: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Checkpoint {
    /// Unix milliseconds.
    at: i64,
}

/// What the workers that answered report together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub answered: usize,
    /// Messages not yet checkpointed, over every partition of every worker.
    pub lag: i64,
    /// The oldest of the workers' last checkpoints (Unix milliseconds).
    pub oldest_checkpoint: Option<i64>,
}

/// The admin API address of each worker (`host:port`): its stable DNS name under the
/// headless Service.
pub fn addresses(pipeline: &str, namespace: &str, replicas: i32, port: i32) -> Vec<String> {
    (0..replicas.max(0))
        .map(|i| format!("weft-{pipeline}-{i}.weft-{pipeline}-workers.{namespace}.svc:{port}"))
        .collect()
}

/// Asks every worker at once; `None` when none answered.
pub async fn observe(addresses: &[String]) -> Option<Observed> {
    let answers = futures::future::join_all(addresses.iter().map(|a| status(a))).await;
    let answers: Vec<WorkerStatus> = answers.into_iter().flatten().collect();
    if answers.is_empty() {
        return None;
    }
    Some(Observed {
        answered: answers.len(),
        lag: answers
            .iter()
            .flat_map(|s| &s.partitions)
            .filter_map(|p| p.lag)
            .sum(),
        oldest_checkpoint: answers
            .iter()
            .filter_map(|s| s.last_checkpoint.as_ref().map(|c| c.at))
            .min(),
    })
}

async fn status(address: &str) -> Option<WorkerStatus> {
    let body = tokio::time::timeout(TIMEOUT, get(address, "/status"))
        .await
        .ok()?
        .map_err(|e| tracing::debug!(%address, %e, "worker status"))
        .ok()?;
    serde_json::from_slice(&body).ok()
}

/// One HTTP/1.1 GET with `Connection: close`: the body of a 200 answer.
async fn get(address: &str, path: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or_default().to_string(),
        ));
    }
    Ok(response[split + 4..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_addressed_through_the_headless_service() {
        assert_eq!(
            addresses("cards", "banking", 2, 8080),
            [
                "weft-cards-0.weft-cards-workers.banking.svc:8080",
                "weft-cards-1.weft-cards-workers.banking.svc:8080"
            ]
        );
    }

    #[tokio::test]
    async fn lag_is_summed_and_the_oldest_checkpoint_wins() {
        let mut servers = Vec::new();
        let mut addresses = Vec::new();
        for (lag, at) in [(5, 2_000), (7, 1_000)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addresses.push(listener.local_addr().unwrap().to_string());
            servers.push(tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await.unwrap();
                let body = format!(
                    r#"{{"partitions":[{{"lag":{lag}}},{{"lag":null}}],"lastCheckpoint":{{"number":3,"at":{at},"durationMs":1.0}}}}"#
                );
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(answer.as_bytes()).await.unwrap();
            }));
        }
        // A third worker that is not there.
        addresses.push("127.0.0.1:1".to_string());
        let observed = observe(&addresses).await.unwrap();
        assert_eq!(
            observed,
            Observed {
                answered: 2,
                lag: 12,
                oldest_checkpoint: Some(1_000)
            }
        );
        for s in servers {
            s.await.unwrap();
        }
    }
}
