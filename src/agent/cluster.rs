//! What the agent's reconcile reads and writes in the cluster, as a trait: [`Kube`] talks to
//! the API server, and the unit tests drive the same plan and executor with a fake.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use crate::api::{VirtualMachine, VirtualMachineStatus};
use crate::events::{EventRecorder, EventType};
use crate::k8s;
use crate::storage::registry::Puller;

use super::finalizer;
use super::inputs::{InputError, Inputs, gather};

pub trait Cluster: Send + Sync {
    /// The VM as the API server holds it now (the cache can lag behind our own last write).
    fn latest<'a>(
        &'a self,
        vm: &'a VirtualMachine,
    ) -> BoxFuture<'a, Result<Option<VirtualMachine>, kube::Error>>;
    /// Adds (`present`) or removes the agent's finalizer; a 409 means the VM changed meanwhile.
    fn set_finalizer<'a>(
        &'a self,
        vm: &'a VirtualMachine,
        present: bool,
    ) -> BoxFuture<'a, Result<(), kube::Error>>;
    fn write_status<'a>(
        &'a self,
        vm: &'a VirtualMachine,
        status: &'a VirtualMachineStatus,
    ) -> BoxFuture<'a, Result<(), kube::Error>>;
    /// Records an event; a failure is logged, never returned.
    fn publish<'a>(
        &'a self,
        vm: &'a VirtualMachine,
        type_: EventType,
        reason: &'a str,
        note: &'a str,
    ) -> BoxFuture<'a, ()>;
    /// What the VM's volumes need: claims' images, user-data, registry images.
    fn gather<'a>(&'a self, vm: &'a VirtualMachine) -> BoxFuture<'a, Result<Inputs, InputError>>;
    /// The VM's holder pod on this node, from the agent's cache of them.
    fn holder_pod<'a>(&'a self, vm: &'a VirtualMachine) -> BoxFuture<'a, HolderLookup>;
}

/// What the agent knows of a VM's holder pod.
#[derive(Debug, Clone, PartialEq)]
pub enum HolderLookup {
    /// The agent runs VMs without holder pods (`--require-holder-pod=false`).
    NotRequired,
    /// The cache of this node's holder pods has this one, or none.
    Cached(Option<std::sync::Arc<Pod>>),
}

/// This node's holder pods (label `kubevirt.io=virt-launcher`, field `spec.nodeName`), cached.
pub struct HolderPods {
    pub store: Store<Pod>,
    /// True once the cache was listed: before, a missing pod means nothing.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

pub struct Kube {
    pub client: Client,
    pub recorder: EventRecorder,
    pub puller: Puller,
    /// `None` when holder pods are not required.
    pub holders: Option<HolderPods>,
}

impl Cluster for Kube {
    fn latest<'a>(
        &'a self,
        vm: &'a VirtualMachine,
    ) -> BoxFuture<'a, Result<Option<VirtualMachine>, kube::Error>> {
        let api = kube::Api::<VirtualMachine>::namespaced(
            self.client.clone(),
            &vm.namespace().unwrap_or_default(),
        );
        Box::pin(async move { api.get_opt(&vm.name_any()).await })
    }

    fn set_finalizer<'a>(
        &'a self,
        vm: &'a VirtualMachine,
        present: bool,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(finalizer::set(&self.client, vm, present))
    }

    // Untyped, so that the answer is not decoded: the VM may be one nodevirt cannot read.
    fn write_status<'a>(
        &'a self,
        vm: &'a VirtualMachine,
        status: &'a VirtualMachineStatus,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            k8s::patch_status_untyped(&self.client, vm, status)
                .await
                .map(drop)
        })
    }

    fn publish<'a>(
        &'a self,
        vm: &'a VirtualMachine,
        type_: EventType,
        reason: &'a str,
        note: &'a str,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.recorder.publish(vm, type_, reason, note))
    }

    fn holder_pod<'a>(&'a self, vm: &'a VirtualMachine) -> BoxFuture<'a, HolderLookup> {
        Box::pin(async move {
            let Some(holders) = &self.holders else {
                return HolderLookup::NotRequired;
            };
            let _ = holders.synced.clone().wait_for(|synced| *synced).await;
            HolderLookup::Cached(crate::api::holder::holder_of(vm, holders.store.state()))
        })
    }

    fn gather<'a>(&'a self, vm: &'a VirtualMachine) -> BoxFuture<'a, Result<Inputs, InputError>> {
        Box::pin(gather(&self.client, &self.puller, vm))
    }
}
