"""Tests for gdlab.sweep's general engine: any nn.Module trained with torch.func + vmap and a batched
optimizer step equals the per-model torch.optim loop (a small CNN and an MLP), for every data form."""
import pytest
import torch
import torch.nn.functional as F

from gdlab import sweep
from gdlab.data import gaussian_mixture
from gdlab.sweep import Point, grid
from gdlab.sweep.reference import train_reference


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class CNN(torch.nn.Module):
    """A small 1-D CNN: conv(width) - ReLU - conv(width) - tanh - flatten - linear."""

    def __init__(self, width: int = 4, length: int = 12, classes: int = 3):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(1, width, 3, padding=1)
        self.conv2 = torch.nn.Conv1d(width, width, 3, padding=1)
        self.head = torch.nn.Linear(width * length, classes)

    def forward(self, x):
        h = torch.relu(self.conv1(x.unsqueeze(1)))
        h = torch.tanh(self.conv2(h))
        return self.head(h.flatten(1))


class MLP(torch.nn.Module):
    def __init__(self, width: int = 8, dim: int = 12, classes: int = 3, act: str = "relu"):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, width), getattr(torch.nn, {"relu": "ReLU",
                                       "sigmoid": "Sigmoid"}[act])(), torch.nn.Linear(width, classes))

    def forward(self, x):
        return self.net(x)


class LayerNormNet(torch.nn.Module):
    """LayerNorm over the hidden units: padding changes the statistics, masking is not exact."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.a, self.norm, self.b = torch.nn.Linear(12, width), torch.nn.LayerNorm(width), torch.nn.Linear(width, 3)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


def mixture(n=60, n_test=30, dim=12, classes=3, seed=0, dtype=torch.float64):
    d = gaussian_mixture(n, dim, classes, torch.Generator().manual_seed(seed), n_test=n_test)
    return d.x.to(dtype), d.y, d.x_test.to(dtype), d.y_test


def assert_close(a, b, tol):
    assert a.epochs == b.epochs
    assert set(a.metrics) == set(b.metrics), (set(a.metrics), set(b.metrics))
    for k in a.metrics:
        diff = max(abs(u - v) for u, v in zip(a.metrics[k], b.metrics[k]))
        assert diff <= tol, (k, diff)


@pytest.mark.parametrize("model", [CNN, MLP], ids=["cnn", "mlp"])
def test_engine_equals_torch_optim_loop_float64(model):
    """Models of different widths, seeds, optimizers and hyperparameters in masked groups follow
    the trajectories of the per-model loop to floating-point tolerance."""
    data = mixture()
    points = (grid(width=[3, 6], seed=[0, 1], lr=[0.05], momentum=[0.0, 0.9], weight_decay=1e-3, label_noise=0.2,
                   batch_size=16, epochs=3, eval_every=1)
              + grid(width=[2, 5], seed=2, optimizer=["adam", "adamw"], lr=0.01, weight_decay=[0.0, 0.05],
                     batch_size=16, epochs=3, eval_every=3)
              + grid(width=4, seed=3, lr=0.05, momentum=0.9, nesterov=True, batch_size=16, epochs=3, eval_every=3))
    results = sweep.run(model, F.cross_entropy, data, points, dtype="float64", group_overhead=1e12,
                        show_progress=False)
    for p, r in zip(points, results):
        assert r.point == p
        assert "test_error" in r.metrics and len(r.test_error) == len(p.eval_epochs())
        assert_close(r, train_reference(model, F.cross_entropy, data, p, dtype="float64"), 1e-9)


def test_engine_float32_close_to_loop_and_learns():
    data = mixture(n=90, dtype=torch.float32)
    points = grid(width=[4, 8], seed=[0, 1], lr=0.1, momentum=0.9, batch_size=30, epochs=5, eval_every=5)
    results = sweep.run(CNN, F.cross_entropy, data, points, group_overhead=1e12, show_progress=False)
    for p, r in zip(points, results):
        assert_close(r, train_reference(CNN, F.cross_entropy, data, p), 1e-4)
        assert r.train_loss[-1] < r.train_loss[0]


def cnn1d(width=4):
    from gdlab.sweep.models import CNN1d

    return CNN1d(width, length=13, out_dim=3)  # an odd length: the strided convolution's last window


def test_cnn1d_brings_its_own_backward_equal_to_autograd_and_the_loop(monkeypatch):
    """gdlab's CNN1d computes the stacked models' gradients by hand (im2col products); on padded
    groups they equal vmap + autograd's, training uses them, and the trained models follow the
    per-model loop."""
    from gdlab.sweep.engine import ModuleFamily, as_data
    from gdlab.sweep.models import CNN1d

    for length, widths in ((13, [3, 6]), (8, [1, 2])):  # odd and even lengths; width 1
        x, y, _, _ = mixture(n=40, n_test=20, dim=length)
        pts = grid(width=widths, seed=[0, 1], lr=0.05, batch_size=10, epochs=1)
        group = ModuleFamily(lambda width: CNN1d(width, length=length, out_dim=3), F.cross_entropy).batched(
            pts, as_data((x, y)), torch.device("cpu"), torch.float64)
        assert hasattr(group, "loss_grads")
        g = torch.Generator().manual_seed(5)
        idx = torch.stack([torch.randperm(40, generator=g)[:10] for _ in pts])
        xb, yb = x[idx], y[idx]
        auto = torch.autograd.grad(group.loss(group.params, xb, yb, shared=False).sum(), group.params)
        for name, a, b in zip(group.param_names, auto, group.loss_grads(group.params, xb, yb)):
            assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-12 * (1 + float(a.abs().max())), name

    x, y, xt, yt = mixture(n=40, n_test=20, dim=13)
    points = grid(width=[3, 6], seed=[0, 1], lr=0.05, momentum=0.9, batch_size=10, epochs=2, eval_every=1)
    calls = []
    own = CNN1d.__dict__["batched_loss_grads"]
    monkeypatch.setattr(CNN1d, "batched_loss_grads", staticmethod(lambda *a: calls.append(1) or own(*a)))
    results = sweep.run(cnn1d, F.cross_entropy, (x, y, xt, yt), points, dtype="float64", group_overhead=1e12,
                        show_progress=False)
    assert len(calls) >= 2 * 4  # 2 epochs of 4 batches, besides the check against autograd
    for p, r in zip(points, results):
        assert_close(r, train_reference(cnn1d, F.cross_entropy, (x, y, xt, yt), p, dtype="float64"), 1e-9)


def test_cnn1d_backward_is_not_used_where_it_would_differ_from_autograd():
    from gdlab.sweep.engine import ModuleFamily, as_data
    from gdlab.sweep.models import CNN1d

    x, y, _, _ = mixture(n=40, n_test=20, dim=13)
    points = grid(width=[3, 6], seed=0, lr=0.05, batch_size=10, epochs=1)

    class Tanh(CNN1d):  # a subclass may change the forward: it does not inherit the hand-written backward
        def forward(self, x):
            return self.head(torch.tanh(self.conv2(torch.tanh(self.conv1(x.unsqueeze(1))))).flatten(1))

    def hooked(width):  # the factory changes the instance: a forward hook doubles the outputs
        m = cnn1d(width)
        m.register_forward_hook(lambda mod, inp, out: 2 * out)
        return m

    soft = F.one_hot(y, 3).double() * 0.8 + 0.2 / 3  # probability targets
    for model, loss, data in ((lambda width: Tanh(width, length=13, out_dim=3), F.cross_entropy, (x, y)),
                              (cnn1d, lambda out, t: F.cross_entropy(out, t, label_smoothing=0.1), (x, y)),
                              (hooked, F.cross_entropy, (x, y)),
                              (cnn1d, F.cross_entropy, (x, soft))):
        group = ModuleFamily(model, loss).batched(points, as_data(data), torch.device("cpu"), torch.float64)
        assert not hasattr(group, "loss_grads")
    results = sweep.run(cnn1d, F.cross_entropy, (x, soft), points, dtype="float64", show_progress=False)
    assert all(r.train_loss[-1] < r.train_loss[0] for r in results)  # trains through autograd


def test_masking_is_exact_for_any_activation_because_gradients_are_masked():
    """A sigmoid's padded units output 0.5, so their outgoing weights get gradient unless masked."""
    data = mixture()
    points = grid(width=[2, 7], act="sigmoid", lr=0.3, momentum=0.9, batch_size=20, epochs=2)
    results = sweep.run(MLP, F.cross_entropy, data, points, dtype="float64", group_overhead=1e12,
                        show_progress=False)
    for p, r in zip(points, results):
        assert_close(r, train_reference(MLP, F.cross_entropy, data, p, dtype="float64"), 1e-10)


def test_masking_refuses_a_model_it_cannot_pad_and_grouping_trains_it():
    data = mixture()
    points = grid(width=[3, 6], lr=0.05, batch_size=20, epochs=1)
    with pytest.raises(ValueError, match="widths='group'"):
        sweep.run(LayerNormNet, F.cross_entropy, data, points, dtype="float64", group_overhead=1e12,
                  show_progress=False)
    results = sweep.run(LayerNormNet, F.cross_entropy, data, points, dtype="float64", widths="group",
                        show_progress=False)
    for p, r in zip(points, results):
        assert_close(r, train_reference(LayerNormNet, F.cross_entropy, data, p, dtype="float64"), 1e-10)


def test_result_does_not_depend_on_the_grouping():
    data = mixture()
    points = grid(width=[2, 4, 7], seed=[0, 1], lr=0.05, momentum=0.9, batch_size=16, epochs=2)
    together = sweep.run(CNN, F.cross_entropy, data, points, dtype="float64", group_overhead=1e12,
                         show_progress=False)
    alone = sweep.run(CNN, F.cross_entropy, data, points, dtype="float64", max_group_size=1, show_progress=False)
    for a, b in zip(together, alone):
        assert_close(a, b, 1e-12)


def test_data_forms_tuple_dict_split_and_dataloader():
    x, y, xt, yt = mixture()
    points = grid(width=3, seed=[0, 1], lr=0.05, batch_size=20, epochs=2)
    run = lambda d: sweep.run(MLP, F.cross_entropy, d, points, dtype="float64", show_progress=False)  # noqa: E731
    base = run((x, y, xt, yt))
    for form in ({"x": x, "y": y, "x_test": xt, "y_test": yt}, {"train": (x, y), "test": (xt, yt)},
                 sweep.SweepData(x, y, xt, yt)):
        for a, b in zip(base, run(form)):
            assert_close(a, b, 0.0)
    train_only = run((x, y))
    assert "test_loss" not in train_only[0].metrics and "train_error" in train_only[0].metrics

    # a shuffling DataLoader: every model sees the loader's batches, in an order fixed per epoch
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    test_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xt, yt), batch_size=50)
    res = sweep.run(MLP, F.cross_entropy, (loader, test_loader), points, dtype="float64", show_progress=False)
    again = sweep.run(MLP, F.cross_entropy, {"train": loader, "test": test_loader}, points, dtype="float64",
                      show_progress=False)
    for p, r, r2 in zip(points, res, again):
        assert_close(r, r2, 0.0)
        assert_close(r, train_reference(MLP, F.cross_entropy, (loader, test_loader), p, dtype="float64"), 1e-10)


def test_regression_loss_and_custom_metrics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    y = torch.randn(40, 3, generator=g, dtype=torch.float64)
    mae = lambda out, t: (out - t).abs().mean()  # noqa: E731
    points = grid(width=[3, 5], lr=0.05, momentum=0.5, batch_size=10, epochs=2)
    results = sweep.run(MLP, F.mse_loss, (x, y, x[:10], y[:10]), points, dtype="float64", metrics={"mae": mae},
                        show_progress=False)
    for p, r in zip(points, results):
        assert set(r.metrics) == {"train_loss", "train_mae", "test_loss", "test_mae"}
        ref = train_reference(MLP, F.mse_loss, (x, y, x[:10], y[:10]), p, dtype="float64", metrics={"mae": mae})
        assert_close(r, ref, 1e-10)
    with pytest.raises(ValueError, match="'label_noise'"):
        sweep.run(MLP, F.mse_loss, (x, y), grid(width=3, label_noise=0.1, epochs=1), show_progress=False)


def test_grid_and_point_validation():
    pts = grid(width=[2, 4], seed=range(3), lr=0.1, betas=(0.8, 0.9), optimizer="adam")
    assert len(pts) == 6 and pts[0].model == {"width": 2} and pts[0].betas == (0.8, 0.9)
    assert len({hash(p) for p in pts}) == 6 and Point.from_dict(pts[3].to_dict()) == pts[3]
    with pytest.raises(ValueError, match="'optimizer'"):
        Point(optimizer="lbfgs")
    with pytest.raises(ValueError, match="'nesterov'"):
        Point(nesterov=True)
    with pytest.raises(ValueError, match="'lr'"):
        grid(lr=[0.1, -1.0])
    with pytest.raises(TypeError, match="'points\\[0\\]'"):
        sweep.run(MLP, F.cross_entropy, mixture(), [{"width": 3}])
    with pytest.raises(TypeError, match="'data'"):
        sweep.run(MLP, F.cross_entropy, "data.csv", grid(width=3))
    with pytest.raises(TypeError, match="one-shot"):
        sweep.run(MLP, F.cross_entropy, iter([(torch.zeros(2, 12), torch.zeros(2, dtype=torch.long))]), grid(width=3))
    with pytest.raises(ValueError, match="running statistics"):
        sweep.run(lambda width: torch.nn.Sequential(torch.nn.Linear(12, width), torch.nn.BatchNorm1d(width)),
                  F.cross_entropy, mixture(), grid(width=3, epochs=1), show_progress=False)


def test_keys_cover_model_loss_dtype_and_device(tmp_path):
    data = mixture(dtype=torch.float32)
    pts = grid(width=3, lr=0.05, batch_size=20, epochs=1)
    sweep.run(MLP, F.cross_entropy, data, pts, store=tmp_path, show_progress=False)
    sweep.run(MLP, F.cross_entropy, data, pts, store=tmp_path, dtype="float64", show_progress=False)
    sweep.run(CNN, F.cross_entropy, data, pts, store=tmp_path, show_progress=False)
    sweep.run(MLP, lambda o, t: F.cross_entropy(o, t), data, pts, store=tmp_path, show_progress=False)
    sweep.run(MLP, F.cross_entropy, data, pts, store=tmp_path, tag="v2", show_progress=False)
    sweep.run(MLP, F.cross_entropy, data, pts, store=tmp_path, show_progress=False)  # read back
    assert len(sweep.Store(tmp_path).keys()) == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engine_matches_cpu():
    data = mixture()
    points = grid(width=[3, 6], seed=[0, 1], lr=0.05, momentum=0.9, batch_size=16, epochs=2)
    cpu = sweep.run(CNN, F.cross_entropy, data, points, dtype="float64", show_progress=False)
    gpu = sweep.run(CNN, F.cross_entropy, data, points, device="cuda", dtype="float64", show_progress=False)
    for a, b in zip(cpu, gpu):
        assert_close(a, b, 1e-8)


def test_return_state_gives_the_trained_models_and_stores_them(tmp_path):
    data = mixture()
    points = grid(width=[3, 6], seed=[0, 1], lr=0.05, momentum=0.9, batch_size=16, epochs=2)
    results = sweep.run(CNN, F.cross_entropy, data, points, dtype="float64", group_overhead=1e12,
                        return_state=True, store=tmp_path, show_progress=False)
    for p, r in zip(points, results):
        net = r.model(CNN).double()
        ref = train_reference(CNN, F.cross_entropy, data, p, dtype="float64")
        with torch.no_grad():
            err = float((net(data[2]).argmax(-1) != data[3]).double().mean())
        assert abs(err - r.test_error[-1]) < 1e-12 and abs(err - ref.test_error[-1]) < 1e-12
        assert (tmp_path / f"{r.key}.pt").is_file()
    (tmp_path / f"{results[0].key}.pt").unlink()  # a missing state is recomputed when asked for
    again = sweep.run(CNN, F.cross_entropy, data, points, dtype="float64", group_overhead=1e12,
                      return_state=True, store=tmp_path, show_progress=False)
    starts = [k for e in sweep.Store(tmp_path).read_journal() if e["event"] == "start" for k in e["keys"]]
    assert starts.count(results[0].key) == 2 and len(starts) == 5
    for a, b in zip(results, again):
        assert all(torch.allclose(a.state[k], b.state[k], rtol=0, atol=1e-12) for k in a.state)
    no_state = sweep.run(CNN, F.cross_entropy, data, points, dtype="float64", store=tmp_path, show_progress=False)
    assert no_state[0].state is None


def test_evaluation_chunks_follow_the_group_size_and_do_not_change_the_metrics():
    """Evaluation runs in chunks sized by the group's largest activation (models x samples x
    floats within a budget), and the chunking changes no error and no loss beyond rounding."""
    from gdlab.sweep.engine import EVAL_BUDGET, ModuleFamily, as_data, eval_chunk

    assert eval_chunk(1, 1) == 4096 and eval_chunk(1000, 10_000) == 256
    assert eval_chunk(2, 1280) == 512  # two CNN1d's of width 32 on MNIST-1D: 2 x 512 x 1280 floats
    for models, floats in ((1, 40), (2, 300), (16, 104), (6, 160)):
        chunk = eval_chunk(models, floats)
        assert chunk & (chunk - 1) == 0 and 256 <= chunk <= 4096
        assert models * chunk * floats <= EVAL_BUDGET or chunk == 256
        assert chunk == 4096 or models * 2 * chunk * floats > EVAL_BUDGET  # the largest that fits
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="models"):
            eval_chunk(bad, 10)

    x, y, xt, yt = mixture(n=300, n_test=50)
    pts = grid(width=[3, 12], seed=[0, 1], lr=0.05, batch_size=10, epochs=1)
    group = ModuleFamily(CNN, F.cross_entropy).batched(pts, as_data((x, y)), torch.device("cpu"), torch.float64)
    # the largest output per sample: conv(12) over 12 positions; on a CPU a convolutional group
    # evaluates model by model, so the chunk is sized for one model
    assert group.eval_per_model and group.eval_chunk == eval_chunk(1, 12 * 12)
    labels = y.unsqueeze(0).expand(len(pts), -1)
    whole = group.evaluate(group.params, x, labels, per_model=True, chunk=4096)
    for chunk in (7, 64, None):
        part = group.evaluate(group.params, x, labels, per_model=True, chunk=chunk)
        assert part["error"] == whole["error"]
        assert max(abs(a - b) for a, b in zip(part["loss"], whole["loss"])) <= 1e-12


def test_building_a_group_leaves_the_cached_models_and_code_ids_as_they_were(monkeypatch):
    """The group is stacked from the family's cached host models, cast and moved without changing
    them, and the source of the factory and the loss is read once per family."""
    from gdlab.sweep import engine
    from gdlab.sweep.engine import ModuleFamily, as_data

    data = as_data(mixture(dtype=torch.float32)[:2])
    family = ModuleFamily(CNN, F.cross_entropy)
    for widths in ([4, 4], [2, 4]):  # one architecture (stack_module_state), and padded
        pts = grid(width=widths, seed=[0, 1], lr=0.05, batch_size=10, epochs=1)[::2]
        before = [{k: v.clone() for k, v in family.build(p).state_dict().items()} for p in pts]
        group = family.batched(pts, data, torch.device("cpu"), torch.float64)
        assert all(t.dtype == torch.float64 for t in group.params)
        for p, was in zip(pts, before):
            now = family.build(p).state_dict()
            assert all(now[k].dtype == torch.float32 and torch.equal(now[k], v) for k, v in was.items())
    calls, real = [], engine._code_id
    monkeypatch.setattr(engine, "_code_id", lambda obj: calls.append(obj) or real(obj))
    specs = [family.spec(p) for p in grid(width=[2, 3, 4], seed=[0, 1], lr=0.05, batch_size=10, epochs=1)]
    assert calls == [CNN, F.cross_entropy]  # the factory (here the class itself) and the loss, once each
    assert specs[0]["model"]["factory"] == real(CNN) and specs[-1]["loss"] == real(F.cross_entropy)
    assert {s["model"]["class"] for s in specs} == {real(CNN)}


def test_minibatches_are_the_rows_advanced_indexing_takes():
    from gdlab.sweep.engine import _minibatch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, 3, generator=g)
    idx = torch.stack([torch.randperm(30, generator=g)[:7] for _ in range(5)])
    rows = torch.arange(5).unsqueeze(1)
    for y in (torch.randint(0, 3, (5, 30), generator=g), torch.rand(5, 30, 3, generator=g)):
        xb, yb = _minibatch(x, y, idx)
        assert torch.equal(xb, x[idx]) and torch.equal(yb, y[rows, idx])


def test_convolutional_groups_evaluate_model_by_model_on_a_cpu_with_vmaps_numbers():
    """On a CPU a group with convolutions evaluates each model with plain convolutions (vmap would
    make grouped ones, slower there); the losses and errors are those of the vmapped forward."""
    from gdlab.sweep.engine import ModuleFamily, as_data

    x, y, _, _ = mixture(n=50, n_test=20, dim=13)
    points = grid(width=[3, 6], seed=[0, 1], lr=0.05, batch_size=10, epochs=1)
    group = ModuleFamily(cnn1d, F.cross_entropy).batched(points, as_data((x, y)), torch.device("cpu"), torch.float64)
    assert group.eval_per_model
    labels = y.unsqueeze(0).expand(len(points), -1)
    per_model = group.evaluate(group.params, x, labels, per_model=True, chunk=16)
    group.eval_per_model = False
    vmapped = group.evaluate(group.params, x, labels, per_model=True, chunk=16)
    assert per_model["error"] == vmapped["error"]
    assert max(abs(a - b) for a, b in zip(per_model["loss"], vmapped["loss"])) < 1e-12
    mlp = ModuleFamily(lambda width: torch.nn.Sequential(torch.nn.Linear(13, width), torch.nn.ReLU(),
                                                         torch.nn.Linear(width, 3)), F.cross_entropy)
    assert not mlp.batched(points, as_data((x, y)), torch.device("cpu"), torch.float64).eval_per_model
    assert ModuleFamily(cnn1d, F.cross_entropy).batched(points, as_data((x, y)), "cpu", torch.float64).eval_per_model
