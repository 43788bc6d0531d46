//! Reading Weft resources from YAML files (multi-document), as `kubectl apply -f` would.

use std::path::Path;

use kube::core::DynamicObject;
use serde::Deserialize;

use crate::join_pipeline::JoinPipeline;
use crate::process_definition::ProcessDefinition;
use crate::validation::ValidationErrors;

/// A Weft resource read from a file.
#[derive(Clone, Debug)]
pub enum Resource {
    ProcessDefinition(Box<ProcessDefinition>),
    JoinPipeline(Box<JoinPipeline>),
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: document {index}: {message}")]
    Parse {
        path: String,
        index: usize,
        message: String,
    },
    #[error("{path}: document {index}: {kind} is not a weft.dev/v1alpha1 resource")]
    UnknownKind {
        path: String,
        index: usize,
        kind: String,
    },
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

impl Resource {
    /// `Kind/name`, as kubectl and the validation messages name it.
    pub fn id(&self) -> String {
        let kind = match self {
            Resource::ProcessDefinition(_) => "ProcessDefinition",
            Resource::JoinPipeline(_) => "JoinPipeline",
        };
        format!("{kind}/{}", self.name())
    }

    pub fn name(&self) -> &str {
        let meta = match self {
            Resource::ProcessDefinition(pd) => &pd.metadata,
            Resource::JoinPipeline(jp) => &jp.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }
}

/// Reads every document of a YAML file. Empty documents are skipped; a document of another
/// kind is an error, so a typo in `kind` is not silently ignored.
pub fn read_file(path: &Path) -> Result<Vec<Resource>, ManifestError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: display.clone(),
        source,
    })?;
    parse_documents(&display, &text)
}

/// Parses the documents of a YAML text; `origin` names it in errors.
pub fn parse_documents(origin: &str, text: &str) -> Result<Vec<Resource>, ManifestError> {
    let mut resources = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let parse_error = |message: String| ManifestError::Parse {
            path: origin.to_string(),
            index,
            message,
        };
        let value =
            serde_yaml::Value::deserialize(document).map_err(|e| parse_error(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let meta: TypeMeta =
            serde_yaml::from_value(value.clone()).map_err(|e| parse_error(e.to_string()))?;
        let resource = match (meta.api_version.as_str(), meta.kind.as_str()) {
            ("weft.dev/v1alpha1", "ProcessDefinition") => Resource::ProcessDefinition(Box::new(
                from_value_with_path(value).map_err(parse_error)?,
            )),
            ("weft.dev/v1alpha1", "JoinPipeline") => {
                Resource::JoinPipeline(Box::new(from_value_with_path(value).map_err(parse_error)?))
            }
            _ => {
                return Err(ManifestError::UnknownKind {
                    path: origin.to_string(),
                    index,
                    kind: format!("{}/{}", meta.api_version, meta.kind),
                });
            }
        };
        resources.push(resource);
    }
    Ok(resources)
}

/// Deserializes with the path of the offending field in the error (`spec.join.lateness: ...`).
fn from_value_with_path<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// Validates a set of resources as the operator would: every definition on its own, and every
/// pipeline with the definitions it names that are in the set. Returns one entry per invalid
/// resource, `Kind/name` first.
pub fn validate_set(resources: &[Resource]) -> Vec<(String, ValidationErrors)> {
    let processes: Vec<(&str, &ProcessDefinition)> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::ProcessDefinition(pd) => Some((r.name(), pd.as_ref())),
            Resource::JoinPipeline(_) => None,
        })
        .collect();
    let mut failures = Vec::new();
    for resource in resources {
        let result = match resource {
            Resource::ProcessDefinition(pd) => pd.spec.validate(),
            Resource::JoinPipeline(jp) => {
                let used: Vec<(&str, &crate::ProcessDefinitionSpec)> = processes
                    .iter()
                    .filter(|(_, pd)| uses(jp, pd))
                    .map(|(name, pd)| (*name, &pd.spec))
                    .collect();
                jp.spec.validate_with_processes(&used)
            }
        };
        if let Err(errors) = result {
            failures.push((resource.id(), errors));
        }
    }
    failures
}

/// Whether the pipeline uses the definition: by name in `spec.processes.names`, or through
/// its label selector.
pub fn uses(jp: &JoinPipeline, pd: &ProcessDefinition) -> bool {
    let name = pd.metadata.name.as_deref().unwrap_or_default();
    jp.spec.processes.names.iter().any(|n| n == name) || selects(jp, pd)
}

/// Whether the pipeline's label selector picks the definition (matchLabels and
/// matchExpressions with In, NotIn, Exists, DoesNotExist).
pub fn selects(jp: &JoinPipeline, pd: &ProcessDefinition) -> bool {
    let Some(selector) = &jp.spec.processes.selector else {
        return false;
    };
    let empty = Default::default();
    let labels = pd.metadata.labels.as_ref().unwrap_or(&empty);
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// Parses a document as a dynamic object (apiVersion, kind, metadata, the rest as JSON), for
/// applying files to a cluster as they are.
pub fn parse_dynamic(text: &str) -> Result<Vec<DynamicObject>, serde_yaml::Error> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)?;
        if !value.is_null() {
            objects.push(serde_yaml::from_value(value)?);
        }
    }
    Ok(objects)
}
