"""PyTorch eager reference for `overparam bench train`: the same plain CIFAR ResNet training
step (forward, cross-entropy, backward, SGD momentum 0.9) at the same batch and threads.

usage: .venv/bin/python scripts/bench_torch_step.py [--model resnet18_cifar] [--batch 64] [--threads 2] [--steps 5]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
from strict_load import Basic, Bottleneck, CifarResNet  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--model", default="resnet18_cifar")
p.add_argument("--width", type=float, default=1.0)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=5)
a = p.parse_args()
torch.set_num_threads(a.threads)
block, layers = {"resnet18_cifar": (Basic, [2, 2, 2, 2]), "resnet50_cifar": (Bottleneck, [3, 4, 6, 3])}[a.model]
model = CifarResNet(block, layers, a.width, 100, bn=True).train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
x, t = torch.randn(a.batch, 3, 32, 32), torch.randint(100, (a.batch,))
times = []
for i in range(a.steps + 2):
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), t)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i >= 2:
        times.append((time.perf_counter() - t0) * 1e3)
print(f"pytorch {torch.__version__} eager, {a.model} width {a.width} batch {a.batch}, {a.threads} threads: "
      f"median step {statistics.median(times):.1f} ms (min {min(times):.1f})")
