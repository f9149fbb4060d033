//! Guest watchdogs that fired, per domain.
//!
//! libvirt says so only in its watchdog event: afterwards the domain is shut off (action
//! `poweroff`, or `shutdown` once the guest obeyed the power button) or runs again (`reset`),
//! as after a plain power-off or reboot. So the firing is recorded as the event arrives, on
//! libvirt's event thread and before the domain's stop is delivered, and kept until the domain
//! starts again or is undefined.

use std::collections::HashMap;
use std::sync::Mutex;

use virt::sys;

/// What the watchdog device did when it fired (virDomainEventWatchdogAction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogAction {
    None,
    Pause,
    Reset,
    PowerOff,
    Shutdown,
    Debug,
    InjectNmi,
}

impl WatchdogAction {
    pub fn from_libvirt(action: i32) -> Self {
        match u32::try_from(action).unwrap_or(u32::MAX) {
            sys::VIR_DOMAIN_EVENT_WATCHDOG_PAUSE => Self::Pause,
            sys::VIR_DOMAIN_EVENT_WATCHDOG_RESET => Self::Reset,
            sys::VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF => Self::PowerOff,
            sys::VIR_DOMAIN_EVENT_WATCHDOG_SHUTDOWN => Self::Shutdown,
            sys::VIR_DOMAIN_EVENT_WATCHDOG_DEBUG => Self::Debug,
            sys::VIR_DOMAIN_EVENT_WATCHDOG_INJECTNMI => Self::InjectNmi,
            _ => Self::None,
        }
    }

    /// As in the domain XML (and the VM's `i6300esb.action`).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pause => "pause",
            Self::Reset => "reset",
            Self::PowerOff => "poweroff",
            Self::Shutdown => "shutdown",
            Self::Debug => "debug",
            Self::InjectNmi => "inject-nmi",
        }
    }

    /// Whether the guest is off once the action is done: its stop is the watchdog's doing.
    pub fn stops_guest(self) -> bool {
        matches!(self, Self::PowerOff | Self::Shutdown)
    }
}

/// The last firing of a domain's watchdog since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Firing {
    pub action: WatchdogAction,
    /// Whether the agent has told the VM's owner (an event) about this firing.
    pub acknowledged: bool,
}

#[derive(Debug, Default)]
pub struct FiredWatchdogs(Mutex<HashMap<String, Firing>>);

impl FiredWatchdogs {
    pub fn fired(&self, domain: &str, action: WatchdogAction) {
        let firing = Firing {
            action,
            acknowledged: false,
        };
        self.with(|fired| fired.insert(domain.to_string(), firing));
    }

    pub fn get(&self, domain: &str) -> Option<Firing> {
        self.with(|fired| fired.get(domain).copied())
    }

    pub fn acknowledge(&self, domain: &str) {
        self.with(|fired| {
            if let Some(firing) = fired.get_mut(domain) {
                firing.acknowledged = true;
            }
        });
    }

    /// The domain starts afresh or is gone.
    pub fn forget(&self, domain: &str) {
        self.with(|fired| fired.remove(domain));
    }

    /// A poisoned lock (a panic elsewhere while holding it) still holds a usable map.
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Firing>) -> T) -> T {
        let mut fired = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut fired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firing_is_kept_until_the_domain_starts_again_and_acknowledged_once() {
        let fired = FiredWatchdogs::default();
        assert_eq!(fired.get("ns_vm"), None);
        fired.fired("ns_vm", WatchdogAction::Reset);
        assert_eq!(
            fired.get("ns_vm"),
            Some(Firing {
                action: WatchdogAction::Reset,
                acknowledged: false
            })
        );
        fired.acknowledge("ns_vm");
        assert!(fired.get("ns_vm").unwrap().acknowledged);
        // A second firing is news again.
        fired.fired("ns_vm", WatchdogAction::Reset);
        assert!(!fired.get("ns_vm").unwrap().acknowledged);
        assert_eq!(fired.get("ns_other"), None);
        fired.forget("ns_vm");
        assert_eq!(fired.get("ns_vm"), None);
    }

    #[test]
    fn libvirts_actions_decode_and_only_poweroff_and_shutdown_stop_the_guest() {
        let decoded: Vec<_> = (0..=7).map(WatchdogAction::from_libvirt).collect();
        let names: Vec<_> = decoded.iter().map(|a| a.name()).collect();
        assert_eq!(
            names,
            [
                "none",
                "pause",
                "reset",
                "poweroff",
                "shutdown",
                "debug",
                "inject-nmi",
                "none"
            ]
        );
        let stopping: Vec<_> = decoded
            .iter()
            .filter(|a| a.stops_guest())
            .map(|a| a.name())
            .collect();
        assert_eq!(stopping, ["poweroff", "shutdown"]);
    }
}
