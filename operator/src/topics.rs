//! Deleting a pipeline's internal Kafka topics, for `deletionPolicy: Delete`: the one thing
//! outside the cluster the operator cleans up, so the one reason for a finalizer.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

/// Deletes topics; a topic that does not exist counts as deleted.
pub trait TopicCleaner: Send + Sync {
    fn delete(
        &self,
        bootstrap: String,
        properties: BTreeMap<String, String>,
        topics: Vec<String>,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// Through Kafka's Admin API (librdkafka).
pub struct KafkaTopicCleaner;

impl TopicCleaner for KafkaTopicCleaner {
    fn delete(
        &self,
        bootstrap: String,
        properties: BTreeMap<String, String>,
        topics: Vec<String>,
    ) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", &bootstrap);
            for (key, value) in &properties {
                config.set(key, value);
            }
            let admin: AdminClient<DefaultClientContext> =
                config.create().map_err(|e| e.to_string())?;
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            let results = admin
                .delete_topics(&names, &options)
                .await
                .map_err(|e| e.to_string())?;
            for result in results {
                match result {
                    Ok(_) => {}
                    Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                    Err((topic, code)) => return Err(format!("deleting {topic}: {code}")),
                }
            }
            Ok(())
        })
    }
}
