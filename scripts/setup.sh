#!/usr/bin/env bash
# Idempotent set-up of the project virtualenv: libtorch (torch==2.11.0, the version tch 0.24
# expects) and the Python packages the golden tests use. `.venv/libtorch` is the path that
# .cargo/config.toml gives torch-sys, so cargo finds libtorch with nothing exported.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
PY=${PYTHON:-python3}

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" >/dev/null 2>&1; then
  echo "setup: installing torch==$TORCH_VERSION (a CUDA build, ~4.5 GB with its nvidia wheels)" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
# ONNX Runtime (the CPU runtime, loaded at run time) and onnx (its onnx.proto generates our
# protobuf types at build time; its checker validates exports in tests).
if ! .venv/bin/python -c "import onnxruntime, onnx, safetensors, numpy, sys; sys.exit(onnxruntime.__version__ != '1.31.1' or onnx.__version__ != '1.23.2')" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check numpy safetensors onnxruntime==1.31.1 onnx==1.23.2
fi
# rosbags: the golden reference for ROS 2 CDR bytes and RIHS01 type hashes in the bridge tests.
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('rosbags') != '0.11.9')" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check rosbags==0.11.9
fi
# eclipse-zenoh: the independent ROS 2 camera of the bridge tests (bridge/tests/python/ros_camera.py)
# publishes through it; 1.10.2 is the zenoh version of the Rust side.
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('eclipse-zenoh') != '1.10.2')" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check eclipse-zenoh==1.10.2
fi
site=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
ln -sfn "$site/torch" .venv/libtorch
ln -sfn "$site/onnx/onnx.proto" .venv/onnx.proto
ln -sfn "$(ls "$site"/onnxruntime/capi/libonnxruntime.so.* | head -n 1)" .venv/libonnxruntime.so
echo "setup: ok (libtorch, onnx.proto and libonnxruntime.so linked under .venv/)" >&2
