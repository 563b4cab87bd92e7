"""Small models to sweep over, as ``nn.Module`` classes whose constructor takes the width: usable
directly as :func:`gdlab.sweep.run`'s factory (and importable by Ray workers)."""
from __future__ import annotations

import torch

from gdlab.runtime import check_choice, check_int

__all__ = ["ACTIVATIONS", "MLP", "CNN1d"]

ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "gelu": torch.nn.GELU, "sigmoid": torch.nn.Sigmoid}


class MLP(torch.nn.Module):
    """``in_dim -> width -> ... -> width -> out_dim`` with ``depth`` hidden layers."""

    def __init__(self, width: int, in_dim: int = 40, out_dim: int = 10, depth: int = 2, act: str = "relu"):
        super().__init__()
        check_int("width", width, min=1)
        check_int("depth", depth, min=1)
        check_choice("act", act, list(ACTIVATIONS))
        sizes = [in_dim] + [width] * depth + [out_dim]
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < depth:
                layers.append(ACTIVATIONS[act]())
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN1d(torch.nn.Module):
    """A small 1-D CNN for signals (n, length) such as MNIST-1D: two convolutions of ``width``
    channels (kernel 5, the second with stride 2), ReLU, and a linear read-out."""

    def __init__(self, width: int, length: int = 40, out_dim: int = 10):
        super().__init__()
        check_int("width", width, min=1)
        self.conv1 = torch.nn.Conv1d(1, width, 5, padding=2)
        self.conv2 = torch.nn.Conv1d(width, width, 5, stride=2, padding=2)
        self.head = torch.nn.Linear(width * ((length + 1) // 2), out_dim)

    def forward(self, x):
        h = torch.relu(self.conv1(x.unsqueeze(1)))
        h = torch.relu(self.conv2(h))
        return self.head(h.flatten(1))
