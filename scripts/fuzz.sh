#!/usr/bin/env bash
# Fuzz every parser of outside bytes with the stable-toolchain harness (fuzz/), starting from
# the committed seed corpora in fuzz/corpus/. Crashing inputs land in fuzz/artifacts/<target>/.
#   scripts/fuzz.sh                 # every target, 1 000 000 executions each
#   scripts/fuzz.sh wire 200000     # one target, N executions
#   FUZZ_SECONDS=60 scripts/fuzz.sh # every target for 60 s each
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
target=${1:-all}
runs=${2:-1000000}
cargo build --profile fuzz --quiet -p overparam-fuzz
args=("$target" --runs "$runs" --corpus fuzz/corpus --artifacts fuzz/artifacts)
if [[ -n "${FUZZ_SECONDS:-}" ]]; then args+=(--seconds "$FUZZ_SECONDS" --runs 18446744073709551615); fi
exec target/fuzz/overparam-fuzz "${args[@]}"
