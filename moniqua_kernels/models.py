"""Models for the train command: a small MLP up to ResNet-20 (He et al. 2016, the
CIFAR variant: 3 stages of 3 basic blocks, 16/32/64 channels, 0.27M parameters)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, in_features: int, classes: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class LogisticRegression(nn.Module):
    def __init__(self, in_features: int, classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


MODELS = ("mlp", "logreg", "resnet20")


def build(name: str, input_shape, classes: int) -> nn.Module:
    in_features = 1
    for d in input_shape:
        in_features *= d
    if name == "mlp":
        return MLP(in_features, classes)
    if name == "logreg":
        return LogisticRegression(in_features, classes)
    if name == "resnet20":
        if len(input_shape) != 3:
            raise ValueError(f"resnet20 needs image inputs (C, H, W), got shape "
                             f"{tuple(input_shape)}; use --model mlp for this dataset")
        return ResNet20(classes, input_shape[0])
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
