//! The reconcilers' errors, each with a short label for the error metric.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("rendering the pipeline: {0}")]
    Render(#[from] serde_yaml::Error),
    #[error("creating the admin token: {0}")]
    Token(std::io::Error),
    #[error("{0} has no namespace or name")]
    Unnamed(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// The `reason` label of `weft_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::Render(_) => "render",
            Error::Token(_) => "token",
            Error::Unnamed(_) => "unnamed",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
