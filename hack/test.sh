#!/usr/bin/env bash
# Installs what the tests need and runs every test, unit to end-to-end.
# The end-to-end tests start their own control plane and libvirtd (tests/support/cluster.rs
# calls hack/cluster-up.sh) and stop them when they finish.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/hack/install-deps.sh"

log "cargo fmt --check / clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

log "cargo test"
# One test binary at a time: the end-to-end binaries each start a whole cluster.
cargo test --locked --all-targets -- --test-threads="${NODEVIRT_TEST_THREADS:-4}"
