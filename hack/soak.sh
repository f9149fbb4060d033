#!/usr/bin/env bash
# The long version of the agent-kill test: SIGKILL at random moments, KILLS times, while the
# agents reconcile VMS VMs on libvirtd's test driver plus 2 tiny guests under QEMU (TCG).
# Prints, after each run: kills survived, VMs restarted (must be 0), leaks (must be 0).
# Usage: hack/soak.sh [KILLS [VMS]]   (default 20 kills, 50 VMs; NODEVIRT_SOAK_SEED replays)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/hack/install-deps.sh"
cargo build --locked --all-targets

export NODEVIRT_CLUSTER_DIR=/tmp/nodevirt-cluster/soak
trap '"$REPO_ROOT/hack/cluster-down.sh" soak' EXIT
"$REPO_ROOT/hack/cluster-up.sh" soak >/dev/null
source "$NODEVIRT_CLUSTER_DIR/env"

export NODEVIRT_SOAK_KILLS=${1:-20} NODEVIRT_SOAK_VMS=${2:-50}
log "soak: $NODEVIRT_SOAK_KILLS kills, $NODEVIRT_SOAK_VMS test-driver VMs + 2 tiny guests"
cargo test --locked --test faults_e2e -- --exact \
  killing_the_agent_at_random_moments_restarts_and_leaks_nothing --nocapture 2>&1 |
  grep -E '^(soak|round|kill moments|test )|panicked|timed out'
