//! The rendered pipeline the workers read: the JoinPipeline and the ProcessDefinitions it
//! uses, as the resource files `weft-worker run -f` takes. Workers watch the mounted file, so
//! a definition change reaches them without a restart.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::ConfigMap;
use weft_crds::{JoinPipeline, ProcessDefinition};

use super::ValidatedPipeline;

/// The file in the ConfigMap (and in the workers' /etc/weft).
pub const PIPELINE_FILE: &str = "pipeline.yaml";

/// The pipeline and its definitions as multi-document YAML, without status or server fields.
pub fn render(v: &ValidatedPipeline) -> Result<String, serde_yaml::Error> {
    let mut docs = Vec::new();
    for (name, spec) in &v.definitions {
        let mut pd = ProcessDefinition::new(name, spec.clone());
        pd.metadata.namespace = Some(v.namespace.clone());
        docs.push(serde_yaml::to_string(&pd)?);
    }
    let mut jp = JoinPipeline::new(&v.name, v.pipeline.spec.clone());
    jp.metadata.namespace = Some(v.namespace.clone());
    docs.push(serde_yaml::to_string(&jp)?);
    Ok(docs.join("---\n"))
}

pub fn build(v: &ValidatedPipeline) -> Result<ConfigMap, serde_yaml::Error> {
    Ok(ConfigMap {
        metadata: v.metadata(v.child_name()),
        data: Some(BTreeMap::from([(PIPELINE_FILE.to_string(), render(v)?)])),
        ..ConfigMap::default()
    })
}

/// A hash of what the workers cannot reload: the pipeline's spec without its worker and
/// scaling sections (those change the StatefulSet itself). It goes into the pod template,
/// so a change rolls the pods; definition changes do not (the workers reload them).
pub fn restart_hash(v: &ValidatedPipeline) -> String {
    let mut spec = v.pipeline.spec.clone();
    spec.workers = Default::default();
    spec.autoscaling = None;
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(&spec)
        .unwrap_or_default()
        .hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::tests::example;

    #[test]
    fn the_rendered_pipeline_loads_as_the_worker_loads_it() {
        let v = example();
        let cm = build(&v).unwrap();
        let text = &cm.data.unwrap()[PIPELINE_FILE];
        let resources = weft_crds::manifest::parse_documents("configmap", text).unwrap();
        assert_eq!(resources.len(), 2);
        assert!(weft_crds::manifest::validate_set(&resources).is_empty());
        assert!(!text.contains("\nstatus:"), "no status in\n{text}");
    }

    #[test]
    fn only_changes_workers_cannot_reload_change_the_restart_hash() {
        let v = example();
        let before = restart_hash(&v);
        let mut definitions_changed = v.clone();
        definitions_changed.definitions[0].1.steps.pop();
        assert_eq!(restart_hash(&definitions_changed), before);
        let mut scaled = v.clone();
        scaled.pipeline.spec.workers.replicas += 1;
        assert_eq!(restart_hash(&scaled), before);
        let mut lateness = v.clone();
        lateness.pipeline.spec.join.lateness = weft_crds::Duration::from_secs(7200);
        assert_ne!(restart_hash(&lateness), before);
    }
}
