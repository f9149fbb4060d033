//! The admin socket's responses, shared by the server (in the agent) and the client
//! (`nodevirt admin`), so the two cannot drift apart. The requests, and which response each
//! answers with, are the routes of `route`. Every answer is JSON; an error is a status code
//! and an [`ErrorBody`].

use serde::{Deserialize, Serialize};

use crate::event_log::EventRecord;

pub const DEFAULT_SOCKET: &str = "/run/nodevirt/admin.sock";
pub const DEFAULT_CONSOLE_LINES: usize = 50;
pub const MAX_CONSOLE_LINES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSummary {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub phase: String,
    /// libvirt's view: running, paused, shut off (reason), crashed, or "no domain".
    pub domain_state: String,
    pub ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmDetail {
    pub vm: VmSummary,
    pub node: String,
    pub domain: String,
    pub events: Vec<EventRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainXml {
    pub domain: String,
    pub xml: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleTail {
    pub path: String,
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub accepted: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub version: String,
    pub node: String,
    /// The domain type the agent defines domains with: kvm, qemu, or unknown until it has
    /// asked libvirtd (agents older than this field do not send it).
    #[serde(default = "unknown")]
    pub hypervisor: String,
    pub libvirt_connected: bool,
    pub watch_synced: bool,
    pub vms: usize,
}

fn unknown() -> String {
    "unknown".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
