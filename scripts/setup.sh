#!/usr/bin/env bash
# Idempotent set-up of the project virtualenv.
#
#   scripts/setup.sh           everything: libtorch (torch==2.11.0, the version tch 0.24
#                              expects; a CUDA build, ~4.5 GB), ONNX Runtime, onnx (its
#                              onnx.proto checks the committed protobuf types; its checker
#                              validates exports in tests) and the golden-test packages.
#   scripts/setup.sh --deploy  only what a deploy-only build (`--no-default-features`) runs
#                              with: onnxruntime==1.31.1 (~30 MB; x86_64 and aarch64 wheels),
#                              linked as .venv/libonnxruntime.so. The build itself needs no
#                              Python at all; this is just one way to get the runtime library.
#
# `.venv/libtorch` is the path that .cargo/config.toml gives torch-sys, so cargo finds libtorch
# with nothing exported.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy=0
case "${1:-}" in
  --deploy) deploy=1 ;;
  "") ;;
  -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
  *) echo "setup: unknown option '$1' (--deploy or nothing)" >&2; exit 2 ;;
esac

TORCH_VERSION=2.11.0
ORT_VERSION=1.31.1
ONNX_VERSION=1.23.2 # engine/tests/onnx_pb.rs names the same version
ONNXSCRIPT_VERSION=0.7.2
PY=${PYTHON:-python3}
pip=(.venv/bin/pip install --quiet --disable-pip-version-check)

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi

if ((deploy)); then
  if ! .venv/bin/python -c "import onnxruntime, sys; sys.exit(onnxruntime.__version__ != '$ORT_VERSION')" >/dev/null 2>&1; then
    "${pip[@]}" "onnxruntime==$ORT_VERSION"
  fi
  site=$(.venv/bin/python -c 'import onnxruntime, os; print(os.path.dirname(os.path.dirname(onnxruntime.__file__)))')
  libs=("$site"/onnxruntime/capi/libonnxruntime.so.*)
  ln -sfn "${libs[0]}" .venv/libonnxruntime.so
  echo "setup: ok (deploy: .venv/libonnxruntime.so; build with cargo build --release --no-default-features)" >&2
  exit 0
fi

if ! .venv/bin/python -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" >/dev/null 2>&1; then
  echo "setup: installing torch==$TORCH_VERSION (a CUDA build, ~4.5 GB with its nvidia wheels)" >&2
  "${pip[@]}" "torch==$TORCH_VERSION"
fi
# onnxscript: torch.onnx.export's default (dynamo) exporter imports it; the import tests and
# scripts/pretrain_fashion_mnist.py export through it. Installed with onnx pinned so it cannot
# move onnx off the version the protobuf check names.
if ! .venv/bin/python -c "import onnxruntime, onnx, onnxscript, safetensors, numpy, sys; sys.exit(onnxruntime.__version__ != '$ORT_VERSION' or onnx.__version__ != '$ONNX_VERSION' or onnxscript.__version__ != '$ONNXSCRIPT_VERSION')" >/dev/null 2>&1; then
  "${pip[@]}" numpy safetensors "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" "onnxscript==$ONNXSCRIPT_VERSION"
fi
# rosbags: the golden reference for ROS 2 CDR bytes and RIHS01 type hashes in the bridge tests.
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('rosbags') != '0.11.9')" >/dev/null 2>&1; then
  "${pip[@]}" rosbags==0.11.9
fi
# eclipse-zenoh: the independent ROS 2 camera of the bridge tests (bridge/tests/python/ros_camera.py)
# publishes through it; 1.10.2 is the zenoh version of the Rust side.
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('eclipse-zenoh') != '1.10.2')" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check eclipse-zenoh==1.10.2
fi
site=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
ln -sfn "$site/torch" .venv/libtorch
ln -sfn "$site/onnx/onnx.proto" .venv/onnx.proto
libs=("$site"/onnxruntime/capi/libonnxruntime.so.*)
ln -sfn "${libs[0]}" .venv/libonnxruntime.so
echo "setup: ok (libtorch, onnx.proto and libonnxruntime.so linked under .venv/)" >&2
