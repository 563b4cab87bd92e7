"""Datasets that ship offline: MNIST-1D (procedural), scikit-learn digits, the VADER lexicon,
and small synthetic tasks. Nothing here downloads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gdlab.runtime import check_float, check_int


__all__ = ["Split", "mnist1d", "LABEL_NOISE_KINDS", "label_noise", "wrong_label_rate", "digits", "gaussian_mixture", "vader_lexicon"]


@dataclass
class Split:
    """A train/test split as tensors: ``x`` (n, features) and integer labels ``y`` (n,)."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device=None, dtype=None) -> "Split":
        f = lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)  # noqa: E731
        return Split(f(self.x), f(self.y), f(self.x_test), f(self.y_test))

    @property
    def num_classes(self) -> int:
        return int(max(self.y.max(), self.y_test.max())) + 1


def mnist1d(num_samples: int = 5000, train_split: float = 0.8, seed: int = 42, **overrides) -> Split:
    """MNIST-1D generated procedurally with ``mnist1d.data.make_dataset`` (Greydanus 2020).

    The defaults (5000 samples, 4000 train / 1000 test, seed 42) are the package's own and
    give the standard dataset. ``overrides`` go to the dataset arguments (e.g. ``iid_noise_scale``).
    Never downloads: it does not call ``get_dataset``.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = check_int("num_samples", num_samples, min=10)
    args.train_split = check_float("train_split", train_split, min=0.0, max=1.0, open_min=True)
    args.seed = check_int("seed", seed, min=0)
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise ValueError(f"parameter {key!r}: not an MNIST-1D dataset argument")
        setattr(args, key, value)
    d = make_dataset(args)
    return Split(torch.as_tensor(d["x"], dtype=torch.float32), torch.as_tensor(d["y"], dtype=torch.long),
                 torch.as_tensor(d["x_test"], dtype=torch.float32), torch.as_tensor(d["y_test"], dtype=torch.long))


LABEL_NOISE_KINDS = ("incorrect", "uniform")


def label_noise(y: torch.Tensor, p: float, num_classes: int, generator: torch.Generator,
                kind: str = "incorrect") -> torch.Tensor:
    """Noisy training labels: with probability ``p`` a label is redrawn.

    ``kind="incorrect"``: redrawn uniformly among the *other* classes, so a fraction p of the
    labels is wrong (Nakkiran et al. 2019, Sec. 3: "label noise of probability p").
    ``kind="uniform"``: redrawn uniformly among *all* classes, so the true label comes back a
    1/num_classes of the time and a fraction p (num_classes - 1) / num_classes is wrong
    (Greydanus 2020, deep-double-descent notebook: 15% noise, 13.5% wrong labels with 10
    classes). The two kinds have the same law when the rates match :func:`wrong_label_rate`.
    Random numbers are drawn on the generator's device; the result is on ``y``'s device."""
    p = check_float("p", p, min=0.0, max=1.0)
    num_classes = check_int("num_classes", num_classes, min=2)
    if kind not in LABEL_NOISE_KINDS:
        raise ValueError(f"parameter 'kind': got {kind!r}; allowed values are {list(LABEL_NOISE_KINDS)}")
    # drawn on the generator's device (the library's rule), then moved to the labels' device
    dev = generator.device
    flip = (torch.rand(y.shape, generator=generator, device=dev) < p).to(y.device)
    if kind == "incorrect":
        shift = torch.randint(1, num_classes, y.shape, generator=generator, device=dev).to(y.device)
        draw = (y + shift) % num_classes
    else:
        draw = torch.randint(0, num_classes, y.shape, generator=generator, device=dev).to(y.device)
    return torch.where(flip, draw.to(y.dtype), y)


def wrong_label_rate(p: float, num_classes: int, kind: str = "incorrect") -> float:
    """Expected fraction of wrong labels under :func:`label_noise` at rate ``p``: p for
    "incorrect", p (num_classes - 1) / num_classes for "uniform". Nakkiran-style noise at this
    rate has the same law as the given noise (each wrong class has probability rate / (K - 1))."""
    p = check_float("p", p, min=0.0, max=1.0)
    num_classes = check_int("num_classes", num_classes, min=2)
    if kind not in LABEL_NOISE_KINDS:
        raise ValueError(f"parameter 'kind': got {kind!r}; allowed values are {list(LABEL_NOISE_KINDS)}")
    return p if kind == "incorrect" else p * (num_classes - 1) / num_classes


def digits(classes: tuple[int, ...] | None = None, test_fraction: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], optionally restricted to ``classes``
    (relabelled 0..len(classes)-1), with a seeded stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    if classes is not None:
        keep = np.isin(y, classes)
        x, y = x[keep], np.searchsorted(np.array(sorted(classes)), y[keep])
    x = x / 16.0
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    t = lambda a, dt: torch.as_tensor(a, dtype=dt)  # noqa: E731
    return Split(t(xtr, torch.float32), t(ytr, torch.long), t(xte, torch.float32), t(yte, torch.long))


def gaussian_mixture(n: int, dim: int, num_classes: int, generator: torch.Generator,
                     separation: float = 3.0, n_test: int = 0) -> Split:
    """Isotropic Gaussian clusters, one per class, with means of norm ``separation``.

    Drawn on the generator's device; the split's tensors are on that device.
    """
    n, dim, num_classes = check_int("n", n, min=1), check_int("dim", dim, min=1), check_int("num_classes", num_classes, min=2)
    dev = generator.device
    means = torch.randn(num_classes, dim, generator=generator, device=dev)
    means = separation * means / means.norm(dim=1, keepdim=True)

    def draw(m):
        y = torch.randint(0, num_classes, (m,), generator=generator, device=dev)
        return means[y] + torch.randn(m, dim, generator=generator, device=dev), y

    x, y = draw(n)
    xt, yt = draw(n_test)
    return Split(x, y, xt, yt)


def vader_lexicon() -> dict[str, tuple[float, float]]:
    """The VADER sentiment lexicon shipped in ``vaderSentiment``: token -> (mean rating, std).

    Ratings are human means on [-4, 4] (Hutto & Gilbert 2014). Read from the package's file,
    not through the analyzer class.
    """
    try:
        import vaderSentiment
    except ImportError as e:  # pragma: no cover - exercised only without the package
        raise ImportError("the VADER lexicon needs the package 'vaderSentiment': pip install vaderSentiment") from e
    path = Path(vaderSentiment.__file__).with_name("vader_lexicon.txt")
    lexicon = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split("\t")
        if len(parts) >= 3:
            lexicon[parts[0]] = (float(parts[1]), float(parts[2]))
    return lexicon
