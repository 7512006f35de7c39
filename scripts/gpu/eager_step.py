"""PyTorch eager reference for `overparam bench train`: the median time of one SGD training
step of a CIFAR ResNet-18 (the architecture of overparam's `resnet18_cifar`: a 3×3 stem of 64,
four stages of two basic blocks at 64/128/256/512 channels, global average pool, a 100-way
linear head), batch 64 at 3×32×32, on the machine's own torch. Prints one JSON line.

Usage: python3 scripts/gpu/eager_step.py [--device cuda] [--batch 64] [--steps 5] [--width 1.0]
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


def resnet18_cifar(width=1.0, classes=100):
    c = [max(1, round(64 * width * 2**s)) for s in range(4)]
    layers = [nn.Conv2d(3, c[0], 3, 1, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU()]
    cin = c[0]
    for s, cout in enumerate(c):
        for i in range(2):
            layers.append(Block(cin, cout, 2 if s > 0 and i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--width", type=float, default=1.0)
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = resnet18_cifar(a.width).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 100, (a.batch,), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up, as bench train does (cuDNN picks its algorithms here)
        step()
    sync()
    ms = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        sync()
        ms.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "batch": a.batch,
        "steps": a.steps,
        "step_ms_median": statistics.median(ms),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }))


if __name__ == "__main__":
    main()
