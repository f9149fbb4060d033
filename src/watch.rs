//! Watches that one bad object cannot stop, and that catch up quickly after an outage.
//!
//! kube-runtime's typed watcher decodes a whole list page at once: one object the API server
//! admitted but our types cannot read (a field out of range, written before the CRD's
//! schema had bounds) failed every list, so the agent never became ready and the controller
//! placed nothing; and kube's client logged the whole response, every VM's user-data
//! included. Here the list and watch are made untyped and each object is decoded alone:
//! one that does not decode is logged by namespace/name/uid with the field at fault (never
//! its body) and handed to [`Decode::unreadable`], which for a VirtualMachine keeps it, marked,
//! so that its agent can fail it with the reason; other kinds are skipped.

use std::time::Duration;

use futures::{Stream, TryStreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::core::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::api::virtual_machine::{self, UNREADABLE_ANNOTATION};
use crate::api::{
    OfflineVirtualMachine, VirtualMachine, VirtualMachinePreset, VirtualMachineReplicaSet,
};

/// A kind watched through [`watch`].
pub trait Decode: Resource<DynamicType = ()> + DeserializeOwned + Sized {
    /// What stands in the cache for `object` (whose metadata is `meta`) when it does not
    /// decode because of `problem`: `None` skips it.
    fn unreadable(object: &serde_json::Value, meta: ObjectMeta, problem: String) -> Option<Self> {
        let _ = (object, meta, problem);
        None
    }
}

/// The watch events of `K` matching `config`, every object decoded on its own, with
/// `metadata.managedFields` dropped (they can be larger than the rest of the object and
/// nothing here reads them).
pub fn watch<K: Decode + Clone + Send + 'static>(
    client: Client,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<K>(&()));
    watcher(api, config)
        .backoff(WatchBackoff::default())
        .map_ok(|event| decode_event(event))
        .try_filter_map(|event| async move { Ok(event) })
}

/// [`watch`] kept in a reflector: the cache, and the stream of changed objects that keeps it
/// current (it must be polled, by a task or a Controller).
pub fn reflected<K: Decode + Clone + std::fmt::Debug + Send + Sync + 'static>(
    client: Client,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) {
    let (reader, writer) = reflector::store();
    let stream = watch::<K>(client, config).reflect(writer).applied_objects();
    (reader, stream)
}

fn decode_event<K: Decode>(event: watcher::Event<DynamicObject>) -> Option<watcher::Event<K>> {
    use watcher::Event;
    Some(match event {
        Event::Apply(object) => Event::Apply(decode(object)?),
        Event::InitApply(object) => Event::InitApply(decode(object)?),
        Event::Delete(object) => Event::Delete(decode(object)?),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    })
}

/// One object as `K`, or what `K` keeps of it when it does not decode.
pub fn decode<K: Decode>(mut object: DynamicObject) -> Option<K> {
    object.metadata.managed_fields = None;
    // Only this module marks an object unreadable: a user's own copy of the mark is dropped.
    if let Some(annotations) = object.metadata.annotations.as_mut() {
        annotations.remove(UNREADABLE_ANNOTATION);
    }
    let meta = object.metadata.clone();
    let mut value = object.data;
    if let Some(map) = value.as_object_mut() {
        map.insert("metadata".into(), serde_json::to_value(&meta).ok()?);
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    match serde_path_to_error::deserialize::<_, K>(&value) {
        Ok(decoded) => Some(decoded),
        Err(e) => {
            let problem = format!("{}: {}", e.path(), e.inner());
            warn!(
                kind = %K::kind(&()),
                namespace = meta.namespace.as_deref().unwrap_or_default(),
                name = meta.name.as_deref().unwrap_or_default(),
                uid = meta.uid.as_deref().unwrap_or_default(),
                problem = %crate::api::quoted(&problem),
                "an object does not decode; it is left out of the watch"
            );
            K::unreadable(&value, meta, problem)
        }
    }
}

impl Decode for VirtualMachine {
    fn unreadable(object: &serde_json::Value, meta: ObjectMeta, problem: String) -> Option<Self> {
        let status = object
            .get("status")
            .and_then(|status| serde_json::from_value(status.clone()).ok());
        Some(virtual_machine::unreadable(meta, status, problem))
    }
}

impl Decode for OfflineVirtualMachine {}
impl Decode for VirtualMachineReplicaSet {}
impl Decode for VirtualMachinePreset {}
impl Decode for k8s_openapi::api::core::v1::Node {}
impl Decode for k8s_openapi::api::core::v1::Pod {}

/// Reconnecting after an API outage: 250 ms doubling to 2 s, each with up to 50% more at
/// random so a fleet of agents does not reconnect in step. kube-runtime's default goes up to
/// 30 s, which alone kept the status of VMs that changed during a 65 s outage stale for
/// up to half a minute after the API server answered again; 2 s bounds that while a node's
/// agent still asks a dead API server only about once every 2–3 s.
#[derive(Debug, Clone)]
struct WatchBackoff {
    next: Duration,
}

const WATCH_BACKOFF_FIRST: Duration = Duration::from_millis(250);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: WATCH_BACKOFF_FIRST,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(WATCH_BACKOFF_MAX);
        Some(delay + delay.mul_f64(jitter()))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_BACKOFF_FIRST;
    }
}

/// A number in [0, 0.5): std's per-map random keys are enough for spreading retries.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    (bits % 1000) as f64 / 2000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": "vm", "namespace": "ns", "uid": "u1",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_good_object_decodes_without_its_managed_fields() {
        let vm: VirtualMachine = decode(object(serde_json::json!({
            "domain": {"cpu": {"cores": 2}}
        })))
        .unwrap();
        assert_eq!(vm.metadata.name.as_deref(), Some("vm"));
        assert!(vm.metadata.managed_fields.is_none());
        assert_eq!(vm.spec.domain.cpu.as_ref().and_then(|c| c.cores), Some(2));
        assert!(virtual_machine::unreadable_problem(&vm).is_none());
    }

    #[test]
    fn a_bad_vm_stays_marked_with_the_field_at_fault_and_other_kinds_are_skipped() {
        let bad = object(serde_json::json!({"domain": {"cpu": {"cores": 4294967296u64}}}));
        let vm: VirtualMachine = decode(bad.clone()).expect("kept, marked");
        assert_eq!(vm.metadata.uid.as_deref(), Some("u1"));
        let problem = virtual_machine::unreadable_problem(&vm).unwrap();
        assert!(problem.starts_with("spec.domain.cpu.cores: "), "{problem}");
        assert!(problem.contains("4294967296"), "{problem}");
        assert!(decode::<VirtualMachineReplicaSet>(bad).is_none());
    }

    #[test]
    fn a_user_cannot_mark_a_good_vm_unreadable() {
        let mut forged = object(serde_json::json!({"domain": {}}));
        forged.metadata.annotations =
            Some([(UNREADABLE_ANNOTATION.to_string(), "x".to_string())].into());
        let vm: VirtualMachine = decode(forged).unwrap();
        assert!(virtual_machine::unreadable_problem(&vm).is_none());
    }

    /// JSON shaped like a VM spec: real field names, any values, nested a few levels.
    fn spec_like() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            "[a-z0-9]{0,6}".prop_map(serde_json::Value::from),
        ];
        let keys = prop_oneof![
            Just("domain"),
            Just("cpu"),
            Just("cores"),
            Just("devices"),
            Just("disks"),
            Just("name"),
            Just("volumeName"),
            Just("bus"),
            Just("resources"),
            Just("requests"),
            Just("memory"),
            Just("volumes"),
            Just("terminationGracePeriodSeconds"),
        ];
        leaf.prop_recursive(4, 32, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(keys.clone(), inner, 0..4).prop_map(|m| {
                    serde_json::Value::Object(
                        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    )
                }),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever the API server holds, a VM reaches the cache: decoded, or marked with the
        /// path of the field at fault; decoding never panics.
        #[test]
        fn any_vm_is_decoded_or_marked_with_the_field_at_fault(spec in spec_like()) {
            let vm: VirtualMachine = decode(object(spec)).expect("a VM is always kept");
            if let Some(problem) = virtual_machine::unreadable_problem(&vm) {
                proptest::prop_assert!(problem.starts_with("spec"), "{}", problem);
                proptest::prop_assert_eq!(vm.metadata.uid.as_deref(), Some("u1"));
            }
        }
    }

    #[test]
    fn reconnects_back_off_to_two_seconds_and_reset() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next().unwrap()).collect();
        for (delay, base) in delays.iter().zip([250, 500, 1000, 2000, 2000, 2000]) {
            let base = Duration::from_millis(base);
            assert!(*delay >= base && *delay < base.mul_f64(1.5), "{delay:?}");
        }
        backoff.reset();
        assert!(backoff.next().unwrap() < Duration::from_millis(375));
    }
}
