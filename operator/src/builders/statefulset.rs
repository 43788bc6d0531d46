//! The worker StatefulSet: stable ordinals (a worker derives its key groups from its own),
//! a RocksDB volume per worker, probes on the admin API, a locked-down container, and a
//! grace period long enough for the final checkpoint.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities as LinuxCapabilities, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceFieldSelector, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ADMIN_PORT, Capabilities, ValidatedPipeline, configmap, secret, service};

/// The worker image when the pipeline does not name one: the operator's own version.
pub fn default_image() -> String {
    format!("ghcr.io/weft-dev/weft-worker:{}", env!("CARGO_PKG_VERSION"))
}

pub const CONFIG_DIR: &str = "/etc/weft";
pub const ADMIN_DIR: &str = "/etc/weft-admin";
pub const STATE_DIR: &str = "/var/lib/weft";
/// The pod template annotation that rolls the workers when the pipeline changes in a way
/// they cannot reload.
pub const RESTART_HASH: &str = "weft.dev/restart-hash";
/// The final checkpoint waits up to 60 s for the brokers; then some margin.
pub const TERMINATION_GRACE_SECONDS: i64 = 90;
const UID: i64 = 65_532;

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("admin".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..EnvVar::default()
    }
}

/// `WEFT_MEMORY_LIMIT_MIB` from the container's memory limit (else its request) through the
/// downward API, so the worker sizes its hot tier to the pod (see the worker's
/// `state::budget`). None without either: the worker reads its cgroup's limit then.
fn memory_limit_env(resources: Option<&ResourceRequirements>) -> Option<EnvVar> {
    let has =
        |of: Option<&BTreeMap<String, Quantity>>| of.is_some_and(|m| m.contains_key("memory"));
    let resource = match resources {
        Some(r) if has(r.limits.as_ref()) => "limits.memory",
        Some(r) if has(r.requests.as_ref()) => "requests.memory",
        _ => return None,
    };
    Some(EnvVar {
        name: "WEFT_MEMORY_LIMIT_MIB".to_string(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some("worker".to_string()),
                resource: resource.to_string(),
                divisor: Some(Quantity("1Mi".to_string())),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    })
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn container(v: &ValidatedPipeline) -> Container {
    let workers = &v.pipeline.spec.workers;
    Container {
        name: "worker".to_string(),
        image: Some(workers.image.clone().unwrap_or_else(default_image)),
        args: Some(
            [
                "run",
                "-f",
                CONFIG_DIR,
                "--state-dir",
                STATE_DIR,
                "--admin-addr",
                &format!("0.0.0.0:{ADMIN_PORT}"),
                "--admin-token-file",
                &format!("{ADMIN_DIR}/{}", secret::TOKEN_KEY),
                "--log-format",
                "json",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ),
        env: Some(
            [
                EnvVar {
                    name: "WEFT_NAMESPACE".to_string(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.namespace".to_string(),
                            ..ObjectFieldSelector::default()
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                },
                env("WEFT_PIPELINE", v.name.clone()),
                env("WEFT_REPLICAS", workers.replicas.to_string()),
                // The worker's allocator (mimalloc) hands freed memory back to the kernel after a
                // second by default, and the stages free and reuse memory all the time: kept ten
                // seconds, the worker over Kafka used ~9% less CPU (docs/benchmarks.md). Memory
                // idle longer still goes back.
                env("MIMALLOC_PURGE_DELAY", "10000".to_string()),
            ]
            .into_iter()
            .chain(memory_limit_env(workers.resources.as_ref()))
            .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("admin".to_string()),
            container_port: ADMIN_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        // Restoring a large state takes a while: liveness waits for the startup probe.
        startup_probe: Some(probe("/healthz", 5, 120)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        resources: workers.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(LinuxCapabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..LinuxCapabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR, true),
            mount("admin", ADMIN_DIR, true),
            mount("state", STATE_DIR, false),
            mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    }
}

pub fn build(v: &ValidatedPipeline, capabilities: Capabilities) -> StatefulSet {
    let storage = &v.pipeline.spec.workers.storage;
    let mut annotations = BTreeMap::new();
    annotations.insert(RESTART_HASH.to_string(), configmap::restart_hash(v));
    StatefulSet {
        metadata: v.metadata(v.child_name()),
        spec: StatefulSetSpec {
            replicas: Some(v.pipeline.spec.workers.replicas),
            service_name: Some(service::headless_name(v)),
            // Workers do not wait for each other to start.
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some(v.selector_labels()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(v.labels()),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container(v)],
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(UID),
                        run_as_group: Some(UID),
                        fs_group: Some(UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    // The workers talk to Kafka and answer the operator; no API access.
                    automount_service_account_token: Some(false),
                    volumes: Some(vec![
                        Volume {
                            name: "config".to_string(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: v.child_name(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "admin".to_string(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(secret::name(v)),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "tmp".to_string(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("state".to_string()),
                    labels: Some(v.labels()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            storage.size.clone(),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            // Scaled down, a worker's state stays for when it comes back; deleted with the
            // pipeline, it goes.
            persistent_volume_claim_retention_policy: capabilities.pvc_retention_policy.then(
                || StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".to_string()),
                    when_scaled: Some("Retain".to_string()),
                },
            ),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::tests::example;

    #[test]
    fn the_statefulset_runs_locked_down_workers_with_state_volumes() {
        let v = example();
        let sts = build(&v, Capabilities::all());
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(v.pipeline.spec.workers.replicas));
        assert_eq!(
            spec.service_name.as_deref(),
            Some("weft-credit-card-workers")
        );
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert!(c.args.as_ref().unwrap().contains(&"/etc/weft".to_string()));
        assert_eq!(pod.termination_grace_period_seconds, Some(90));
        let claim = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(
            claim
                .spec
                .as_ref()
                .unwrap()
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"],
            v.pipeline.spec.workers.storage.size
        );
        assert!(spec.persistent_volume_claim_retention_policy.is_some());
        let annotations = spec.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations[RESTART_HASH], configmap::restart_hash(&v));
    }

    /// The env var the worker sizes its hot tier by, if any, and the resource it names.
    fn memory_limit_resource(v: &ValidatedPipeline) -> Option<String> {
        let pod = build(v, Capabilities::all()).spec.template.spec?;
        let env = pod.containers[0].env.clone()?;
        let var = env.iter().find(|e| e.name == "WEFT_MEMORY_LIMIT_MIB")?;
        let field = var.value_from.as_ref()?.resource_field_ref.as_ref()?;
        assert_eq!(field.container_name.as_deref(), Some("worker"));
        assert_eq!(field.divisor, Some(Quantity("1Mi".to_string())));
        Some(field.resource.clone())
    }

    #[test]
    fn the_worker_learns_its_memory_limit_else_its_request() {
        let mut v = example();
        let memory = |q: &str| Some(BTreeMap::from([("memory".to_string(), Quantity(q.into()))]));
        v.pipeline.spec.workers.resources = Some(ResourceRequirements {
            limits: memory("4Gi"),
            requests: memory("2Gi"),
            ..ResourceRequirements::default()
        });
        assert_eq!(memory_limit_resource(&v).as_deref(), Some("limits.memory"));
        v.pipeline.spec.workers.resources = Some(ResourceRequirements {
            requests: memory("2Gi"),
            ..ResourceRequirements::default()
        });
        assert_eq!(
            memory_limit_resource(&v).as_deref(),
            Some("requests.memory")
        );
        v.pipeline.spec.workers.resources = None;
        assert_eq!(memory_limit_resource(&v), None);
    }

    #[test]
    fn an_old_server_gets_no_fields_it_does_not_know() {
        let v = example();
        let spec = build(&v, Capabilities::of_version("1", "20")).spec;
        assert!(spec.persistent_volume_claim_retention_policy.is_none());
    }
}
