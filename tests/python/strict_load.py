"""Golden check against PyTorch: our checkpoints load with load_state_dict(strict=True) into
torchvision-style CIFAR ResNets, and PyTorch itself agrees that the folded model equals the
BN model it came from (an implementation of the fold check independent of ours).

usage: strict_load.py {resnet18_cifar|resnet50_cifar} WIDTH NUM_CLASSES TRAIN.safetensors DEPLOY.safetensors
"""
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, bn):
        super().__init__()
        conv = lambda i, o, k, s: nn.Conv2d(i, o, k, s, k // 2, bias=not bn)
        self.conv1 = conv(cin, planes, 3, stride)
        self.conv2 = conv(planes, planes, 3, 1)
        if bn:
            self.bn1, self.bn2 = nn.BatchNorm2d(planes), nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            layers = [conv(cin, planes, 1, stride)] + ([nn.BatchNorm2d(planes)] if bn else [])
            self.downsample = nn.Sequential(*layers)
        self.use_bn = bn

    def forward(self, x):
        f = (lambda bn, y: bn(y)) if self.use_bn else (lambda bn, y: y)
        y = torch.relu(f(getattr(self, "bn1", None), self.conv1(x)))
        y = f(getattr(self, "bn2", None), self.conv2(y))
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, bn):
        super().__init__()
        conv = lambda i, o, k, s: nn.Conv2d(i, o, k, s, k // 2, bias=not bn)
        out = planes * 4
        self.conv1 = conv(cin, planes, 1, 1)
        self.conv2 = conv(planes, planes, 3, stride)
        self.conv3 = conv(planes, out, 1, 1)
        if bn:
            self.bn1, self.bn2, self.bn3 = (nn.BatchNorm2d(c) for c in (planes, planes, out))
        self.downsample = None
        if stride != 1 or cin != out:
            layers = [conv(cin, out, 1, stride)] + ([nn.BatchNorm2d(out)] if bn else [])
            self.downsample = nn.Sequential(*layers)
        self.use_bn = bn

    def forward(self, x):
        f = (lambda bn, y: bn(y)) if self.use_bn else (lambda bn, y: y)
        y = torch.relu(f(getattr(self, "bn1", None), self.conv1(x)))
        y = torch.relu(f(getattr(self, "bn2", None), self.conv2(y)))
        y = f(getattr(self, "bn3", None), self.conv3(y))
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class CifarResNet(nn.Module):
    """torchvision's ResNet with a 3×3 stride-1 stem and no max-pool; `bn=False` is the
    deploy form (every conv with a bias, no BatchNorm)."""

    def __init__(self, block, layers, width, num_classes, bn):
        super().__init__()
        w = lambda c: max(1, round(c * width))
        ch = w(64)
        self.conv1 = nn.Conv2d(3, ch, 3, 1, 1, bias=not bn)
        if bn:
            self.bn1 = nn.BatchNorm2d(ch)
        self.use_bn = bn
        for i, n in enumerate(layers):
            planes = w(64 << i)
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(ch, planes, stride, bn))
                ch = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        x = torch.relu(self.bn1(x) if self.use_bn else x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def main():
    model, width, classes, train_path, deploy_path = sys.argv[1:]
    block, layers = {"resnet18_cifar": (Basic, [2, 2, 2, 2]), "resnet50_cifar": (Bottleneck, [3, 4, 6, 3])}[model]
    width, classes = float(width), int(classes)
    torch.manual_seed(0)
    train = CifarResNet(block, layers, width, classes, bn=True).eval()
    deploy = CifarResNet(block, layers, width, classes, bn=False).eval()
    train.load_state_dict(load_file(train_path), strict=True)
    deploy.load_state_dict(load_file(deploy_path), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = train(x), deploy(x)
    rel = ((a - b).abs().max() / a.abs().max()).item()
    print(f"strict load ok; PyTorch BN model vs folded model: rel {rel:.3e}")
    sys.exit(0 if rel <= 1e-4 else 1)


if __name__ == "__main__":
    main()
