#!/usr/bin/env bash
# The TensorRT GPU check, for a machine with an NVIDIA GPU, network access and cargo (it
# pip-installs onnxruntime-gpu and TensorRT's libraries and builds here); the lent GPU machine has
# none of those, so there use scripts/gpu_check.sh. About 10 minutes on one GPU; nothing in CI or
# the test suite waits for it. Each step is timed and bounded; a failing step
# is recorded and the next one still runs. Writes one markdown summary, $OUT/summary.md
# (default OUT=runs/gpu-check), with every step's log beside it.
#
#   1. a second virtualenv (.venv-gpu) with onnxruntime-gpu and TensorRT's pip libraries
#      (the CPU `onnxruntime` in .venv conflicts with onnxruntime-gpu, so they are kept apart);
#   2. the FP32 / FP16 / INT8 models of a short pipeline run (trained on CUDA), each benched with
#      `bench --runtime ort-trt`;
#   3. `bench train --device cuda` for every method;
#   4. the fold gate of a CUDA training run with run.tf32 = true and = false: the f64 verdict and
#      the device's measured deviation from <run>/fold.json;
#   5. the native TensorRT path (`--features tensorrt`) built against the shared headers of the
#      pip libraries' major release, if they link: `engine build --native` + `bench --runtime
#      trt-native`.
#
# Without a GPU it stops at once, says why, and exits 2 (its summary says so too).
# Setup and the build count against the limit: on a machine where scripts/setup.sh and
# `cargo build --release` have run before they take seconds; on a fresh one, run them first.
# Environment: OUT, GPU_CHECK_MINUTES (overall limit, default 10), ORT_GPU_PKG (default
# onnxruntime-gpu==1.31.1), TRT_LIBS_PKG (default tensorrt-cu13-libs or -cu12-libs by the
# driver's CUDA version), TRT_HEADERS (default ../shared/third_party/tensorrt).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
summary=$OUT/summary.md
limit=$((${GPU_CHECK_MINUTES:-10} * 60))
t0=$SECONDS
rows=()
notes=()

summary_head="$(date -u +%Y-%m-%dT%H:%M:%SZ), commit \`$(git rev-parse --short HEAD 2>/dev/null || echo '?')\`"
# shellcheck source=scripts/gpu/lib.sh
source "$root/scripts/gpu/lib.sh"

# --- 0. a GPU, or a clear stop ---------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  note "no GPU: nvidia-smi is not on PATH (no NVIDIA driver); nothing was run. Run this on a machine with an NVIDIA GPU."
  write_summary
  exit 2
fi
if ! nvidia-smi -L >"$OUT/logs/nvidia-smi.log" 2>&1 || ! grep -q '^GPU ' "$OUT/logs/nvidia-smi.log"; then
  note "no GPU: nvidia-smi found no device ($(tail -n 1 "$OUT/logs/nvidia-smi.log")); nothing was run."
  write_summary
  exit 2
fi
cuda_major=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)
note "driver supports CUDA ${cuda_major:-?}; $(head -n 1 "$OUT/logs/nvidia-smi.log")"

# --- 1. environments and the build ----------------------------------------------------------
step setup 300 scripts/setup.sh
ORT_GPU_PKG=${ORT_GPU_PKG:-onnxruntime-gpu==1.31.1}
if [[ -z ${TRT_LIBS_PKG:-} ]]; then
  if [[ ${cuda_major:-12} -ge 13 ]]; then TRT_LIBS_PKG=tensorrt-cu13-libs; else TRT_LIBS_PKG=tensorrt-cu12-libs; fi
fi
export ORT_GPU_PKG TRT_LIBS_PKG
# shellcheck disable=SC2317 # run by `step` in a child bash
gpu_venv() {
  [[ -x .venv-gpu/bin/python ]] || python3 -m venv .venv-gpu || return 1
  .venv-gpu/bin/pip install --quiet --disable-pip-version-check "$ORT_GPU_PKG" "$TRT_LIBS_PKG"
}
export -f gpu_venv
step gpu-venv 240 gpu_venv
gsite=$(.venv-gpu/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
csite=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
# TensorRT's and the CUDA runtime's pip libraries, for ONNX Runtime's TensorRT EP and the shim.
libdirs=()
for d in "$gsite"/tensorrt_libs "$gsite"/nvidia/*/lib "$csite"/nvidia/*/lib "$csite"/nvidia/cu*/lib; do
  [[ -n $gsite && -d $d ]] && libdirs+=("$d")
done
if ((${#libdirs[@]})); then
  LD_LIBRARY_PATH=$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LD_LIBRARY_PATH
fi
ort_gpu=
for f in "$gsite"/onnxruntime/capi/libonnxruntime.so.*; do
  [[ -n $gsite && -f $f ]] && ort_gpu=$f && break
done
[[ -n $ort_gpu ]] || note "onnxruntime-gpu is not installed in .venv-gpu (see logs/gpu-venv.log); the ort-trt steps will fail"
trt_version=$(.venv-gpu/bin/python -c "import importlib.metadata as m; print(m.version('$TRT_LIBS_PKG'))" 2>/dev/null || true)
note "ONNX Runtime: ${ort_gpu:-none}; TensorRT pip libraries: $TRT_LIBS_PKG ${trt_version:-not installed}"

step build 420 cargo build --release
bin=$root/target/release/overparam

# --- 2. the pipeline's models on ONNX Runtime's TensorRT EP -----------------------------------
run=$OUT/pipeline
step pipeline-cuda 180 "$bin" pipeline --iters 50 --frames 30 \
  --set "run.dir=\"$run\"" --set 'run.device="cuda"' --set optim.epochs=2
models=$run/demo
section=$OUT/section-2-ort-trt.md
{
  echo "## ONNX Runtime TensorRT EP (\`bench --runtime ort-trt\`)"
  echo
  echo "| model | p50 ms | p90 ms | p99 ms | images/s |"
  echo "|---|---|---|---|---|"
} >"$section"
for p in fp32 fp16 int8; do
  m=model.$p.onnx
  [[ $p == fp32 ]] && m=model.onnx
  name=ort-trt-$p
  if [[ ! -f $models/$m ]]; then
    rows+=("| $name | skipped: $models/$m was not produced (pipeline step) | 0 | |")
    continue
  fi
  # stdout (the JSON) to its own file; the log keeps ONNX Runtime's and TensorRT's messages.
  # shellcheck disable=SC2016 # expanded by the child bash, from its arguments
  if step "$name" 120 bash -c 'ORT_DYLIB_PATH="$1" "$2" bench "$3" --runtime ort-trt --trt-cache "$4" --iters 300 --warmup 30 --json >"$5"' \
    _ "$ort_gpu" "$bin" "$models/$m" "$OUT/trt-cache" "$OUT/$name.json"; then
    python3 - "$OUT/$name.json" "$m" >>"$section" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
print(f"| `{sys.argv[2]}` | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['throughput']:.0f} |")
PY
  fi
done
[[ -f $models/report.md ]] && echo -e "\nThe CPU latencies of the same models are in \`$models/report.md\`." >>"$section"

# --- 3. training step time per method on CUDA ---------------------------------------------------
if step bench-train-cuda 120 "$bin" bench train --device cuda --model resnet18_cifar --batch 64 --steps 5; then
  { echo "## \`bench train --device cuda\` (resnet18_cifar, batch 64)"; echo; echo '```'; cat "$OUT/logs/bench-train-cuda.log"; echo '```'; } >"$OUT/section-3-bench-train.md"
fi

# --- 4. the fold gate on CUDA, TF32 on and off --------------------------------------------------
for tf32 in true false; do
  step "fold-gate-tf32-$tf32" 90 "$bin" train --config configs/proxy_cifar_sfo_r1.toml \
    --set "run.dir=\"$OUT/fold-tf32-$tf32\"" --set 'run.device="cuda"' --set "run.tf32=$tf32" \
    --set optim.epochs=1 --set data.synthetic_train=512 --set data.synthetic_test=128
done
python3 scripts/gpu/fold_table.py "$OUT" >"$OUT/section-4-fold.md" || true

# --- 5. the native TensorRT path with the pip libraries -----------------------------------------
# shellcheck disable=SC2317 # run by `step` in a child bash
native() {
  local major hdr lib inc cuda
  major=${trt_version%%.*}
  [[ -n $major ]] || { echo "no TensorRT pip libraries installed"; return 1; }
  hdr=$(find "${TRT_HEADERS:-../shared/third_party/tensorrt}" -maxdepth 1 -mindepth 1 -name "$major.*" -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
  [[ -n $hdr ]] || { echo "no TensorRT $major.x headers under ${TRT_HEADERS:-../shared/third_party/tensorrt}"; return 1; }
  inc=$(cd "${TRT_HEADERS:-../shared/third_party/tensorrt}/$hdr/include" && pwd)
  echo "TensorRT $trt_version libraries with the $hdr headers"
  # The wheels ship only versioned names (libnvinfer.so.N); the linker wants libnvinfer.so.
  lib=$OUT/trt-lib
  mkdir -p "$lib"
  for n in nvinfer nvonnxparser; do
    local real
    real=$(find "$gsite/tensorrt_libs" -maxdepth 1 -name "lib$n.so.$major*" | sort | head -n 1)
    [[ -n $real ]] || { echo "lib$n.so.$major not in $gsite/tensorrt_libs"; return 1; }
    ln -sfn "$real" "$lib/lib$n.so"
  done
  cuda=$csite/triton/backends/nvidia
  [[ -e $cuda/include/cuda_runtime_api.h ]] || { echo "CUDA runtime headers not in $cuda/include (triton in .venv)"; return 1; }
  # The main target dir: only the engine and its dependents rebuild (a later plain build
  # rebuilds them back without the shim).
  TENSORRT_INCLUDE=$inc TENSORRT_LIB=$lib CUDA_ROOT=$cuda cargo build --release --features tensorrt || return 1
  local nbin=$root/target/release/overparam
  for p in fp16 int8; do
    local onnx=$models/model.$p.onnx
    [[ -f $onnx ]] || { echo "$onnx missing (pipeline step)"; return 1; }
    "$nbin" engine build "$onnx" --native --precision "$p" -o "$OUT/model.$p.plan" || return 1
    "$nbin" bench "$OUT/model.$p.plan" --runtime trt-native --iters 300 --json || return 1
  done
}
export -f native
export OUT root models gsite csite trt_version
export TRT_HEADERS=${TRT_HEADERS:-../shared/third_party/tensorrt}
if step native-trt 240 native; then
  { echo "## Native TensorRT (\`--features tensorrt\`)"; echo; echo '```'; grep -E '"(p50_ms|p99_ms|h2d_ms|compute_ms|d2h_ms|runtime|device)"|headers' "$OUT/logs/native-trt.log"; echo '```'; } >"$OUT/section-5-native.md"
fi

write_summary
# Incomplete is not a pass: any failed or skipped step makes the exit status 1.
grep -qE '\*\*FAIL|\| skipped' "$summary" && exit 1
exit 0
