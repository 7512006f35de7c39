#!/usr/bin/env bash
# The main job: on a fresh clone with no dataset, generate synthetic NYUv2-layout scenes, train
# the multi-task network with SFO (routine R1), fold and verify it, export FP32/FP16/INT8 ONNX
# with calibration, measure accuracy per precision and latency against a budget, publish a few
# hundred frames over zenoh to an in-process listener, and write runs/demo/report.md with plots.
# Set-up included and idempotent; extra arguments go to `overparam pipeline` (see --help),
# e.g. `scripts/main.sh --data /path/to/nyuv2` for real NYUv2.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet
exec target/release/overparam pipeline "$@"
