"""Tests for gdlab.icl.probes."""
import torch

from gdlab.icl import learners, probes
from gdlab.icl.tasks import sample_tasks
from gdlab.icl.transformer import CausalTransformer, TransformerConfig


def test_linear_probe_recovers_a_linear_map_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 400, 6, generator=g)
    a = torch.randn(6, 3, generator=g)
    y = x @ a + 0.5
    r2 = probes.linear_probe_r2(x[:, :300], y[:, :300], x[:, 300:], y[:, 300:])
    assert r2.shape == (2,) and float(r2.min()) > 0.999
    noise = torch.randn(2, 400, 3, generator=g)
    assert float(probes.linear_probe_r2(x[:, :300], noise[:, :300], x[:, 300:], noise[:, 300:]).max()) < 0.1


def test_targets_and_shapes():
    t = sample_tasks(8, 5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ols = probes.targets(t, "ols")
    assert ols.shape == (8, 5, 3)
    torch.testing.assert_close(ols[:, -1], t.w)          # k >= d: least squares recovers w
    torch.testing.assert_close(probes.targets(t, "moment")[:, 1], learners.averaging_weights(t.x[:, :2], t.y[:, :2]))
    cfg = TransformerConfig(d=3, n_points=5, width=16, depth=2, heads=2, models=2)
    model = CausalTransformer(cfg, generator=torch.Generator().manual_seed(0))
    assert probes.label_states(model, t.to(torch.float32).repeat(2)).shape == (3, 2, 8, 5, 16)
    r2 = probes.probe_layers(model, t.to(torch.float32), t.to(torch.float32), "moment")
    assert r2.shape == (3, 5)


def test_implicit_weights_of_a_linear_readout():
    cfg = TransformerConfig(d=3, n_points=6, width=16, depth=1, heads=2, models=2)
    model = CausalTransformer(cfg, generator=torch.Generator().manual_seed(0))
    t = sample_tasks(4, 5, 3, generator=torch.Generator().manual_seed(2))
    w = probes.implicit_weights(model, t, probes=12, generator=torch.Generator().manual_seed(3))
    assert w.shape == (4, 3) and torch.isfinite(w).all()
