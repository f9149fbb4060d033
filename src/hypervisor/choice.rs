//! Which domain type the agent defines its domains with: `kvm` or `qemu` (TCG).
//!
//! 1. `--hypervisor kvm|qemu` decides without asking anyone.
//! 2. `auto` asks libvirtd, which runs QEMU on the node: its capabilities list the `kvm` domain
//!    type for x86_64 hvm guests only when KVM works there (`hypervisor::capabilities`). The
//!    agent's own /dev is not the node's when it runs in a Pod, so it is never looked at.
//! 3. The decision is made once, on the first connection to libvirtd, before any VM is
//!    defined (`agent::libvirt_link`); reconnects keep it. Until then it is "unknown" and VMs that
//!    need a domain wait.
//!
//! `nodevirt hypervisor` runs the same [`decide`] once and prints the answer.

use std::sync::OnceLock;

use super::{HypervisorError, Libvirt};
use crate::domain::{DomainType, GUEST_ARCH};

/// How the agent picks the domain type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HypervisorFlag {
    /// KVM when libvirtd offers the kvm domain type for x86_64 guests, else QEMU's software
    /// emulation (TCG).
    Auto,
    Kvm,
    Qemu,
}

/// The libvirt flags of `nodevirt agent`, shared with `nodevirt hypervisor` so that both
/// read the same flags and environment.
#[derive(Debug, Clone, clap::Args)]
pub struct LibvirtArgs {
    /// The libvirt daemon that runs the node's QEMU; test:///default for libvirt's test driver.
    #[arg(long, env = "NODEVIRT_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// The domain type of every VM; auto asks libvirtd whether KVM works on the node.
    #[arg(long, value_enum, env = "NODEVIRT_HYPERVISOR", default_value_t = HypervisorFlag::Auto)]
    pub hypervisor: HypervisorFlag,
}

/// A domain type and why it was chosen, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub domain_type: DomainType,
    pub reason: &'static str,
}

/// The decision from the domain types libvirtd offers for x86_64 hvm guests.
fn from_offered(types: &[String]) -> Decision {
    if types.iter().any(|t| t == "kvm") {
        Decision {
            domain_type: DomainType::Kvm,
            reason: "libvirt offers the kvm domain type for x86_64 guests",
        }
    } else {
        Decision {
            domain_type: DomainType::Qemu,
            reason: "libvirt reports no kvm domain type for x86_64 guests",
        }
    }
}

/// Decides the domain type for `choice`. Only `auto` calls `offered`, which returns the domain
/// types libvirtd offers for `os_type` hvm guests of `arch` (see
/// [`Libvirt::guest_domain_types`]); its error (libvirtd away, say) is returned, never
/// taken for "no KVM".
pub fn decide(
    choice: HypervisorFlag,
    offered: impl FnOnce(&str, &str) -> Result<Vec<String>, HypervisorError>,
) -> Result<Decision, HypervisorError> {
    Ok(match choice {
        HypervisorFlag::Kvm => Decision {
            domain_type: DomainType::Kvm,
            reason: "--hypervisor kvm",
        },
        HypervisorFlag::Qemu => Decision {
            domain_type: DomainType::Qemu,
            reason: "--hypervisor qemu",
        },
        HypervisorFlag::Auto => from_offered(&offered("hvm", GUEST_ARCH)?),
    })
}

/// `nodevirt hypervisor`: the decision the agent would make with these flags, on a connection
/// of its own (only for `auto`).
pub fn decide_for(args: &LibvirtArgs) -> Result<Decision, HypervisorError> {
    decide(args.hypervisor, |os_type, arch| {
        Libvirt::open(&args.libvirt_uri)?.guest_domain_types(os_type, arch)
    })
}

/// The agent's decision, shared by the reconciles, the libvirt link and the admin socket.
#[derive(Debug)]
pub struct HypervisorChoice {
    choice: HypervisorFlag,
    decided: OnceLock<Decision>,
}

impl HypervisorChoice {
    pub fn new(choice: HypervisorFlag) -> Self {
        Self {
            choice,
            decided: OnceLock::new(),
        }
    }

    /// A choice already made (tests).
    #[cfg(test)]
    pub fn decided(domain_type: DomainType) -> Self {
        let choice = Self::new(HypervisorFlag::Auto);
        choice.decided.get_or_init(|| Decision {
            domain_type,
            reason: "decided by the test",
        });
        choice
    }

    /// The domain type, once decided.
    pub fn domain_type(&self) -> Option<DomainType> {
        self.decided.get().map(|d| d.domain_type)
    }

    /// `kvm` or `qemu`, or `unknown` before the decision (for metrics and the admin socket).
    pub fn label(&self) -> &'static str {
        match self.domain_type() {
            Some(DomainType::Kvm) => "kvm",
            Some(DomainType::Qemu) => "qemu",
            None => "unknown",
        }
    }

    /// Decides unless already decided (blocking: call it with libvirt connected, off the async
    /// runtime). Returns the decision the one time it is made, `None` after.
    pub fn decide_once(&self, libvirt: &Libvirt) -> Result<Option<Decision>, HypervisorError> {
        if self.decided.get().is_some() {
            return Ok(None);
        }
        let decision = decide(self.choice, |os_type, arch| {
            libvirt.guest_domain_types(os_type, arch)
        })?;
        Ok(self.decided.set(decision).ok().map(|()| decision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn kvm_only_when_libvirt_offers_it() {
        assert_eq!(
            from_offered(&types(&["qemu", "kvm"])).domain_type,
            DomainType::Kvm
        );
        for none in [&[][..], &["qemu"], &["test"]] {
            let decision = from_offered(&types(none));
            assert_eq!(decision.domain_type, DomainType::Qemu, "{none:?}");
            assert_eq!(
                decision.reason,
                "libvirt reports no kvm domain type for x86_64 guests"
            );
        }
    }

    #[test]
    fn an_explicit_choice_asks_nobody() {
        let never = |_: &str, _: &str| -> Result<Vec<String>, HypervisorError> {
            panic!("asked libvirt for an explicit choice")
        };
        assert_eq!(
            decide(HypervisorFlag::Kvm, never).unwrap().domain_type,
            DomainType::Kvm
        );
        assert_eq!(
            decide(HypervisorFlag::Qemu, never).unwrap().domain_type,
            DomainType::Qemu
        );
    }

    #[test]
    fn auto_asks_for_x86_64_hvm_guests_and_passes_errors_on() {
        let decision = decide(HypervisorFlag::Auto, |os_type, arch| {
            assert_eq!((os_type, arch), ("hvm", "x86_64"));
            Ok(types(&["qemu", "kvm"]))
        });
        assert_eq!(decision.unwrap().domain_type, DomainType::Kvm);
        let away = decide(HypervisorFlag::Auto, |_, _| {
            Err(HypervisorError::Disconnected {
                op: "reading the capabilities of",
                target: "qemu:///system".into(),
                uri: "qemu:///system".into(),
            })
        });
        assert!(away.unwrap_err().is_connection_lost());
    }

    #[test]
    fn the_test_driver_means_qemu() {
        // test:///default lists only its own `test` type, for i686: no kvm for x86_64.
        let args = LibvirtArgs {
            libvirt_uri: "test:///default".into(),
            hypervisor: HypervisorFlag::Auto,
        };
        let decision = decide_for(&args).unwrap();
        assert_eq!(decision.domain_type, DomainType::Qemu);
        assert_eq!(
            decision.reason,
            "libvirt reports no kvm domain type for x86_64 guests"
        );
    }

    #[test]
    fn decided_once_on_a_connection_and_kept() {
        let libvirt = Libvirt::new("test:///default");
        let choice = HypervisorChoice::new(HypervisorFlag::Auto);
        assert_eq!(choice.label(), "unknown");
        assert!(
            choice.decide_once(&libvirt).is_err(),
            "not connected: not decided"
        );
        assert_eq!(choice.domain_type(), None);
        libvirt.connect().unwrap();
        let first = choice.decide_once(&libvirt).unwrap();
        assert_eq!(first.map(|d| d.domain_type), Some(DomainType::Qemu));
        assert_eq!(choice.label(), "qemu");
        libvirt.disconnect();
        assert_eq!(
            choice.decide_once(&libvirt).unwrap(),
            None,
            "a later connection does not decide again"
        );
        assert_eq!(choice.domain_type(), Some(DomainType::Qemu));
    }
}
