#!/usr/bin/env python3
"""The pretrained network of docs/results/fashion-mnist-finetune: a plain 4-conv CNN (about
65k parameters, 1x28x28 input) trained by PyTorch itself on Fashion-MNIST, then exported to
ONNX for `overparam import`. Runs on the CPU with the project's .venv torch.

    .venv/bin/python scripts/pretrain_fashion_mnist.py OUT_DIR [--epochs 5] [--seed 0]
        [--data /usr/share/datasets/fashion-mnist] [--exporter dynamo|ts] [--limit N]

Writes OUT_DIR/pretrained.onnx (+ .onnx.data with the dynamo exporter), OUT_DIR/pretrained.json
(PyTorch's test accuracy, the normalisation, the recipe) and OUT_DIR/pretrained.pt.

Recipe: SGD with Nesterov momentum 0.9, lr 0.05 with a cosine schedule, weight decay 5e-4,
batch 128, random crop with 2-pixel padding and horizontal flip, inputs normalised with the
train split's mean and std in the (x/255 - mean)/std convention that overparam records.
"""

import argparse
import gzip
import json
import math
import os
import struct
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data, split):
    stem = "train" if split == "train" else "t10k"
    def find(kind):
        for name in (f"{stem}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                     f"{stem}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"):
            p = os.path.join(data, name)
            if os.path.exists(p):
                return p
        raise SystemExit(f"{data}: no {stem} {kind} IDX file (apt-get install dataset-fashion-mnist)")
    return read_idx(find("images")), read_idx(find("labels"))


class Net(nn.Module):
    """conv3x3(32)-BN-ReLU, conv3x3(32)-BN-ReLU, max-pool, conv3x3(64)-BN-ReLU,
    conv3x3(64)-BN-ReLU, max-pool, global average pool, linear: 65,834 parameters."""

    def __init__(self):
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
        self.features = nn.Sequential(block(1, 32), block(32, 32), nn.MaxPool2d(2),
                                      block(32, 64), block(64, 64), nn.MaxPool2d(2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def augment(x, g):
    # Random crop with 2-pixel padding and a horizontal flip, per image.
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=g)
    dx = torch.randint(0, 5, (n,), generator=g)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def accuracy(model, x, y):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            correct += (model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item()
    return 100.0 * correct / len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--exporter", choices=["dynamo", "ts"], default="dynamo")
    ap.add_argument("--limit", type=int, default=0, help="train on the first N images (tests)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    xtr, ytr = load(a.data, "train")
    xte, yte = load(a.data, "test")
    if a.limit:
        xtr, ytr = xtr[:a.limit], ytr[:a.limit]
    mean = float(xtr.mean() / 255.0)
    std = float((xtr / 255.0).std())
    def prep(x):
        return ((torch.from_numpy(x.astype(np.float32)) / 255.0 - mean) / std).unsqueeze(1)
    xtr_t, xte_t = prep(xtr), prep(xte)
    ytr_t, yte_t = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))
    model = Net()
    params = sum(p.numel() for p in model.parameters())
    bs = 128
    steps = len(xtr_t) // bs
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(len(xtr_t), generator=g)
        loss_sum = 0.0
        for s in range(steps):
            lr = 0.05 * 0.5 * (1 + math.cos(math.pi * (epoch * steps + s) / (a.epochs * steps)))
            for group in opt.param_groups:
                group["lr"] = lr
            idx = perm[s * bs:(s + 1) * bs]
            x = augment(xtr_t[idx], g)
            loss = F.cross_entropy(model(x), ytr_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item()
        print(f"epoch {epoch + 1}/{a.epochs}: loss {loss_sum / steps:.4f}, "
              f"test accuracy {accuracy(model, xte_t, yte_t):.2f}% ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    acc = accuracy(model, xte_t, yte_t)
    torch.save(model.state_dict(), os.path.join(a.out, "pretrained.pt"))
    onnx = os.path.join(a.out, "pretrained.onnx")
    torch.onnx.export(model, (xte_t[:1],), onnx, input_names=["image"], output_names=["logits"],
                      dynamo=a.exporter == "dynamo", opset_version=18 if a.exporter == "dynamo" else 17)
    info = {"test_accuracy_pct": acc, "test_top1_err_pct": 100.0 - acc, "parameters": params,
            "mean": [mean], "std": [std], "epochs": a.epochs, "seed": a.seed,
            "exporter": a.exporter, "train_images": len(xtr_t), "seconds": time.time() - t0,
            "torch": torch.__version__}
    with open(os.path.join(a.out, "pretrained.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
