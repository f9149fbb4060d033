//! The actions of a guest's watchdog device, as libvirt's watchdog event names them.

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

#[cfg(test)]
mod tests {
    use super::*;

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
