//! Leader election on a coordination.k8s.io/v1 Lease, so that of several controller replicas
//! exactly one acts.
//!
//! 1. `acquire` loops until the Lease is free (absent, expired, or already ours) and takes it
//!    with an optimistic-concurrency replace: of two candidates only one write succeeds.
//! 2. `Leadership::hold` renews it every `renew` and returns when renewals have failed for
//!    `renew_deadline`: the caller stops acting and may `acquire` again.
//!
//! Each attempt, in either loop, is bounded by `renew` and beats a [`Pulse`], so that the
//! controller's `/healthz` sees the loop go round whether it leads or waits.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

use super::health::Pulse;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// A leader that has not renewed for this long stops acting (less than `duration`, so it
    /// has stopped before another replica may take the Lease).
    pub renew_deadline: Duration,
    pub renew: Duration,
}

pub struct Leadership {
    api: Api<Lease>,
    config: LeaseConfig,
    pulse: Pulse,
}

fn expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    now.duration_since(renewed.0) > SignedDuration::from_secs(i64::from(seconds))
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

/// Tries once to take or renew the Lease; Ok(true) when we hold it afterwards.
async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let fresh_spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.duration.as_secs() as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let existing = match api.get_opt(&config.name).await? {
        Some(lease) => lease,
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(fresh_spec(0, None)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
    };
    let ours = holder(&existing) == Some(config.identity.as_str());
    if !ours && !expired(&existing, now) {
        return Ok(false);
    }
    let spec = existing.spec.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let mut lease = existing;
    lease.spec = Some(fresh_spec(
        transitions,
        if ours { spec.acquire_time } else { None },
    ));
    // The resourceVersion in `lease` makes this fail with 409 if anyone wrote it meanwhile.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until this process leads.
pub async fn acquire(client: Client, config: LeaseConfig, pulse: Pulse) -> Leadership {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    info!(lease = %config.name, identity = %config.identity, "waiting to lead");
    loop {
        let attempt = tokio::time::timeout(config.renew, try_acquire(&api, &config));
        let taken = attempt.await;
        pulse.beat();
        match taken {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot read or take the leader Lease"),
            Err(_) => warn!("reading or taking the leader Lease timed out"),
        }
        tokio::time::sleep(config.renew).await;
    }
    info!(lease = %config.name, identity = %config.identity, "leading");
    Leadership { api, config, pulse }
}

impl Leadership {
    /// Renews the Lease; returns when leadership is lost.
    pub async fn hold(self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.renew).await;
            // A request to an API server that does not answer must not outlast the deadline.
            let attempt =
                tokio::time::timeout(self.config.renew, try_acquire(&self.api, &self.config));
            let renewed = attempt.await;
            self.pulse.beat();
            match renewed {
                Ok(Ok(true)) => last_renewal = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    warn!("another replica took the leader Lease");
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "cannot renew the leader Lease"),
                Err(_) => warn!("renewing the leader Lease timed out"),
            }
            if last_renewal.elapsed() >= self.config.renew_deadline {
                warn!("the leader Lease could not be renewed in time");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: Timestamp, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn expiry() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert!(!expired(
            &lease("a", now - SignedDuration::from_secs(10), 15),
            now
        ));
        assert!(expired(
            &lease("a", now - SignedDuration::from_secs(16), 15),
            now
        ));
        assert!(expired(&Lease::default(), now));
        assert_eq!(holder(&lease("a", now, 15)), Some("a"));
    }
}
