#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on the lent GPU machine into .gpu/ (git-ignored), to
# travel there with the working tree (`carry: [".gpu"]`): the release binary built here
# (stripped; it finds libtorch at run time through LD_LIBRARY_PATH, so the machine's own CUDA
# torch 2.11.0 serves it) and Fashion-MNIST's four gzip files. Configs and scripts are tracked
# and travel anyway. Refuses a pack over 60 MiB (the machine takes 64 MiB in all).
#   cargo build --release && scripts/gpu_pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
bin=target/release/overparam
[[ -x $bin ]] || { echo "gpu-pack: $bin is missing: run cargo build --release first" >&2; exit 1; }
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [[ -f $src/$f ]] || { echo "gpu-pack: $src/$f is missing: apt-get install dataset-fashion-mnist (or set FASHION_MNIST_DIR)" >&2; exit 1; }
done
rm -rf .gpu.tmp
mkdir -p .gpu.tmp/fashion-mnist
strip -o .gpu.tmp/overparam "$bin"
cp "$src"/*-ubyte.gz .gpu.tmp/fashion-mnist/
git rev-parse --short HEAD >.gpu.tmp/commit 2>/dev/null || echo unknown >.gpu.tmp/commit
size=$(du -sm .gpu.tmp | cut -f1)
if ((size > 60)); then
  echo "gpu-pack: .gpu would be ${size} MiB, over the 60 MiB it may take" >&2
  rm -rf .gpu.tmp
  exit 1
fi
rm -rf .gpu
mv .gpu.tmp .gpu
echo "gpu-pack: .gpu is ${size} MiB (binary of commit $(cat .gpu/commit), Fashion-MNIST)"
