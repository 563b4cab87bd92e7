"""Tests for gdlab.icl.tasks."""
import pytest
import torch

from gdlab.icl import tasks as T


def test_shapes_tokens_and_labels():
    g = torch.Generator().manual_seed(0)
    t = T.sample_tasks((2, 3), 7, 4, generator=g)
    assert t.x.shape == (2, 3, 7, 4) and t.y.shape == (2, 3, 7) and t.x_query.shape == (2, 3, 4)
    torch.testing.assert_close(t.y, (t.x @ t.w.unsqueeze(-1)).squeeze(-1))
    tok = t.tokens()
    assert tok.shape == (2, 3, 8, 5)
    assert torch.all(tok[..., -1, -1] == 0)
    assert t.prefix(3).n == 3 and t.d == 4


def test_von_oswald_inputs_are_uniform_half():
    t = T.von_oswald_tasks(2000, generator=torch.Generator().manual_seed(0))
    assert t.x.min() >= -0.5 and t.x.max() <= 0.5
    assert abs(float(t.x.var()) - 1 / 12) < 0.005


def test_covariance_and_noise():
    g = torch.Generator().manual_seed(0)
    sigma = T.random_covariance(3, generator=g, condition=5.0, dtype=torch.float64)
    assert float(torch.trace(sigma)) == pytest.approx(3.0)
    ev = torch.linalg.eigvalsh(sigma)
    assert float(ev.max() / ev.min()) == pytest.approx(5.0)
    t = T.sample_tasks(20000, 5, 3, generator=g, covariance=sigma.float(), sigma=0.3)
    emp = torch.einsum("bni,bnj->ij", t.x, t.x) / (20000 * 5)
    torch.testing.assert_close(emp, sigma.float(), atol=0.05, rtol=0)
    resid = t.y - (t.x @ t.w.unsqueeze(-1)).squeeze(-1)
    assert float(resid.std()) == pytest.approx(0.3, rel=0.05)


def test_validation():
    g = torch.Generator()
    with pytest.raises(ValueError, match="x_dist"):
        T.sample_tasks(2, 3, 4, generator=g, x_dist="cauchy")
    with pytest.raises(ValueError, match="'n'"):
        T.sample_tasks(2, 0, 4, generator=g)
    with pytest.raises(ValueError, match="covariance"):
        T.sample_tasks(2, 3, 4, generator=g, covariance=torch.eye(3))
    with pytest.raises(ValueError, match="sigma"):
        T.sample_tasks(2, 3, 4, generator=g, sigma=-1.0)


def test_skewed_covariance_follows_garg():
    sigma = T.skewed_covariance(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(torch.trace(sigma)) == pytest.approx(6.0)
    ev = torch.linalg.eigvalsh(sigma).flip(0)
    torch.testing.assert_close(ev / ev[0], 1 / torch.arange(1, 7, dtype=torch.float64) ** 2)


def test_orthogonal_queries_are_orthogonal_with_the_same_norm():
    t = T.sample_tasks(50, 8, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for k in (1, 3, 4):
        o = T.orthogonal_query_tasks(t, k)
        assert o.n == k
        assert float((o.x @ o.x_query.unsqueeze(-1)).abs().max()) < 1e-10
        torch.testing.assert_close(o.x_query.norm(dim=-1), t.x_query.norm(dim=-1))
        torch.testing.assert_close(o.y_query, (o.x_query * o.w).sum(-1))
    with pytest.raises(ValueError, match="'k'"):
        T.orthogonal_query_tasks(t, 5)


def test_curriculum_grows_and_masks_dimensions():
    c = T.Curriculum(d=20, n_points=41, dims_start=5, points_start=11, interval=2000)
    assert c.at(0) == (5, 11) and c.at(1999) == (5, 11) and c.at(2000) == (6, 13)
    assert c.at(10**6) == (20, 41)
    t = c.sample(4000, (2, 3), generator=torch.Generator().manual_seed(0), sigma=0.0)
    assert t.x.shape == (2, 3, 15, 20) and float(t.x[..., 7:].abs().max()) == 0.0
    torch.testing.assert_close(t.y, (t.x @ t.w.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(t.y_query, (t.x_query * t.w).sum(-1))


def test_head_and_repeat():
    t = T.sample_tasks(5, 4, 3, generator=torch.Generator().manual_seed(0))
    assert t.head(2).x.shape == (2, 4, 3)
    r = t.repeat(3)
    assert r.x.shape == (3, 5, 4, 3) and torch.equal(r.y[2], t.y)
