//! What libvirt's events told of each domain's current run: its watchdog's last firing, and
//! whether its stop has been told yet.
//!
//! A firing is known only from libvirt's watchdog event: afterwards the domain is off (action
//! `poweroff`, or `shutdown` once the guest obeyed the power button) or runs on (`reset`), just
//! as after a plain power-off or reboot. Both events are recorded here on libvirt's event
//! thread, in the order libvirtd sent them, a firing before the stop it caused. A state read
//! can still find the domain off before those events arrive, so an off domain whose stop has
//! not been told is "pending" for a moment rather than taken for a plain stop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::watchdog::WatchdogAction;

/// How long an off domain waits for its stop event before the agent goes by its state alone
/// (a stop while the agent was disconnected is never told).
pub const STOP_EVENT_WAIT: Duration = Duration::from_secs(2);

/// The domain's watchdog's last firing in its current run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Firing {
    pub action: WatchdogAction,
    /// Whether the agent has told the VM's owner (an event) that the guest survived it.
    pub acknowledged: bool,
    pub age: Duration,
}

/// What the agent knows of a domain's run as it looks at the domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSeen {
    pub firing: Option<Firing>,
    /// The domain is off, but libvirt has not told its stop yet (nor, so, any firing before it).
    pub stop_pending: bool,
}

#[derive(Debug)]
struct Fired {
    action: WatchdogAction,
    at: Instant,
    acknowledged: bool,
}

#[derive(Debug, Default)]
struct Run {
    fired: Option<Fired>,
    stop_told: bool,
    /// When the agent first found the domain off without its stop told.
    off_untold_since: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct DomainRuns(Mutex<HashMap<String, Run>>);

impl DomainRuns {
    pub fn fired(&self, domain: &str, action: WatchdogAction) {
        self.with(|runs| {
            runs.entry(domain.to_string()).or_default().fired = Some(Fired {
                action,
                at: Instant::now(),
                acknowledged: false,
            });
        });
    }

    /// libvirt told the domain's stop (or crash).
    pub fn stopped(&self, domain: &str) {
        self.with(|runs| runs.entry(domain.to_string()).or_default().stop_told = true);
    }

    /// The firing was reported as one the guest survived.
    pub fn acknowledge(&self, domain: &str) {
        self.with(|runs| {
            if let Some(fired) = runs.get_mut(domain).and_then(|r| r.fired.as_mut()) {
                fired.acknowledged = true;
            }
        });
    }

    /// The domain starts afresh or is gone, by the agent's hand or anyone's.
    pub fn forget(&self, domain: &str) {
        self.with(|runs| runs.remove(domain));
    }

    /// The run of `domain`, just read as `off` or not.
    pub fn seen(&self, domain: &str, off: bool) -> RunSeen {
        let now = Instant::now();
        self.with(|runs| {
            let run = if off {
                runs.entry(domain.to_string()).or_default()
            } else {
                match runs.get_mut(domain) {
                    Some(run) => run,
                    None => return RunSeen::default(),
                }
            };
            let stop_pending = if off && !run.stop_told {
                let since = *run.off_untold_since.get_or_insert(now);
                now.duration_since(since) < STOP_EVENT_WAIT
            } else {
                run.off_untold_since = None;
                false
            };
            RunSeen {
                firing: run.fired.as_ref().map(|f| Firing {
                    action: f.action,
                    acknowledged: f.acknowledged,
                    age: now.duration_since(f.at),
                }),
                stop_pending,
            }
        })
    }

    /// A poisoned lock (a panic elsewhere while holding it) still holds a usable map.
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Run>) -> T) -> T {
        let mut runs = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firing_is_kept_for_the_run_and_acknowledged_once() {
        let runs = DomainRuns::default();
        assert_eq!(runs.seen("ns_vm", false), RunSeen::default());
        runs.fired("ns_vm", WatchdogAction::Reset);
        let firing = runs.seen("ns_vm", false).firing.unwrap();
        assert_eq!(firing.action, WatchdogAction::Reset);
        assert!(!firing.acknowledged);
        runs.acknowledge("ns_vm");
        assert!(runs.seen("ns_vm", false).firing.unwrap().acknowledged);
        // A second firing is news again.
        runs.fired("ns_vm", WatchdogAction::Reset);
        assert!(!runs.seen("ns_vm", false).firing.unwrap().acknowledged);
        assert_eq!(runs.seen("ns_other", false), RunSeen::default());
        runs.forget("ns_vm");
        assert_eq!(runs.seen("ns_vm", false), RunSeen::default());
    }

    #[test]
    fn an_off_domain_is_pending_until_its_stop_is_told_or_the_wait_is_over() {
        let runs = DomainRuns::default();
        assert!(runs.seen("ns_vm", true).stop_pending);
        assert!(
            runs.seen("ns_vm", true).stop_pending,
            "still within the wait"
        );
        runs.stopped("ns_vm");
        assert!(!runs.seen("ns_vm", true).stop_pending);

        // Never told (a stop while disconnected): pending only for the wait.
        let untold = DomainRuns::default();
        untold.with(|runs| {
            runs.entry("ns_vm".into()).or_default().off_untold_since =
                Some(Instant::now() - STOP_EVENT_WAIT);
        });
        assert!(!untold.seen("ns_vm", true).stop_pending);
        // Running again: a later stop waits afresh.
        assert!(!untold.seen("ns_vm", false).stop_pending);
        assert!(untold.seen("ns_vm", true).stop_pending);
        untold.forget("ns_vm");
        assert!(untold.seen("ns_vm", true).stop_pending);
    }
}
