#!/usr/bin/env bash
# The GPU check for the GPU machine as it is: one NVIDIA GPU, its own CUDA torch 2.11.0 (cu130,
# the same as .venv's) in `python3`, no TensorRT, no cargo, no pip installs, no network. What
# runs is the release binary built here and packed by scripts/gpu_pack.sh into .gpu/ (with
# Fashion-MNIST's gzip files), linked at run time against that machine's libtorch.
#
#   here:   cargo build --release && scripts/gpu_pack.sh
#   there:  bash scripts/gpu_check.sh            (device run, carry [".gpu"], OUT set)
#
# Steps, each bounded, the whole within GPU_CHECK_MINUTES (default 8):
#   1. doctor: libtorch, CUDA, one training step;
#   2. a training step per method (`bench train --device cuda`), the same on the CPU, and one
#      step of the same ResNet-18 in PyTorch eager on the same GPU (scripts/gpu/eager_step.py);
#   3. the fold gate of a CUDA training run with run.tf32 = true and = false: the f64 verdict
#      and the measured deviation of the CUDA model;
#   4. one epoch of Fashion-MNIST on CUDA (configs/fashion_mnist_vgg_small.toml);
#   5. the TensorRT steps, each skipped with a line saying why.
# A failed step is recorded and the next one still runs. Writes $OUT/summary.md (default
# OUT=runs/gpu-check) with every step's log in $OUT/logs. Exit 0 when every step that can run
# here passed, 1 otherwise, 2 when there is no GPU or no usable torch.
#
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (to check this script on a machine
# without a GPU; the numbers then mean nothing). GPU_DIR (default .gpu), GPU_PYTHON (default
# python3, the one with torch).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
GPU_DIR=$(cd "${GPU_DIR:-.gpu}" 2>/dev/null && pwd || echo "${GPU_DIR:-.gpu}")
PY=${GPU_PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
summary=$OUT/summary.md
limit=$((${GPU_CHECK_MINUTES:-8} * 60))
t0=$SECONDS
rows=()
notes=()

summary_head="$(date -u +%Y-%m-%dT%H:%M:%SZ), binary of commit \`$(cat "$GPU_DIR/commit" 2>/dev/null || echo '?')\`, device \`$DEVICE\`"
# shellcheck source=scripts/gpu/lib.sh
source "$root/scripts/gpu/lib.sh"

# --- 0. the binary, torch and a GPU ------------------------------------------------------------
bin=$GPU_DIR/overparam
if [[ ! -x $bin ]]; then
  note "no $bin: run \`cargo build --release && scripts/gpu_pack.sh\` where cargo is, and carry .gpu"
  write_summary
  exit 2
fi
torch_lib=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>"$OUT/logs/torch.log")
torch_version=$("$PY" -c 'import torch; print(torch.__version__)' 2>>"$OUT/logs/torch.log")
if [[ -z $torch_lib || ! -d $torch_lib ]]; then
  note "no torch in $PY ($(tail -n 1 "$OUT/logs/torch.log")): the binary needs the machine's libtorch"
  write_summary
  exit 2
fi
[[ $torch_version == 2.11.0* ]] || note "torch is $torch_version; the binary was built against 2.11.0 (tch 0.24), so it may not load"
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# ONNX Runtime, where the machine's python has the CPU package (export and accuracy steps).
ort=$("$PY" -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[0])' 2>/dev/null || true)
[[ -n $ort ]] && export ORT_DYLIB_PATH=$ort
note "torch $torch_version from $torch_lib; ONNX Runtime ${ort:-not found}"
if [[ $DEVICE == cuda ]]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>>"$OUT/logs/torch.log"; then
    note "no GPU: torch.cuda.is_available() is false; nothing was run (GPU_CHECK_DEVICE=cpu runs the steps on the CPU)"
    write_summary
    exit 2
  fi
fi

# --- 1. doctor -------------------------------------------------------------------------------
step doctor 45 "$bin" doctor

# --- 2. a training step per method: this device, the CPU, PyTorch eager --------------------------
section=$OUT/section-2-train-step.md
if step "bench-train-$DEVICE" 120 "$bin" bench train --device "$DEVICE" --model resnet18_cifar --batch 64 --steps 5; then
  { echo "## Training step, \`bench train --device $DEVICE\` (resnet18_cifar, batch 64)"; echo; echo '```'; cat "$OUT/logs/bench-train-$DEVICE.log"; echo '```'; } >>"$section"
fi
if [[ $DEVICE != cpu ]]; then
  if step bench-train-cpu 90 "$bin" bench train --device cpu --model resnet18_cifar --method sfo --batch 64 --steps 2; then
    { echo; echo "The same step on this machine's CPU (plain and sfo, 2 timed steps):"; echo; echo '```'; cat "$OUT/logs/bench-train-cpu.log"; echo '```'; } >>"$section"
  fi
fi
if step "eager-$DEVICE" 60 "$PY" scripts/gpu/eager_step.py --device "$DEVICE" --batch 64 --steps 5; then
  "$PY" - "$OUT/logs/eager-$DEVICE.log" "$OUT/logs/bench-train-$DEVICE.log" >>"$section" <<'PY' || true
import json, sys
e = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])
print(f"\nPyTorch eager ({e['torch']}, {e['device']}, cudnn TF32 {e['cudnn_allow_tf32']}, matmul TF32 {e['matmul_allow_tf32']}): plain ResNet-18 step {e['step_ms_median']:.2f} ms (median of {e['steps']}).")
# bench train's table: `method  train params  step ms  × plain ...`, one row per method.
ours = None
try:
    for line in open(sys.argv[2]):
        f = line.split()
        if len(f) >= 3 and f[0] == "plain":
            ours = float(f[2])
            break
except (OSError, ValueError):
    pass
if ours is not None:
    print(f"overparam plain step {ours:.2f} ms: {ours / e['step_ms_median']:.2f}× PyTorch eager.")
PY
fi

# --- 3. the fold gate, TF32 on and off -----------------------------------------------------------
for tf32 in true false; do
  step "fold-gate-tf32-$tf32" 75 "$bin" train --config configs/proxy_cifar_sfo_r1.toml \
    --set "run.dir=\"$OUT/fold-tf32-$tf32\"" --set "run.device=\"$DEVICE\"" --set "run.tf32=$tf32" \
    --set optim.epochs=1 --set data.synthetic_train=512 --set data.synthetic_test=128
done
"$PY" scripts/gpu/fold_table.py "$OUT" >"$OUT/section-3-fold.md" || true

# --- 4. Fashion-MNIST, one epoch ----------------------------------------------------------------
fm=$OUT/fashion-mnist
if [[ -f $GPU_DIR/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  if step "fashion-mnist-$DEVICE" 150 "$bin" train --config configs/fashion_mnist_vgg_small.toml \
    --set "run.dir=\"$fm\"" --set "run.device=\"$DEVICE\"" --set optim.epochs=1 --set optim.warmup_epochs=0 \
    --set "data.dir=\"$GPU_DIR/fashion-mnist\""; then
    { echo "## Fashion-MNIST, one epoch on \`$DEVICE\` (vgg_small width 0.5, plain)"; echo; echo '```'; grep -iE 'epoch|accuracy|top-1|images/s|fold' "$OUT/logs/fashion-mnist-$DEVICE.log" | tail -n 12; echo '```'; } >"$OUT/section-4-fashion-mnist.md"
  fi
else
  skip "fashion-mnist-$DEVICE" "no Fashion-MNIST in $GPU_DIR/fashion-mnist (scripts/gpu_pack.sh copies it)"
fi

# --- 5. TensorRT -----------------------------------------------------------------------------------
for s in "engine build (trtexec / --native)" "bench --runtime trt" "bench --runtime trt-native" "bench --runtime ort-trt"; do
  skip "$s" "no TensorRT on this machine (scripts/gpu_check_trt.sh runs these where it can install it)"
done

write_summary
# Incomplete is not a pass: a failed step makes the exit status 1 (TensorRT's skips do not).
grep -qE '\*\*FAIL|limit is spent' "$summary" && exit 1
exit 0
