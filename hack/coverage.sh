#!/usr/bin/env bash
# Line coverage of the unit tests (cargo test --lib), per file and per module folder.
#   hack/coverage.sh            # every folder of src/
#   hack/coverage.sh src/agent  # one folder, file by file
# Builds an instrumented copy under $NODEVIRT_COVERAGE_DIR (default /tmp/nodevirt-coverage),
# never in the clone's target/, and reads the profiles with the llvm-profdata and llvm-cov
# whose major version matches rustc's LLVM (a profile from another version cannot be read).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/hack/install-deps.sh"
folder=${1:-src}
out=${NODEVIRT_COVERAGE_DIR:-/tmp/nodevirt-coverage}
require_free_space "$out" 4096 "the instrumented build"

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm_major" ] || die "rustc -vV names no LLVM version"
llvm_bin=/usr/lib/llvm-$llvm_major/bin
if [ ! -x "$llvm_bin/llvm-cov" ]; then
  log "apt: installing llvm-$llvm_major (llvm-cov and llvm-profdata for rustc's LLVM)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "llvm-$llvm_major" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "llvm-$llvm_major" >/dev/null; }
fi

log "building and running the unit tests with -C instrument-coverage (in $out)"
rm -rf "$out/profiles"
mkdir -p "$out/profiles"
export CARGO_TARGET_DIR=$out/target
export RUSTFLAGS="-C instrument-coverage"
export LLVM_PROFILE_FILE=$out/profiles/%p-%m.profraw
cargo test --locked --lib --no-run 2>&1 | tail -n 1 >&2
test_binary=$(cargo test --locked --lib --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .profile.test and .target.name == "nodevirt") | .executable' |
  tail -n 1)
[ -x "$test_binary" ] || die "no instrumented unit-test binary was built"
"$test_binary" --test-threads=2 -q >&2

"$llvm_bin/llvm-profdata" merge -sparse "$out"/profiles/*.profraw -o "$out/unit.profdata"
# Per-file lines: the project's own sources, under the folder asked for.
"$llvm_bin/llvm-cov" export --summary-only --instr-profile="$out/unit.profdata" "$test_binary" |
  jq -r --arg root "$REPO_ROOT/" --arg folder "$folder/" '
    .data[0].files[]
    | select(.filename | startswith($root + $folder))
    | [(.filename | ltrimstr($root)), .summary.lines.covered, .summary.lines.count] | @tsv' |
  sort >"$out/files.tsv"
[ -s "$out/files.tsv" ] || die "no source file under $folder/ was measured"

percent() { awk -v c="$1" -v n="$2" 'BEGIN { printf "%5.1f%%", n ? 100 * c / n : 0 }'; }
# A folder's total: its files and those of its sub-folders.
printf '%-40s %7s %7s %7s\n' path covered lines percent
while IFS=$'\t' read -r file covered lines; do
  printf '%-40s %7d %7d %7s\n' "$file" "$covered" "$lines" "$(percent "$covered" "$lines")"
done <"$out/files.tsv"
echo
awk -F'\t' '{ n = split($1, p, "/"); d = p[1]; for (i = 2; i < n; i++) { d = d "/" p[i]; c[d] += $2; l[d] += $3 } c["total"] += $2; l["total"] += $3 }
  END { for (d in c) printf "%s\t%d\t%d\n", d, c[d], l[d] }' "$out/files.tsv" | sort |
  while IFS=$'\t' read -r dir covered lines; do
    [ "$dir" = total ] || dir=$dir/
    printf '%-40s %7d %7d %7s\n' "$dir" "$covered" "$lines" "$(percent "$covered" "$lines")"
  done
