//! Any bytes as a manifest for `nodevirt render`: refusing them is fine, panicking or
//! rendering XML libvirt could not parse is not (see nodevirt::fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(bug) = nodevirt::fuzzing::render_manifest_bytes(data) {
        panic!("{bug}");
    }
});
