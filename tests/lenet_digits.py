"""LeNet-5 on the scikit-learn digits (8x8 upsampled to 32x32): a small real training run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """The classic LeNet-5 (ReLU, max pooling) for 1x32x32 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def digits(n: int = 1000, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``offset .. offset+n`` of the digits set as normalized (N, 1, 32, 32) floats.

    Pixels are scaled to [0, 1], upsampled bilinearly and normalized with the usual MNIST
    mean/std (0.1307, 0.3081), without which plain SGD at lr 0.01 barely trains in 20 epochs.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[offset : offset + n], dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x - 0.1307) / 0.3081
    y = torch.tensor(d.target[offset : offset + n], dtype=torch.long)
    return x, y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100.0
