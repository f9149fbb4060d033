//! The last events the agent recorded for each VM, kept in memory for the admin socket (so a
//! node can be debugged while the API server is unreachable). The agent's executor writes it
//! and the admin server reads it; it belongs to neither, so neither imports the other.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

const KEPT_PER_VM: usize = 20;

/// One recorded event, as the admin socket serves it (`admin::api::VmDetail`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub time: String,
    pub kind: String,
    pub reason: String,
    pub message: String,
}

#[derive(Default)]
pub struct EventLog {
    by_uid: Mutex<HashMap<String, VecDeque<EventRecord>>>,
}

impl EventLog {
    pub fn record(&self, uid: &str, kind: &str, reason: &str, message: &str) {
        let Ok(mut map) = self.by_uid.lock() else {
            return;
        };
        let events = map.entry(uid.to_string()).or_default();
        if events.len() == KEPT_PER_VM {
            events.pop_front();
        }
        events.push_back(EventRecord {
            time: Timestamp::now().to_string(),
            kind: kind.into(),
            reason: reason.into(),
            message: message.into(),
        });
    }

    pub fn of(&self, uid: &str) -> Vec<EventRecord> {
        self.by_uid
            .lock()
            .map(|map| {
                map.get(uid)
                    .map(|e| e.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// Forgets a VM that is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut map) = self.by_uid.lock() {
            map.remove(uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_twenty_per_vm() {
        let log = EventLog::default();
        for i in 0..25 {
            log.record("a", "Normal", "R", &i.to_string());
        }
        log.record("b", "Warning", "X", "y");
        let a = log.of("a");
        assert_eq!(a.len(), KEPT_PER_VM);
        assert_eq!(a.first().unwrap().message, "5");
        assert_eq!(log.of("b").len(), 1);
        log.forget("a");
        assert!(log.of("a").is_empty());
    }
}
