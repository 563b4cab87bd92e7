"""Small models to sweep over, as ``nn.Module`` classes whose constructor takes the width: usable
directly as :func:`gdlab.sweep.run`'s factory (and importable by Ray workers)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


def _mean_cross_entropy_grad(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(summed per-model mean cross-entropy)/d logits of M stacked models, each on its own batch:
    (softmax - one-hot) / B, for logits (M, B, classes) and integer labels y (M, B). Where a
    model's own batched backward starts (CNN1d's, and the MNIST-1D MLP family's).

    The softmax runs over the classes of a (M, classes, B) copy, which is copied back: on a CPU, a
    softmax over a short last dimension (ten classes) costs about 8 ns an element, four times both
    copies and a softmax over the long inner dimension together."""
    g = logits.transpose(1, 2).contiguous().softmax(1)
    g.scatter_add_(1, y.unsqueeze(1), torch.full_like(g[:, :1], -1.0)).div_(y.shape[1])
    return g.transpose(1, 2).contiguous()


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

    @staticmethod
    def _batched(params, x):
        """The forward pass as batched products over unfolded windows, channels last; returns the
        logits and what the backward needs."""
        w1, b1 = params["conv1.weight"], params["conv1.bias"]      # (M, W, 1, k), (M, W)
        w2, b2 = params["conv2.weight"], params["conv2.bias"]      # (M, W, W, k), (M, W)
        wh, bh = params["head.weight"], params["head.bias"]        # (M, C, W * L2), (M, C)
        M, B, L = x.shape
        W, k = w1.shape[1], w1.shape[-1]
        pad, C = k // 2, wh.shape[1]
        L2 = (L + 2 * pad - k) // 2 + 1
        x1 = F.pad(x, (pad, pad)).unfold(2, k, 1).reshape(M, B * L, k)
        h1 = torch.baddbmm(b1.unsqueeze(1), x1, w1.view(M, W, k).transpose(1, 2)).relu_()   # (M, B * L, W)
        h1p = F.pad(h1.view(M, B, L, W), (0, 0, pad, pad))
        x2 = h1p.unfold(2, k, 2).transpose(3, 4).reshape(M, B * L2, k * W)  # windows, (tap, channel) order
        w2k = w2.permute(0, 1, 3, 2).reshape(M, W, k * W)          # columns in (tap, input channel) order
        h2 = torch.baddbmm(b2.unsqueeze(1), x2, w2k.transpose(1, 2)).relu_()  # (M, B * L2, W)
        whp = wh.view(M, C, W, L2).transpose(2, 3).reshape(M, C, L2 * W)  # the head's inputs channels last
        h2f = h2.view(M, B, L2 * W)
        return torch.baddbmm(bh.unsqueeze(1), h2f, whp.transpose(1, 2)), (x1, h1, x2, w2k, h2, whp, h2f)

    @staticmethod
    @torch.no_grad()
    def batched_loss_grads(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The gradients of the summed per-model mean cross-entropy of M stacked CNN1d's, each on its own
        batch: ``params`` maps each parameter name to a tensor with a leading model dimension M
        (zero-padded to a common width), x (M, B, length), y (M, B) integer labels.

        The sweep engine calls this instead of ``vmap`` + autograd where the loss is
        ``F.cross_entropy`` (:mod:`gdlab.sweep.engine`, "a model's own backward"). Both convolutions are
        written as batched matrix products over unfolded windows (im2col, channels last), forward and
        backward, which on a CPU beats the grouped convolutions that ``vmap`` makes of them."""
        logits, (x1, h1, x2, w2k, h2, whp, h2f) = CNN1d._batched(params, x)
        M, B, L = x.shape
        W, k = h1.shape[-1], x1.shape[-1]
        pad, C, L2 = k // 2, whp.shape[1], h2f.shape[-1] // h1.shape[-1]
        g = _mean_cross_entropy_grad(logits, y)
        d_wh = torch.bmm(g.transpose(1, 2), h2f).view(M, C, L2, W).transpose(2, 3).reshape(M, C, W * L2)
        d_h2 = torch.ops.aten.threshold_backward(torch.bmm(g, whp).view(M, B * L2, W), h2, 0)
        d_w2 = torch.bmm(d_h2.transpose(1, 2), x2).view(M, W, k, W).transpose(2, 3).contiguous()
        d_x2 = torch.bmm(d_h2, w2k).view(M, B, L2, k, W)
        d_h1p = torch.zeros(M, B, L + 2 * pad, W, dtype=x.dtype, device=x.device)
        for j in range(k):  # each window tap back to the positions it read (col2im)
            d_h1p[:, :, j:j + 2 * L2 - 1:2] += d_x2[:, :, :, j]
        d_h1 = torch.ops.aten.threshold_backward(d_h1p[:, :, pad:pad + L].reshape(M, B * L, W), h1, 0)
        d_w1 = torch.bmm(d_h1.transpose(1, 2), x1).view(M, W, 1, k)
        return {"conv1.weight": d_w1, "conv1.bias": d_h1.sum(1), "conv2.weight": d_w2, "conv2.bias": d_h2.sum(1),
                "head.weight": d_wh, "head.bias": g.sum(1)}
