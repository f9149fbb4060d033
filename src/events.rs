//! Kubernetes Events (events.k8s.io/v1) for the objects the agent and the controller act on.
//!
//! A repeat of the same event (same object, type, reason and note) within `SERIES_WINDOW`
//! updates the first one's `series` count instead of creating another object, as kubectl
//! and client-go expect. Only what that needs is remembered per event (its name, count and
//! time): kube-runtime's `Recorder` keeps a clone of every event object for six minutes,
//! which with 1000 VMs starting was the agent's largest allocation (5.9 MB, a quarter of its
//! heap), and scans all of them on every publish.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use tracing::{debug, warn};

use crate::k8s::is_not_found;

/// How long a repeat joins the earlier event's series (kube-runtime's and client-go's window).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// The API server's limit on an event's note.
const MAX_NOTE_CHARS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What is remembered of a published event, to count its repeats.
struct Series {
    name: String,
    namespace: String,
    count: i32,
    last: Instant,
}

/// Publishes events as one component (`controller`) on one node or host (`instance`).
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    by_key: HashMap<u64, Series>,
    pruned: Option<Instant>,
}

impl Recent {
    /// Forgets series older than the window; at most once a minute, so a publish stays O(1)
    /// amortised however many objects have events.
    fn prune(&mut self, now: Instant) {
        if self
            .pruned
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60))
        {
            return;
        }
        self.by_key
            .retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
        self.pruned = Some(now);
    }

    /// The repeat to record for `key`: the earlier event's name, namespace and new count.
    fn repeat(&mut self, key: u64, now: Instant) -> Option<(String, String, i32)> {
        self.prune(now);
        let series = self
            .by_key
            .get_mut(&key)
            .filter(|s| now.duration_since(s.last) < SERIES_WINDOW)?;
        series.count += 1;
        series.last = now;
        Some((series.name.clone(), series.namespace.clone(), series.count))
    }
}

impl EventRecorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        EventRecorder {
            client,
            controller: controller.into(),
            instance: instance.into(),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// Records an event about `object`. A failure is logged, never returned: events must not
    /// hold up the work they describe.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let regarding = &object.object_ref(&());
        let note: String = note.chars().take(MAX_NOTE_CHARS).collect();
        let Err(e) = self.publish_or_count(regarding, type_, reason, &note).await else {
            return;
        };
        let object = format!(
            "{}/{}",
            regarding.namespace.as_deref().unwrap_or_default(),
            regarding.name.as_deref().unwrap_or_default()
        );
        // Deleting a namespace deletes its VMs, whose last events then have nowhere to go.
        if namespace_terminating(&e) {
            debug!(object = %object, "no event {reason}: the namespace is being deleted");
        } else {
            warn!(object = %object, error = %e, "cannot record event {reason}");
        }
    }

    async fn publish_or_count(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let key = series_key(regarding, type_, reason, note);
        let now = Instant::now();
        let repeat = self
            .recent
            .lock()
            .map(|mut recent| recent.repeat(key, now))
            .unwrap_or(None);
        if let Some((name, namespace, count)) = repeat {
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(Timestamp::now()),
            };
            let patch = serde_json::json!({ "series": series });
            let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                // The API server has let the event expire: start a new one.
                Err(e) if is_not_found(&e) => {}
                other => return other.map(drop),
            }
        }
        let event = self.new_event(regarding, type_, reason, note);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let created = api.create(&PostParams::default(), &event).await?;
        if let Ok(mut recent) = self.recent.lock() {
            recent.by_key.insert(
                key,
                Series {
                    name: created.metadata.name.unwrap_or_default(),
                    namespace,
                    count: 1,
                    last: now,
                },
            );
        }
        Ok(())
    }

    fn new_event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> Event {
        let now = Timestamp::now();
        let object = regarding.name.as_deref().unwrap_or("object");
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(object, now)),
                namespace: Some(
                    regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(type_.as_str().into()),
            reason: Some(reason.into()),
            action: Some(reason.into()),
            note: Some(note.into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

/// `<object>.<nanoseconds in hex>`: unique per object and moment, as client-go names events.
/// An object's name may itself be 253 characters, the most an event's name may be: it is cut
/// so that the whole stays a valid DNS subdomain (the cut part ending in a letter or digit).
fn event_name(object: &str, now: Timestamp) -> String {
    let suffix = format!(".{:x}", now.as_nanosecond());
    let room = crate::domain::limits::DNS_SUBDOMAIN_MAX_LEN - suffix.len();
    let head = object.get(..room).unwrap_or(object);
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let head = if head.is_empty() { "object" } else { head };
    format!("{head}{suffix}")
}

fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.details.as_ref().is_some_and(|d| {
        d.causes.iter().any(|c| c.reason == "NamespaceTerminating")
    }))
}

/// Events with the same key are repeats of one another. The note is part of it: a changed
/// message is news, not a repeat.
fn series_key(regarding: &ObjectReference, type_: EventType, reason: &str, note: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    (
        &regarding.uid,
        &regarding.namespace,
        &regarding.name,
        &regarding.kind,
    )
        .hash(&mut hasher);
    (type_.as_str(), reason, note).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("VirtualMachine".into()),
            namespace: Some("ns".into()),
            name: Some("vm".into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    #[test]
    fn event_names_stay_valid_for_any_valid_object_name() {
        let now = Timestamp::now();
        let suffix = format!(".{:x}", now.as_nanosecond());
        assert_eq!(event_name("testvm", now), format!("testvm{suffix}"));
        // 253 characters whose cut would end in '-' or '.': the cut part ends alphanumeric.
        let long = format!("{}-b.{}", "a".repeat(230), "c".repeat(19));
        for object in [long.as_str(), &"x".repeat(253), &"a.".repeat(126)] {
            let name = event_name(object, now);
            assert!(name.len() <= 253, "{} characters", name.len());
            assert!(name.ends_with(&suffix));
            let head = name.strip_suffix(&suffix).unwrap();
            assert!(object.starts_with(head) && !head.is_empty());
            assert!(
                head.ends_with(|c: char| c.is_ascii_alphanumeric()),
                "{head}"
            );
        }
    }

    #[test]
    fn a_changed_note_reason_type_or_object_is_a_new_event() {
        let key = series_key(&vm("a"), EventType::Warning, "SyncFailed", "x");
        assert_eq!(
            key,
            series_key(&vm("a"), EventType::Warning, "SyncFailed", "x")
        );
        for other in [
            series_key(&vm("a"), EventType::Warning, "SyncFailed", "y"),
            series_key(&vm("a"), EventType::Warning, "Started", "x"),
            series_key(&vm("a"), EventType::Normal, "SyncFailed", "x"),
            series_key(&vm("b"), EventType::Warning, "SyncFailed", "x"),
        ] {
            assert_ne!(key, other);
        }
    }

    #[test]
    fn repeats_count_up_within_the_window_and_are_forgotten_after_it() {
        let start = Instant::now();
        let mut recent = Recent::default();
        assert_eq!(recent.repeat(1, start), None);
        recent.by_key.insert(
            1,
            Series {
                name: "vm.1".into(),
                namespace: "ns".into(),
                count: 1,
                last: start,
            },
        );
        let soon = start + Duration::from_secs(10);
        assert_eq!(
            recent.repeat(1, soon),
            Some(("vm.1".into(), "ns".into(), 2))
        );
        assert_eq!(
            recent.repeat(1, soon),
            Some(("vm.1".into(), "ns".into(), 3))
        );
        // Each repeat restarts the window; past it the series is over and pruned.
        let late = soon + SERIES_WINDOW;
        assert_eq!(recent.repeat(1, late), None);
        assert!(recent.by_key.is_empty());
    }
}
