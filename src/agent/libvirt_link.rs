//! Keeping the agent connected to libvirtd.
//!
//! 1. Connect (at start, and whenever the connection is found dead), retrying with exponential
//!    backoff from 0.5 s to 30 s; the agent serves, answers its admin socket and keeps its
//!    watch meanwhile, and `/readyz` says libvirt is away.
//! 2. On the first connection, decide the domain type (`hypervisor::choice`; logged once, and
//!    set in `nodevirt_agent_hypervisor`); a failure to decide is a failed connect, retried.
//!    Reconnects keep the decision.
//! 3. On each new connection, subscribe to its domain events; a connection given up is
//!    unsubscribed first, as each subscription holds it (and its socket) open.
//! 4. Then ask for a reconcile of every VM: events that happened while disconnected are lost,
//!    and reconciles that failed meanwhile (or waited for the decision) waited on backoff.
//!
//! Running domains are not touched by any of this: QEMU keeps running while libvirtd is away,
//! and a reconcile that failed because the connection was lost is retried, never blamed on
//! the VM (`HypervisorError::is_connection_lost`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::hypervisor::choice::{Decision, HypervisorChoice};
use crate::hypervisor::events::{self, DomainEvent};
use crate::hypervisor::{HypervisorError, Libvirt};
use crate::k8s::error_chain;
use crate::metrics::AgentMetrics;

/// How often a live connection is checked. `virConnectIsAlive` is local (no RPC): libvirt's
/// event loop notices the closed socket and keepalive timeouts.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The delay before the next connection attempt after `delay`.
fn next_retry(delay: Duration) -> Duration {
    (delay * 2).min(MAX_RETRY)
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error(transparent)]
    Connect(HypervisorError),
    #[error("choosing the hypervisor")]
    Choose(#[source] HypervisorError),
    #[error(transparent)]
    Subscribe(#[from] events::EventError),
}

/// Runs until the task is dropped. `up` follows the connection; `resync_all` is called
/// after every successful connect.
pub async fn run(
    libvirt: Arc<Libvirt>,
    hypervisor: Arc<HypervisorChoice>,
    events_tx: UnboundedSender<DomainEvent>,
    metrics: Arc<AgentMetrics>,
    up: tokio::sync::watch::Sender<bool>,
    resync_all: impl Fn(),
) {
    let mut ever_connected = false;
    let mut retry = FIRST_RETRY;
    loop {
        let (tx, choice, counts) = (
            events_tx.clone(),
            Arc::clone(&hypervisor),
            Arc::clone(&metrics),
        );
        let connected = libvirt
            .run(move |lv| Ok(connect(lv, &choice, &counts, tx)))
            .await
            .unwrap_or_else(|e| Err(LinkError::Connect(e)));
        match connected {
            Ok(()) => {
                metrics.libvirt_connected.set(1);
                up.send_replace(true);
                if ever_connected {
                    metrics.libvirt_reconnects.inc();
                    info!(uri = %libvirt.uri(), "reconnected to libvirt; resyncing every VM");
                } else {
                    info!(uri = %libvirt.uri(), "connected to libvirt");
                }
                ever_connected = true;
                retry = FIRST_RETRY;
                resync_all();
                wait_until_dead(&libvirt).await;
                metrics.libvirt_connected.set(0);
                up.send_replace(false);
                warn!(uri = %libvirt.uri(), "lost the connection to libvirt; running VMs are not touched, reconnecting");
                let forget = libvirt.run(|lv| {
                    lv.disconnect();
                    Ok(())
                });
                forget.await.ok();
            }
            Err(e) => {
                warn!(uri = %libvirt.uri(), error = %error_chain(&e), retry_in = ?retry, "cannot connect to libvirt");
                tokio::time::sleep(retry).await;
                retry = next_retry(retry);
            }
        }
    }
}

/// Connects, decides the hypervisor if not yet decided, and subscribes to the connection's
/// events.
fn connect(
    lv: &Libvirt,
    hypervisor: &HypervisorChoice,
    metrics: &AgentMetrics,
    events_tx: UnboundedSender<DomainEvent>,
) -> Result<(), LinkError> {
    let conn = lv.connect().map_err(LinkError::Connect)?;
    match hypervisor.decide_once(lv) {
        Ok(Some(Decision {
            domain_type,
            reason,
        })) => {
            info!(uri = %lv.uri(), "hypervisor chosen: {domain_type} ({reason})");
            metrics.set_hypervisor(hypervisor.label());
        }
        Ok(None) => {}
        Err(e) => {
            // No VM can be defined without it: try again, as after a failed connect.
            lv.disconnect();
            return Err(LinkError::Choose(e));
        }
    }
    let sink = events::Sink {
        tx: events_tx,
        runs: Arc::clone(lv.runs()),
    };
    if let Err(e) = lv.subscribe(&conn, &sink) {
        // Without events a stopped guest would only be noticed at resync: try again.
        lv.disconnect();
        return Err(e.into());
    }
    Ok(())
}

async fn wait_until_dead(libvirt: &Arc<Libvirt>) {
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        let alive = libvirt.run(|lv| Ok(lv.is_alive())).await.unwrap_or(false);
        if !alive {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap() {
        let mut delay = FIRST_RETRY;
        let mut seen = vec![delay];
        for _ in 0..8 {
            delay = next_retry(delay);
            seen.push(delay);
        }
        assert_eq!(seen[1], Duration::from_secs(1));
        assert_eq!(seen[2], Duration::from_secs(2));
        assert_eq!(*seen.last().unwrap(), MAX_RETRY);
    }
}
