//! Test harness: a real etcd + kube-apiserver (+ kube-controller-manager) on free loopback
//! ports, for the integration tests of the operator and the CRDs.
//!
//! The binaries come from `hack/install-test-apiserver.sh` (Kubernetes v1.20.2 built from
//! Debian's source package, cached in `$WEFT_CACHE`). When they are missing the harness returns
//! an error that says how to install them: a missing server fails the test, it never skips it.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Where `hack/install-test-apiserver.sh` puts the Kubernetes binaries (overridable with
/// `WEFT_KUBE_BIN_DIR`).
pub fn kube_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_KUBE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("WEFT_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/weft"), PathBuf::from);
    cache.join("kube-1.20.2/bin")
}

/// The bearer token of the harness's cluster-admin user.
pub const ADMIN_TOKEN: &str = "weft-test-admin-token";
/// How long the control plane may take to become ready (measured: 6-12 s on 2 cores).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "{0} not found: run hack/install-test-apiserver.sh (it builds the test API server once per machine)"
    )]
    MissingBinary(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{component} did not become ready within {seconds}s; last lines of its log:\n{log}")]
    NotReady {
        component: String,
        seconds: u64,
        log: String,
    },
    #[error("kube client: {0}")]
    Client(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// Which control-plane components to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Also run kube-controller-manager: garbage collection, StatefulSets creating Pods,
    /// service-account tokens. Pods stay Pending (there is no scheduler or kubelet).
    pub controller_manager: bool,
}

/// A running control plane. Dropping it stops the processes and removes their data.
pub struct TestCluster {
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// A kubeconfig file for kubectl and for the operator binary.
    pub kubeconfig: PathBuf,
}

impl TestCluster {
    /// Starts etcd and kube-apiserver on free ports and waits until the API server is ready.
    pub async fn start() -> Result<TestCluster, HarnessError> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Result<TestCluster, HarnessError> {
        let bin = kube_bin_dir();
        let apiserver = require(bin.join("kube-apiserver"))?;
        let controller_manager = require(bin.join("kube-controller-manager"))?;
        let etcd = which("etcd").ok_or_else(|| HarnessError::MissingBinary("etcd".into()))?;

        let dir = tempfile::Builder::new()
            .prefix("weft-apiserver-")
            .tempdir()
            .map_err(io("creating a temp dir"))?;
        let root = dir.path().to_path_buf();
        let mut cluster = TestCluster {
            dir,
            children: Vec::new(),
            url: String::new(),
            kubeconfig: root.join("kubeconfig"),
        };

        let [etcd_client, etcd_peer, secure] = free_ports()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        cluster.spawn(
            "etcd",
            Command::new(&etcd).args([
                "--name=weft-test",
                &format!("--data-dir={}", root.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-cluster=weft-test=http://127.0.0.1:{etcd_peer}"),
                "--log-level=warn",
            ]),
        )?;

        run(
            "openssl genrsa",
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(root.join("sa.key"))
                .arg("2048"),
        )?;
        run(
            "openssl rsa -pubout",
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(root.join("sa.key"))
                .arg("-out")
                .arg(root.join("sa.pub")),
        )?;
        std::fs::write(
            root.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )
        .map_err(io("writing tokens.csv"))?;

        cluster.url = format!("https://127.0.0.1:{secure}");
        cluster.spawn(
            "kube-apiserver",
            Command::new(&apiserver).args([
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={secure}"),
                &format!("--cert-dir={}", root.join("certs").display()),
                &format!("--token-auth-file={}", root.join("tokens.csv").display()),
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!(
                    "--service-account-key-file={}",
                    root.join("sa.pub").display()
                ),
                &format!(
                    "--service-account-signing-key-file={}",
                    root.join("sa.key").display()
                ),
                "--service-cluster-ip-range=10.0.0.0/24",
                "--enable-priority-and-fairness=false",
                "--v=0",
            ]),
        )?;

        std::fs::write(
            &cluster.kubeconfig,
            kubeconfig_yaml(&cluster.url, ADMIN_TOKEN),
        )
        .map_err(io("writing kubeconfig"))?;
        cluster.wait_ready().await?;

        if options.controller_manager {
            cluster.spawn(
                "kube-controller-manager",
                Command::new(&controller_manager).args([
                    &format!("--kubeconfig={}", cluster.kubeconfig.display()),
                    "--leader-elect=false",
                    "--port=0",
                    "--secure-port=0",
                    "--use-service-account-credentials=false",
                    &format!("--service-account-private-key-file={}", root.join("sa.key").display()),
                    &format!("--root-ca-file={}", root.join("certs/apiserver.crt").display()),
                    "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,-service",
                    "--v=0",
                ]),
            )?;
        }
        Ok(cluster)
    }

    /// A client authenticated as cluster-admin.
    pub async fn client(&self) -> Result<Client, HarnessError> {
        self.client_with_token(ADMIN_TOKEN).await
    }

    /// A client that authenticates with another bearer token (e.g. a ServiceAccount's).
    pub async fn client_with_token(&self, token: &str) -> Result<Client, HarnessError> {
        let kubeconfig = Kubeconfig::from_yaml(&kubeconfig_yaml(&self.url, token))
            .map_err(|e| HarnessError::Client(e.to_string()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| HarnessError::Client(e.to_string()))?;
        Client::try_from(config).map_err(|e| HarnessError::Client(e.to_string()))
    }

    /// A client acting as a ServiceAccount: cluster-admin impersonating it, so the API server
    /// authorizes every request with exactly the ServiceAccount's RBAC rights.
    pub async fn client_as_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Client, HarnessError> {
        let kubeconfig = Kubeconfig::from_yaml(&kubeconfig_yaml(&self.url, ADMIN_TOKEN))
            .map_err(|e| HarnessError::Client(e.to_string()))?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| HarnessError::Client(e.to_string()))?;
        config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".to_string(),
        ]);
        Client::try_from(config).map_err(|e| HarnessError::Client(e.to_string()))
    }

    /// The whole install as a user does it, `kubectl apply -k manifests/`, then waits until
    /// the CRDs are Established. (kubectl 1.20 validates against its own schema, which has no
    /// CEL rules: `--validate=false`, as the README says for servers older than 1.25.)
    pub fn install_weft(&self) -> Result<(), HarnessError> {
        let manifests = weft_crds::repo_dir().join("manifests");
        let check = |what: &str, out: std::process::Output| {
            if out.status.success() {
                Ok(())
            } else {
                Err(HarnessError::Command {
                    what: what.to_string(),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
        };
        check(
            "kubectl apply -k manifests/",
            self.kubectl(&[
                "apply",
                "--validate=false",
                "-k",
                &manifests.display().to_string(),
            ])?,
        )?;
        let mut wait = vec![
            "wait".to_string(),
            "--for=condition=Established".to_string(),
            "--timeout=60s".to_string(),
        ];
        wait.extend(
            weft_crds::crds()
                .iter()
                .map(|(_, crd)| format!("crd/{}", crd.metadata.name.clone().unwrap_or_default())),
        );
        let wait: Vec<&str> = wait.iter().map(String::as_str).collect();
        check("waiting for the CRDs", self.kubectl(&wait)?)
    }

    /// The directory the control plane's data and logs live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the kubectl built with the API server (same version) against this cluster.
    pub fn kubectl(&self, args: &[&str]) -> Result<std::process::Output, HarnessError> {
        let kubectl = require(kube_bin_dir().join("kubectl"))?;
        Command::new(kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .map_err(io("running kubectl"))
    }

    fn spawn(&mut self, name: &str, command: &mut Command) -> Result<(), HarnessError> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))
            .map_err(io(format!("creating {name}.log")))?;
        let err = log.try_clone().map_err(io("cloning a log handle"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {name}")))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Polls `/readyz` (and that the `default` namespace exists) until both answer, bounded by
    /// [`READY_TIMEOUT`]; fails early when a component exits.
    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let client = self.client().await?;
        let started = Instant::now();
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(client.clone());
        loop {
            for (name, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(HarnessError::NotReady {
                        component: format!("{name} (exited with {status})"),
                        seconds: started.elapsed().as_secs(),
                        log: tail(&self.dir.path().join(format!("{name}.log"))),
                    });
                }
            }
            let ready = client
                .request_text(
                    http::Request::get("/readyz")
                        .body(Vec::new())
                        .unwrap_or_default(),
                )
                .await
                .is_ok_and(|body| body.trim() == "ok");
            if ready && namespaces.get_opt("default").await.ok().flatten().is_some() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(HarnessError::NotReady {
                    component: "kube-apiserver".into(),
                    seconds: READY_TIMEOUT.as_secs(),
                    log: tail(&self.dir.path().join("kube-apiserver.log")),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Reverse order: controller-manager and apiserver before etcd.
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn require(path: PathBuf) -> Result<PathBuf, HarnessError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::MissingBinary(path.display().to_string()))
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn run(what: &str, command: &mut Command) -> Result<(), HarnessError> {
    let output = command.output().map_err(io(what))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command {
            what: what.into(),
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Free loopback ports, all held open until every one is chosen so they differ.
fn free_ports<const N: usize>() -> Result<[u16; N], HarnessError> {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port")))
        .collect::<Result<_, _>>()?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(io("reading a bound port"))?
            .port();
    }
    Ok(ports)
}

fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn kubeconfig_yaml(url: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: weft-test
  cluster:
    server: {url}
    insecure-skip-tls-verify: true
users:
- name: weft-test
  user:
    token: {token}
contexts:
- name: weft-test
  context:
    cluster: weft-test
    user: weft-test
    namespace: default
current-context: weft-test
"
    )
}
