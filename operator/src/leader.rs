//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas can run safely: one
//! reconciles, the other waits to take over when the leader's lease runs out.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

/// A leader that cannot renew for this long loses the lease to another replica.
pub const LEASE_SECONDS: i32 = 15;
/// How often the leader renews (and a candidate retries).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_seconds: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the lease {0} to {1}")]
    Lost(String, String),
    #[error("lease: {0}")]
    Kube(#[from] kube::Error),
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str) -> Elector {
        Elector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            lease_seconds: LEASE_SECONDS,
        }
    }

    /// Another lease duration (tests).
    pub fn with_lease_seconds(mut self, seconds: i32) -> Elector {
        self.lease_seconds = seconds;
        self
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: Option<i32>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: transitions,
            ..LeaseSpec::default()
        }
    }

    /// Tries once; `true` when this replica holds the lease now.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, Some(0))),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
            t.0.saturating_add(SignedDuration::from_secs(duration))
                .is_ok_and(|end| end < Timestamp::now())
        });
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time } else { None };
        lease.spec = Some(self.spec(acquired, Some(transitions)));
        // The resourceVersion makes this a compare-and-swap: one replica wins a race.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica is the leader.
    pub async fn acquire(&self) -> Result<(), kube::Error> {
        loop {
            if self.try_acquire().await? {
                return Ok(());
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    /// Renews until it fails; returns why leadership ended.
    pub async fn hold(&self) -> LeaderError {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.try_acquire().await {
                Ok(true) => {}
                Ok(false) => {
                    let holder = self
                        .api
                        .get_opt(&self.name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|l| l.spec)
                        .and_then(|s| s.holder_identity)
                        .unwrap_or_default();
                    return LeaderError::Lost(self.name.clone(), holder);
                }
                Err(e) => return e.into(),
            }
        }
    }
}
