//! Two Services: a headless one giving each worker a stable DNS name for its admin API
//! (`<pod>.weft-<pipeline>-workers`), and one for scraping metrics.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ADMIN_PORT, ValidatedPipeline};

pub fn headless_name(v: &ValidatedPipeline) -> String {
    format!("{}-workers", v.child_name())
}

pub fn metrics_name(v: &ValidatedPipeline) -> String {
    format!("{}-metrics", v.child_name())
}

fn port() -> ServicePort {
    ServicePort {
        name: Some("admin".to_string()),
        port: ADMIN_PORT,
        target_port: Some(IntOrString::String("admin".to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

/// The StatefulSet's governing Service; pods are published before they are ready, so the
/// operator can reach a worker that is still restoring.
pub fn headless(v: &ValidatedPipeline) -> Service {
    Service {
        metadata: v.metadata(headless_name(v)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(v.selector_labels()),
            ports: Some(vec![port()]),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn metrics(v: &ValidatedPipeline) -> Service {
    Service {
        metadata: v.metadata(metrics_name(v)),
        spec: Some(ServiceSpec {
            selector: Some(v.selector_labels()),
            ports: Some(vec![port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headless_service_publishes_unready_workers() {
        let v = crate::builders::tests::example();
        let spec = headless(&v).spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector, Some(v.selector_labels()));
        assert_eq!(metrics(&v).spec.unwrap().ports.unwrap()[0].port, ADMIN_PORT);
    }
}
