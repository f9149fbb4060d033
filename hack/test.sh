#!/usr/bin/env bash
# Installs what the tests need and runs every test, unit to end-to-end.
# The end-to-end tests run against a cluster this script starts (hack/cluster-up.sh test:
# etcd, kube-apiserver, kube-controller-manager, libvirtd in its network namespace) and stops
# when it exits, whatever the outcome.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/hack/install-deps.sh"
export NODEVIRT_CLUSTER_DIR=${NODEVIRT_CLUSTER_DIR:-/tmp/nodevirt-cluster/test}
# Measured: a clean build and clippy take 2.3 GB of target/; the cluster, its guests' disks and
# the agents' state well under 1 GB.
require_free_space "$REPO_ROOT/target" 4096 "building the tests"
require_free_space "$NODEVIRT_CLUSTER_DIR" 1024 "the test cluster"

log "cargo fmt --check / clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

log "building"
# What the tests run; clippy above has checked the benches, which build with the release profile.
cargo build --locked --lib --bins --tests
trap '"$REPO_ROOT/hack/cluster-down.sh" test' EXIT
"$REPO_ROOT/hack/cluster-up.sh" test >/dev/null
source "$NODEVIRT_CLUSTER_DIR/env"

log "cargo test"
# Not --all-targets: that would also run benches/node.rs, which drives the cluster for minutes.
cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads="${NODEVIRT_TEST_THREADS:-4}"

# These stop libvirtd and the API server that every other test uses: alone, one at a time.
log "outage tests (alone)"
cargo test --locked --test outage_e2e -- --ignored --test-threads=1
