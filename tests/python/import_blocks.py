"""Import fixtures, made at test time with the virtualenv's torch: small blocks in plain
PyTorch (eval mode, random BatchNorm statistics), each exported by both of torch.onnx's
exporters (TorchScript and dynamo) at opsets spread over 13-21, with PyTorch's own outputs on
a seeded input. Nothing here is committed but this script.

    python import_blocks.py OUTDIR

writes OUTDIR/<block>_<exporter><opset>.onnx (the dynamo exporter puts its weights in
<file>.onnx.data beside it), OUTDIR/<block>.input.npy, OUTDIR/<block>.<output>.npy (PyTorch's
outputs) and OUTDIR/manifest.json: [{"model", "block", "outputs", "exporter", "opset"}].
"""

import json
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")


def bn(c):
    b = nn.BatchNorm2d(c)
    with torch.no_grad():
        b.running_mean.uniform_(-0.5, 0.5)
        b.running_var.uniform_(0.5, 2.0)
        b.weight.uniform_(0.5, 1.5)
        b.bias.uniform_(-0.3, 0.3)
    return b


class Residual(nn.Module):
    """torchvision's BasicBlock with a stride-2 downsample, a max-pool stem and a classifier."""

    def __init__(self, classes=7):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = bn(8)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), bn(16), nn.ReLU(),
                                    nn.Conv2d(16, 16, 3, 1, 1, bias=False), bn(16))
        self.downsample = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), bn(16))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = F.relu(self.layer1(x) + self.downsample(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expand, depthwise 3×3, 1×1 project, ReLU6, residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), bn(8), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), bn(24), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False), bn(24), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), bn(8))

    def forward(self, x):
        x = self.stem(x)
        return x + self.project(self.dw(self.expand(x)))


class SqueezeExcite(nn.Module):
    """MobileNetV3-style: HardSwish, a squeeze-excite gate HardSigmoid·Mul, SiLU, and a head
    written as MatMul + Add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, 2, 1)
        self.fc1 = nn.Conv2d(12, 4, 1)
        self.fc2 = nn.Conv2d(4, 12, 1)
        self.conv2 = nn.Conv2d(12, 12, 3, 1, 1)
        self.w = nn.Parameter(torch.randn(12, 5) * 0.3)
        self.b = nn.Parameter(torch.randn(5) * 0.1)

    def forward(self, x):
        x = F.hardswish(self.conv(x))
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = x * s
        x = F.silu(self.conv2(x))
        return torch.matmul(x.mean((2, 3)), self.w) + self.b


class Dilated(nn.Module):
    """Dilated 3×3, 1×3 and 3×1 convs, LeakyReLU, an average pool, and a standalone BN."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 2, dilation=2)
        self.row = nn.Conv2d(8, 8, (1, 3), padding=(0, 1))
        self.col = nn.Conv2d(8, 8, (3, 1), padding=(1, 0))
        self.norm = bn(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.leaky_relu(self.conv(x), 0.1)
        x = F.leaky_relu(self.col(self.row(x)), 0.1)
        x = self.norm(F.avg_pool2d(x, 2) + 0.5)
        return self.head(x)


class Decoder(nn.Module):
    """A U-Net-style decoder: ConvTranspose up, bilinear Resize to the skip's size, Concat
    with the skip, bilinear Resize back to the input size, and two heads (13-class
    segmentation logits, as NYUv2's, and depth), so it also fine-tunes on the NYUv2 layout."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), bn(8), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), bn(16), nn.ReLU())
        self.enc3 = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, bias=False), bn(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, 2)
        self.fuse = nn.Sequential(nn.Conv2d(24, 8, 3, 1, 1, bias=False), bn(8), nn.ReLU())
        self.segmentation = nn.Conv2d(8, 13, 1)
        self.depth = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        s = self.enc2(self.enc1(x))
        y = self.up(self.enc3(s))
        y = F.interpolate(y, size=s.shape[2:], mode="bilinear", align_corners=False)
        y = self.fuse(torch.cat([y, s], 1))
        y = F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.segmentation(y), torch.sigmoid(self.depth(y)) * 10


# (block, module, input H×W, outputs, [(exporter, opset), ...])
BLOCKS = [
    ("residual", Residual, (17, 15), ["logits"], [("ts", 13), ("dynamo", 18)]),
    # At CIFAR-100's size and classes, so it fine-tunes (and QATs) on CIFAR-layout data
    # (tests/finetune.rs).
    ("residual32", lambda: Residual(100), (32, 32), ["logits"], [("ts", 13)]),
    ("inverted", InvertedResidual, (9, 11), ["features"], [("ts", 15), ("dynamo", 19)]),
    ("squeeze", SqueezeExcite, (13, 11), ["logits"], [("ts", 17), ("dynamo", 20)]),
    ("dilated", Dilated, (12, 10), ["out"], [("ts", 13), ("dynamo", 21)]),
    ("decoder", Decoder, (12, 14), ["segmentation", "depth"], [("ts", 17), ("dynamo", 18)]),
]


def main(out):
    os.makedirs(out, exist_ok=True)
    manifest = []
    for k, (name, cls, (h, w), outputs, exports) in enumerate(BLOCKS):
        torch.manual_seed(k)
        m = cls().eval()
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            ys = m(x)
        ys = ys if isinstance(ys, tuple) else (ys,)
        np.save(os.path.join(out, f"{name}.input.npy"), x.numpy())
        for o, y in zip(outputs, ys):
            np.save(os.path.join(out, f"{name}.{o}.npy"), y.numpy())
        for exporter, opset in exports:
            f = os.path.join(out, f"{name}_{exporter}{opset}.onnx")
            kw = dict(dynamo=exporter == "dynamo", opset_version=opset)
            if exporter == "dynamo":
                kw["verbose"] = False
            torch.onnx.export(m, (x,), f, input_names=["x"], output_names=outputs, **kw)
            manifest.append({"model": os.path.basename(f), "block": name, "outputs": outputs,
                             "exporter": exporter, "opset": opset})
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    print(len(manifest))


if __name__ == "__main__":
    main(sys.argv[1])
