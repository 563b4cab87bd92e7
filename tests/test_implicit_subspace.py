import math

import torch

from gdlab.implicit import subspace as Sb


def test_fraction_and_overlap_identities():
    V = torch.eye(5)[:2]
    assert math.isclose(Sb.gradient_fraction(torch.tensor([3.0, 4.0, 0, 0, 0]), V), 1.0)
    assert Sb.gradient_fraction(torch.tensor([0, 0, 1.0, 0, 0]), V) == 0.0
    assert math.isclose(Sb.gradient_fraction(torch.tensor([1.0, 0, 1.0, 0, 0]), V), 0.5)
    assert math.isclose(Sb.subspace_overlap(V, V), 1.0)
    assert Sb.subspace_overlap(V, torch.eye(5)[2:4]) == 0.0


def test_tracking_a_small_classifier():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    run = Sb.track_gradient_subspace(model, torch.nn.functional.cross_entropy, x, y, k=3, checkpoints=[0, 50, 100],
                                     lr=0.1, batch_size=32, generator=g, probe_size=200)
    assert run.steps == [0, 50, 100] and run.num_params == 6 * 16 + 16 + 16 * 3 + 3
    assert all(0.0 <= f <= 1.0 + 1e-6 for f in run.fraction)
    assert math.isnan(run.overlap[0]) and all(0.0 <= o <= 1.0 + 1e-6 for o in run.overlap[1:])
    assert run.loss[-1] < run.loss[0]
    assert max(run.fraction[1:]) > 10 * run.chance


def small_classifier(seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.randn(120, 5, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return model, x, y, g


def test_projected_sgd_leaves_the_model_alone():
    model, x, y, g = small_classifier()
    before = [p.detach().clone() for p in model.parameters()]
    runs = Sb.projected_sgd(model, torch.nn.functional.cross_entropy, x, y, k=3, steps=1, lr=0.1,
                            batch_size=16, refresh=1, generator=g)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert set(runs) == {"sgd", "dom", "bulk"} and runs["sgd"].steps == [0, 1]
    assert len(runs["sgd"].fraction_next) == 2 and runs["dom"].fraction_next == []
    losses = {m: runs[m].loss[1] for m in runs}
    assert losses["sgd"] < runs["sgd"].loss[0] + 1e-3 and all(math.isfinite(v) for v in losses.values())


def test_dom_and_bulk_updates_split_the_sgd_update():
    model, x, y, g = small_classifier(1)
    runs = {}
    for mode in ("sgd", "dom", "bulk"):
        out = Sb.projected_sgd(model, torch.nn.functional.cross_entropy, x, y, modes=[mode], k=2, steps=1,
                               lr=1e-3, batch_size=16, refresh=1, generator=g)
        runs[mode] = out[mode]
    # to first order in lr the loss changes add up: dL_sgd = dL_dom + dL_bulk
    d = {m: runs[m].loss[1] - runs[m].loss[0] for m in runs}
    assert math.isclose(d["sgd"], d["dom"] + d["bulk"], rel_tol=0.05, abs_tol=1e-7)
    assert Sb.subspace_overlap(runs["sgd"].first, runs["sgd"].first) > 0.999
