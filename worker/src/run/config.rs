//! The mounted configuration, watched: the operator updates the ConfigMap when a
//! ProcessDefinition changes, and the kubelet swaps the files in place.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_crds::{JoinPipelineSpec, ProcessDefinitionSpec};

use crate::admin::Shared;
use crate::local::{collect_yaml, load_pipeline};

/// How often the files are read again.
const INTERVAL: Duration = Duration::from_secs(2);

pub type Definitions = Vec<(String, ProcessDefinitionSpec)>;

pub struct ConfigWatch {
    paths: Vec<PathBuf>,
    name: Option<String>,
    fingerprint: Option<u64>,
    last_check: Instant,
    spec: JoinPipelineSpec,
    definitions: Definitions,
}

/// A hash of the files' names and contents.
fn fingerprint(paths: &[PathBuf]) -> std::io::Result<u64> {
    let mut files = Vec::new();
    for path in paths {
        collect_yaml(path, &mut files)?;
    }
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(&file)?.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

impl ConfigWatch {
    pub fn new(
        paths: Vec<PathBuf>,
        name: Option<String>,
        spec: JoinPipelineSpec,
        definitions: Definitions,
    ) -> ConfigWatch {
        ConfigWatch {
            fingerprint: fingerprint(&paths).ok(),
            paths,
            name,
            last_check: Instant::now(),
            spec,
            definitions,
        }
    }

    /// The new definitions when they changed since the last call. Reads the files at most
    /// every [`INTERVAL`] unless `now`. A configuration that does not load is reported in
    /// the status and the log, and the running one stays.
    pub fn poll(&mut self, now: bool, shared: &Shared) -> Option<Definitions> {
        if self.paths.is_empty() || (!now && self.last_check.elapsed() < INTERVAL) {
            return None;
        }
        self.last_check = Instant::now();
        let current = fingerprint(&self.paths).ok();
        if current.is_none() || current == self.fingerprint {
            return None;
        }
        self.fingerprint = current;
        match load_pipeline(&self.paths, self.name.as_deref()) {
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(%error, "the changed configuration is invalid; running on with the last valid one");
                shared.update_status(|s| s.config.error = Some(error));
                None
            }
            Ok((pipeline, definitions)) => {
                let restart = pipeline.spec != self.spec;
                if restart {
                    tracing::warn!("the JoinPipeline changed: it applies when the worker restarts");
                }
                shared.update_status(|s| {
                    s.config.error = None;
                    s.config.restart_required |= restart;
                });
                if definitions == self.definitions {
                    return None;
                }
                self.definitions = definitions.clone();
                Some(definitions)
            }
        }
    }
}
