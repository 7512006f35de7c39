#!/usr/bin/env bash
# The main job (for now): build an overparameterised ResNet-50 for CIFAR with SFO, fold it to
# the plain network, verify the fold numerically, and compare the two checkpoints.
# Set-up included and idempotent. METHOD=repvgg|qarepvgg|fnl|sfo|plain picks another method.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet
bin=target/release/overparam
method=${METHOD:-sfo}
run=runs/demo-$method
mkdir -p "$run"
echo "== init: resnet50_cifar with $method (random BN statistics, so the BN folds are exercised)"
"$bin" init --model resnet50_cifar --method "$method" --random-bn -o "$run/model.op.safetensors"
echo "== fuse: fold to the plain network and verify against the train model in eval mode"
"$bin" fuse "$run/model.op.safetensors" -o "$run/model.deploy.safetensors"
echo "== inspect"
printf 'train-time  '; "$bin" inspect "$run/model.op.safetensors" | tail -n 1
printf 'deployed    '; "$bin" inspect "$run/model.deploy.safetensors" | tail -n 1
echo "per-layer table: $bin inspect $run/model.deploy.safetensors"
