//! Any bytes as an HTTP/1.1 connection to the admin socket: the router must answer in time,
//! without a panic or a 500 (see nodevirt::fuzzing::AdminHarness).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nodevirt::fuzzing::AdminHarness;

/// Built on the first input and kept: the runtime, libvirt connection and state dir.
static HARNESS: OnceLock<AdminHarness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(|| {
        AdminHarness::new().unwrap_or_else(|e| panic!("{}", nodevirt::k8s::error_chain(&e)))
    });
    if let Err(bug) = harness.exchange(data) {
        panic!("{bug}");
    }
});
