#!/usr/bin/env bash
# Benchmarks on the real local cluster: prints one table and writes target/bench/latest.json.
# What each line measures: benches/node.rs (its header) and docs/performance.md.
# Builds with the bench (release) profile; takes about 10 minutes on 2 cores.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/hack/install-deps.sh"

export NODEVIRT_CLUSTER_DIR=/tmp/nodevirt-cluster/bench
trap '"$REPO_ROOT/hack/cluster-down.sh" bench' EXIT
log "building (release)"
cargo bench --locked --no-run
cargo build --locked
"$REPO_ROOT/hack/cluster-up.sh" bench >/dev/null
source "$NODEVIRT_CLUSTER_DIR/env"

log "render throughput (criterion)"
cargo bench --locked --bench render -- --noplot 2>&1 | grep -E '^render|time:|thrpt:' || true
log "the agent, beside libvirt (benches/node.rs)"
cargo bench --locked --bench node
