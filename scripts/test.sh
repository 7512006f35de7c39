#!/usr/bin/env bash
# The whole test suite, set-up included (idempotent): the virtualenv with libtorch, then every
# crate's tests in release mode (the fold property tests and PyTorch golden checks need speed).
# Ends with one total line, "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --release "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ {p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}' "$log"
exit "$status"
