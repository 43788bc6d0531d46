//! The child resources of a JoinPipeline, one builder per kind. Pure functions of the
//! validated pipeline: no I/O, so every field is unit-tested and the reconciler only applies.

pub mod configmap;
pub mod pdb;
pub mod secret;
pub mod service;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use weft_crds::JoinPipeline;

/// The validated input of the builders: a pipeline and the definitions it uses, resolved.
#[derive(Clone, Debug)]
pub struct ValidatedPipeline {
    pub pipeline: JoinPipeline,
    pub name: String,
    pub namespace: String,
    /// Name → spec, sorted by name.
    pub definitions: Vec<(String, weft_crds::ProcessDefinitionSpec)>,
}

/// What the API server supports, where Weft adapts to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// policy/v1 PodDisruptionBudget (Kubernetes 1.21+).
    pub pdb_v1: bool,
    /// StatefulSet `persistentVolumeClaimRetentionPolicy` (Kubernetes 1.23+; 1.20's
    /// server-side apply refuses fields it does not know).
    pub pvc_retention_policy: bool,
}

impl Capabilities {
    pub fn all() -> Capabilities {
        Capabilities {
            pdb_v1: true,
            pvc_retention_policy: true,
        }
    }

    /// From the server's version (`major`, `minor` as it reports them, e.g. "1", "20+").
    pub fn of_version(major: &str, minor: &str) -> Capabilities {
        let number = |s: &str| {
            s.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<u32>()
                .unwrap_or(0)
        };
        let (major, minor) = (number(major), number(minor));
        let at_least = |m: u32| major > 1 || (major == 1 && minor >= m);
        Capabilities {
            pdb_v1: at_least(21),
            pvc_retention_policy: at_least(23),
        }
    }
}

/// The field manager of every object the operator applies.
pub const MANAGER: &str = "weft-operator";
pub const APP_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The port of the worker's admin API.
pub const ADMIN_PORT: i32 = 8080;

impl ValidatedPipeline {
    /// The name of every child: `weft-<pipeline>` (StatefulSet, Services, ConfigMap, PDB).
    pub fn child_name(&self) -> String {
        format!("weft-{}", self.name)
    }

    /// Labels selecting the pipeline's worker pods.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (APP_LABEL.to_string(), "weft-worker".to_string()),
            (INSTANCE_LABEL.to_string(), self.name.clone()),
        ])
    }

    /// The selector as a string, for the /scale subresource.
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Labels of every child.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(COMPONENT_LABEL.to_string(), "worker".to_string());
        labels.insert(MANAGED_BY_LABEL.to_string(), MANAGER.to_string());
        labels
    }

    /// Metadata of a child: its name, the namespace, the labels, and the pipeline as its
    /// controller owner (children are garbage-collected with it).
    pub fn metadata(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: self.owner_reference().map(|o| vec![o]),
            ..ObjectMeta::default()
        }
    }

    fn owner_reference(&self) -> Option<OwnerReference> {
        self.pipeline.controller_owner_ref(&())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The credit-card example, validated with its definition.
    pub fn example() -> ValidatedPipeline {
        let dir = weft_crds::repo_dir().join("manifests/examples/credit-card");
        let mut resources = Vec::new();
        for file in ["processdefinition.yaml", "joinpipeline.yaml"] {
            resources.extend(weft_crds::manifest::read_file(&dir.join(file)).unwrap());
        }
        let mut pipeline = None;
        let mut definitions = Vec::new();
        for r in resources {
            match r {
                weft_crds::manifest::Resource::JoinPipeline(jp) => pipeline = Some(*jp),
                weft_crds::manifest::Resource::ProcessDefinition(pd) => definitions.push((
                    pd.metadata.name.clone().unwrap_or_default(),
                    pd.spec.clone(),
                )),
            }
        }
        let mut pipeline = pipeline.unwrap();
        pipeline.metadata.namespace = Some("banking".into());
        pipeline.metadata.uid = Some("0000-1111".into());
        ValidatedPipeline {
            name: pipeline.metadata.name.clone().unwrap(),
            namespace: "banking".into(),
            pipeline,
            definitions,
        }
    }

    #[test]
    fn capabilities_follow_the_server_version() {
        assert_eq!(
            Capabilities::of_version("1", "20"),
            Capabilities {
                pdb_v1: false,
                pvc_retention_policy: false
            }
        );
        assert_eq!(
            Capabilities::of_version("1", "22+"),
            Capabilities {
                pdb_v1: true,
                pvc_retention_policy: false
            }
        );
        assert_eq!(Capabilities::of_version("1", "30"), Capabilities::all());
    }

    #[test]
    fn children_are_owned_and_labelled() {
        let v = example();
        let meta = v.metadata(v.child_name());
        assert_eq!(meta.name.as_deref(), Some("weft-credit-card"));
        let owner = &meta.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "JoinPipeline");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.labels.unwrap()[MANAGED_BY_LABEL], MANAGER);
        assert_eq!(
            v.selector_string(),
            "app.kubernetes.io/instance=credit-card,app.kubernetes.io/name=weft-worker"
        );
    }
}
