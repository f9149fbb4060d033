#!/usr/bin/env bash
# Installs what the tests need and runs every test, unit to end-to-end, on two clusters this
# script starts and stops, whatever the outcome:
#   1. "test" (hack/cluster-up.sh test): the control plane and libvirtd in its network
#      namespace; the tests start agents and controllers as plain processes, many at once;
#   2. "nodes" (hack/cluster-up.sh nodes --nodes 2, then hack/deploy.sh nodes): two real
#      nodes with nodevirt deployed from its image as a DaemonSet and a Deployment, for
#      tests/nodes_e2e.rs, tests/nodes_recovery_e2e.rs, tests/nodes_scheduling_e2e.rs and
#      tests/nodes_console_e2e.rs.
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
"$REPO_ROOT/hack/cluster-down.sh" test

log "real nodes: a two-node cluster with nodevirt deployed from its image"
export NODEVIRT_CLUSTER_DIR=/tmp/nodevirt-cluster/nodes
trap '"$REPO_ROOT/hack/cluster-down.sh" nodes' EXIT
"$REPO_ROOT/hack/cluster-up.sh" nodes --nodes 2 >/dev/null
# The debug build, as every other suite uses: the image is the same but for the binary.
"$REPO_ROOT/hack/deploy.sh" nodes "$REPO_ROOT/target/debug/nodevirt" >/dev/null
source "$NODEVIRT_CLUSTER_DIR/env"
# --nocapture: the tests print what they measure (rollout duration, node-loss times).
cargo test --locked --test nodes_e2e --test nodes_recovery_e2e --test nodes_scheduling_e2e --test nodes_console_e2e -- --ignored \
  --test-threads=1 --nocapture
