//! What the controller serves on its metrics port (`crate::metrics_port`), as
//! kube-controller-manager does on its own:
//!
//! - `/metrics`: [`ControllerMetrics`].
//! - `/healthz`: the process's loops are alive. The leader-election loop goes round every
//!   renew period whether it leads or waits (each attempt bounded by a timeout), so one that
//!   has not gone round for [`election_stall_limit`] is stuck; and no cache's watch task has
//!   ended. A lost API server does not fail it: the loop goes round with errors, and a
//!   restart would not bring the API server back.
//! - `/readyz`: the caches (Nodes, VirtualMachines, presets) have listed once. A standby is
//!   healthy and ready but not leading (`leading: false` in the body, and
//!   `nodevirt_controller_leader` 0): it is a warm spare that takes over within a lease
//!   duration, and failing its probes would only get it restarted and its caches emptied.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::leader::LeaseConfig;
use super::metrics::ControllerMetrics;
use crate::metrics_port::{Exposition, Probe};

/// When a loop last went round; cheap to share.
#[derive(Debug, Clone)]
pub struct Pulse(Arc<Mutex<Instant>>);

impl Default for Pulse {
    fn default() -> Self {
        Pulse(Arc::new(Mutex::new(Instant::now())))
    }
}

impl Pulse {
    /// The loop went round now.
    pub fn beat(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn since(&self) -> Duration {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }
}

/// How long the election loop may go without a round before `/healthz` fails: ten renew
/// periods (a round is at most two), at least 30 s.
pub fn election_stall_limit(lease: &LeaseConfig) -> Duration {
    (lease.renew * 10).max(Duration::from_secs(30))
}

/// `/healthz` from how long the election loop has been still and the caches whose task ended.
pub fn liveness(still_for: Duration, limit: Duration, ended: &[&str]) -> Probe {
    let election = still_for < limit;
    let mut body = format!(
        "leader election loop: {} (last round {}s ago)\n",
        if election { "ok" } else { "stuck" },
        still_for.as_secs()
    );
    for cache in ended {
        body.push_str(&format!("cache {cache}: its watch ended\n"));
    }
    Probe {
        ok: election && ended.is_empty(),
        body,
    }
}

/// `/readyz` from whether the caches have listed once; leading or not does not matter.
pub fn readiness(synced: bool, leading: bool) -> Probe {
    Probe {
        ok: synced,
        body: format!("caches synced: {synced}\nleading: {leading}\n"),
    }
}

pub struct Endpoint {
    pub metrics: Arc<ControllerMetrics>,
    /// Beaten by the leader-election loop.
    pub election: Pulse,
    pub election_stall_limit: Duration,
    /// The task keeping each cache current, by kind.
    pub caches: Vec<(String, JoinHandle<()>)>,
    /// True once every cache has listed.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

impl Exposition for Endpoint {
    async fn metrics(&self) -> Result<String, std::fmt::Error> {
        self.metrics.render()
    }

    async fn health(&self) -> Probe {
        let ended: Vec<&str> = self
            .caches
            .iter()
            .filter(|(_, task)| task.is_finished())
            .map(|(kind, _)| kind.as_str())
            .collect();
        liveness(self.election.since(), self.election_stall_limit, &ended)
    }

    async fn readiness(&self) -> Probe {
        readiness(*self.synced.borrow(), self.metrics.leader.get() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_while_the_election_loop_goes_round_and_every_cache_watches() {
        let limit = Duration::from_secs(30);
        let ok = liveness(Duration::from_secs(2), limit, &[]);
        assert!(ok.ok, "{}", ok.body);
        let stuck = liveness(limit, limit, &[]);
        assert!(!stuck.ok);
        assert!(
            stuck.body.contains("stuck (last round 30s ago)"),
            "{}",
            stuck.body
        );
        let ended = liveness(Duration::ZERO, limit, &["Node"]);
        assert!(!ended.ok);
        assert!(
            ended.body.contains("cache Node: its watch ended"),
            "{}",
            ended.body
        );
    }

    #[test]
    fn a_standby_is_ready_once_synced_and_says_it_does_not_lead() {
        assert_eq!(
            readiness(true, false),
            Probe {
                ok: true,
                body: "caches synced: true\nleading: false\n".into()
            }
        );
        assert!(readiness(true, true).ok);
        assert!(!readiness(false, true).ok);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pulse_says_how_long_since_the_last_beat() {
        let pulse = Pulse::default();
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(pulse.since(), Duration::from_secs(7));
        pulse.beat();
        assert_eq!(pulse.since(), Duration::ZERO);
    }

    #[test]
    fn the_stall_limit_is_ten_renewals_and_at_least_half_a_minute() {
        let lease = |renew| LeaseConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew: Duration::from_secs(renew),
        };
        assert_eq!(election_stall_limit(&lease(2)), Duration::from_secs(30));
        assert_eq!(election_stall_limit(&lease(5)), Duration::from_secs(50));
    }
}
