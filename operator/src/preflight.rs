//! Checks the operator makes before it starts its controllers, so a missing install step is a
//! clear message instead of a stream of watch errors.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, CustomResourceExt};
use weft_crds::{JoinPipeline, ProcessDefinition};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("CRD {0} is not installed: apply manifests/crds/ (e.g. `kubectl apply -k manifests/`)")]
    Missing(String),
    #[error("CRD {name} is installed but not Established: {reason}")]
    NotEstablished { name: String, reason: String },
    #[error(
        "CRD {name} does not serve {version}: install the CRDs of this operator version from manifests/crds/"
    )]
    WrongVersion { name: String, version: String },
    #[error("reading CRD {name}: {source}")]
    Api { name: String, source: kube::Error },
}

/// Verifies that both Weft CRDs are installed, Established and serve this operator's version.
pub async fn check_crds(client: &Client) -> Result<(), PreflightError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for expected in [ProcessDefinition::crd(), JoinPipeline::crd()] {
        let name = expected.metadata.name.clone().unwrap_or_default();
        let version = expected
            .spec
            .versions
            .first()
            .map(|v| v.name.clone())
            .unwrap_or_default();
        let installed = api
            .get_opt(&name)
            .await
            .map_err(|source| PreflightError::Api {
                name: name.clone(),
                source,
            })?
            .ok_or_else(|| PreflightError::Missing(name.clone()))?;
        let established = installed
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Established"));
        match established {
            Some(c) if c.status == "True" => {}
            Some(c) => {
                return Err(PreflightError::NotEstablished {
                    name,
                    reason: c
                        .message
                        .clone()
                        .unwrap_or_else(|| c.reason.clone().unwrap_or_default()),
                });
            }
            None => {
                return Err(PreflightError::NotEstablished {
                    name,
                    reason: "no Established condition yet".into(),
                });
            }
        }
        if !installed
            .spec
            .versions
            .iter()
            .any(|v| v.name == version && v.served)
        {
            return Err(PreflightError::WrongVersion { name, version });
        }
    }
    Ok(())
}
