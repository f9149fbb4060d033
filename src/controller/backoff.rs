//! How long an OfflineVirtualMachine or a VirtualMachineReplicaSet waits before it creates a
//! VM again after its VMs failed: a template the agent refuses (`bus: usb9`) otherwise
//! made a ReplicaSet create and delete ~1,550 VMs in 100 s and an OfflineVirtualMachine cycle
//! 291 times in 20 s, each cycle leaving events behind.
//!
//! The numbers are kubelet's for a container that keeps failing (CrashLoopBackOff): 10 s
//! after the first failure, doubling up to 5 minutes, forgotten after 10 minutes without a
//! failure. Kept in memory by the leader: a new leader starts again from 10 s, which still
//! bounds a failing template to a handful of VMs a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const FIRST_DELAY: Duration = Duration::from_secs(10);
const MAX_DELAY: Duration = Duration::from_secs(300);
/// A failure this long after the previous one starts the count again.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Failures {
    count: u32,
    last: Instant,
    /// What the last failed VM said, kept so that every reconcile can tell it (one that
    /// deleted nothing, or read its owner before the last status write, too).
    why: String,
}

/// The delay after `count` consecutive failures (count >= 1).
pub fn delay(count: u32) -> Duration {
    let doublings = count.saturating_sub(1).min(16);
    (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

/// Consecutive failures per owner UID.
#[derive(Debug, Default)]
pub struct RecreateBackoff {
    owners: Mutex<HashMap<String, Failures>>,
}

impl RecreateBackoff {
    /// Counts the `failed` VMs of `owner` (what each said, in order) at `now`; returns the
    /// consecutive count and what the last failed one said.
    pub fn record(&self, owner: &str, failed: &[String], now: Instant) -> (u32, String) {
        let Ok(mut owners) = self.owners.lock() else {
            return (0, String::new());
        };
        owners.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        let Some(why) = failed.last() else {
            return owners
                .get(owner)
                .map_or((0, String::new()), |f| (f.count, f.why.clone()));
        };
        let entry = owners.entry(owner.to_string()).or_insert(Failures {
            count: 0,
            last: now,
            why: String::new(),
        });
        entry.count = entry
            .count
            .saturating_add(u32::try_from(failed.len()).unwrap_or(u32::MAX));
        entry.last = now;
        entry.why = why.clone();
        (entry.count, entry.why.clone())
    }

    /// How long `owner` must still wait before it creates a VM, if at all.
    pub fn remaining(&self, owner: &str, now: Instant) -> Option<Duration> {
        let owners = self.owners.lock().ok()?;
        let failures = owners.get(owner)?;
        let until = failures.last + delay(failures.count);
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Forgets `owner` (it was deleted).
    pub fn forget(&self, owner: &str) {
        if let Ok(mut owners) = self.owners.lock() {
            owners.remove(owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_ten_seconds_to_five_minutes() {
        let secs: Vec<u64> = (1..=8).map(|n| delay(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn an_owner_waits_after_failures_and_is_forgotten_after_a_quiet_spell() {
        let backoff = RecreateBackoff::default();
        let start = Instant::now();
        assert_eq!(backoff.remaining("rs", start), None, "no failure, no wait");
        let failed = |n: usize| -> Vec<String> { (0..n).map(|i| format!("vm{i}")).collect() };
        assert_eq!(backoff.record("rs", &failed(1), start), (1, "vm0".into()));
        assert_eq!(
            backoff.remaining("rs", start),
            Some(Duration::from_secs(10))
        );
        let later = start + Duration::from_secs(4);
        assert_eq!(backoff.remaining("rs", later), Some(Duration::from_secs(6)));
        assert_eq!(backoff.remaining("other", later), None);
        assert_eq!(backoff.record("rs", &failed(2), later), (3, "vm1".into()));
        assert_eq!(
            backoff.remaining("rs", later),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            backoff.record("rs", &[], later),
            (3, "vm1".into()),
            "no new failure: the last one is still told"
        );
        assert_eq!(
            backoff.remaining("rs", later + Duration::from_secs(40)),
            None
        );
        let quiet = later + FORGET_AFTER;
        assert_eq!(
            backoff.record("rs", &failed(1), quiet).0,
            1,
            "counted again from one"
        );
        backoff.forget("rs");
        assert_eq!(backoff.remaining("rs", quiet), None);
    }
}
