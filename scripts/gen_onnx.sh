#!/usr/bin/env bash
# Regenerates engine/src/pb/onnx.rs (the ONNX protobuf types, committed so that a deploy build
# needs no Python) from the virtualenv's onnx.proto. The generator is the staleness test
# engine/tests/onnx_pb.rs run in write mode; without the variable the same test checks the file.
# Needs scripts/setup.sh's .venv (onnx==1.23.2), or ONNX_PROTO=/path/to/onnx.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${ONNX_PROTO:-} && ! -e .venv/onnx.proto ]]; then
  echo "gen_onnx: .venv/onnx.proto not found: run scripts/setup.sh or set ONNX_PROTO" >&2
  exit 1
fi
OVERPARAM_WRITE_ONNX_PB=1 cargo test --release -p overparam-engine --test onnx_pb -- --nocapture
cargo test --release -p overparam-engine --test onnx_pb
git --no-pager diff --stat -- engine/src/pb/onnx.rs
