#!/usr/bin/env bash
# Runs each cargo-fuzz target of fuzz/ for FUZZ_SECONDS (default 60), starting from its
# committed seed corpus, and prints executions and findings. Needs the nightly toolchain;
# installs cargo-fuzz if it is missing. No cluster, no libvirtd (admin_request uses libvirt's
# in-process test:///default driver).
#
#   hack/fuzz.sh                      # every target
#   FUZZ_SECONDS=600 hack/fuzz.sh render_manifest
#
# The seeds (fuzz/corpus/<target>/) are copied to fuzz/corpus-work/<target>/ and the fuzzer
# grows that copy, so the committed seeds stay small. Crashes, timeouts and leaks are written
# to fuzz/artifacts/<target>/, with the run's log beside them; replay one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# Exits 1 when a target had a finding.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
# address (default: catches memory errors in the libvirt adapter's unsafe code) or none (faster).
FUZZ_SANITIZER=${FUZZ_SANITIZER:-address}

# The longest input each target is given: a manifest a person would write, a request with a
# long path or query.
max_len() {
    case $1 in
        render_manifest) echo 16384 ;;
        admin_request) echo 4096 ;;
        *) die "unknown fuzz target $1 (expected render_manifest or admin_request)" ;;
    esac
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(render_manifest admin_request)
for target in "${targets[@]}"; do max_len "$target" >/dev/null; done

rustup run nightly rustc --version >/dev/null 2>&1 ||
    die "the nightly toolchain is needed: rustup toolchain install nightly"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

summary=()
failed=0
for target in "${targets[@]}"; do
    work=fuzz/corpus-work/$target
    artifacts=fuzz/artifacts/$target
    rm -rf "$work"
    mkdir -p "$work" "$artifacts"
    cp fuzz/corpus/"$target"/* "$work"/
    log "building $target"
    nice -n 10 cargo +nightly fuzz build --sanitizer "$FUZZ_SANITIZER" "$target"
    before=$(find "$artifacts" -type f ! -name '*.log' | wc -l)
    run_log=$artifacts/run-$(date +%Y%m%d-%H%M%S).log
    log "fuzzing $target for ${FUZZ_SECONDS}s from $(find "$work" -type f | wc -l) seeds (log: $run_log)"
    status=0
    nice -n 10 cargo +nightly fuzz run --sanitizer "$FUZZ_SANITIZER" "$target" "$work" -- \
        -max_total_time="$FUZZ_SECONDS" -max_len="$(max_len "$target")" -timeout=30 \
        -print_final_stats=1 >"$run_log" 2>&1 || status=$?
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run_log" | tail -n1)
    findings=$(($(find "$artifacts" -type f ! -name '*.log' | wc -l) - before))
    if [[ $status -ne 0 || $findings -gt 0 ]]; then
        failed=1
        log "$target: FINDING (exit $status); the end of its log:"
        tail -n 40 "$run_log" >&2
    fi
    summary+=("$(printf '%-16s %10s executions in %ss, %s new corpus files, %s findings' \
        "$target" "${executions:-?}" "$FUZZ_SECONDS" \
        "$(($(find "$work" -type f | wc -l) - $(find fuzz/corpus/"$target" -type f | wc -l)))" \
        "$findings")")
done

log "summary"
printf '%s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
    log "findings are in fuzz/artifacts/; fix them in the library with a unit test each"
    exit 1
fi
