#!/usr/bin/env bash
# The whole test suite, set-up included (idempotent): the virtualenv with libtorch, then every
# crate's tests in release mode (the fold property tests and PyTorch golden checks need speed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --release "$@"
