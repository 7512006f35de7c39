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
have() { .venv/bin/python -c "import $1" >/dev/null 2>&1; }
if ! .venv/bin/python -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" >/dev/null 2>&1; then
  echo "setup: installing torch==$TORCH_VERSION (a CUDA build, ~4.5 GB with its nvidia wheels)" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
if ! have safetensors || ! have numpy; then
  .venv/bin/pip install --quiet --disable-pip-version-check numpy safetensors
fi
torch_dir=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
ln -sfn "$torch_dir" .venv/libtorch
echo "setup: ok (libtorch at .venv/libtorch -> $torch_dir)" >&2
