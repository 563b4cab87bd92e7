"""Edge of stability: full-batch GD with sharpness tracking, and gradient flow (Cohen et al. 2021).

Cohen, Kaur, Li, Kolter & Talwalkar 2021 train with full-batch GD on the square loss
``0.5 sum_k (f_k(x) - e_y,k)^2`` averaged over examples (their App. "MSE loss"), track the
sharpness (top Hessian eigenvalue of *that* loss) by Lanczos, and observe progressive
sharpening followed by the sharpness hovering just above ``2/eta`` while the loss keeps falling
non-monotonically (their Figs. 1-2); gradient flow (an RK4 solver in their App.) keeps
sharpening.

The sharpness is measured by Lanczos on Hessian-vector products (:func:`gdlab.hessian.lanczos`),
warm-started from the previous top eigenvector, so that a measurement along a trajectory takes a
handful of products.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gdlab import hessian
from gdlab.runtime import check_float, check_int, check_sequence, progress

__all__ = [
    "cohen_mse", "tanh_mlp", "Trajectory", "train_gd", "gradient_flow",
    "edge_of_stability_summary", "loss_summary", "compare_step_sizes"
]


def cohen_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum over outputs of squared error``, mean over the batch (Cohen et al. 2021, App. B).

    ``targets`` are one-hot (float) or integer class labels."""
    if not targets.is_floating_point():
        targets = torch.nn.functional.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
    return 0.5 * ((outputs - targets) ** 2).sum(dim=-1).mean()


def tanh_mlp(widths, generator: torch.Generator, *, dtype=torch.float32, device=None) -> torch.nn.Sequential:
    """Fully connected tanh network ``widths = [d_in, h_1, ..., d_out]`` with PyTorch's default
    (uniform fan-in) initialization drawn from ``generator`` on its device (Cohen et al.'s
    "fc-tanh"); the network lives on ``device`` (default: the generator's)."""
    widths = check_sequence("widths", widths, lambda n, v: check_int(n, v, min=1), min_len=2)
    gdev = generator.device
    device = gdev if device is None else device
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = torch.nn.Linear(a, b, device=device)
        bound = 1.0 / a ** 0.5
        with torch.no_grad():
            lin.weight.copy_(((torch.rand(b, a, generator=generator, device=gdev) * 2 - 1) * bound).to(device))
            lin.bias.copy_(((torch.rand(b, generator=generator, device=gdev) * 2 - 1) * bound).to(device))
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype)


@dataclass
class Trajectory:
    """Logged training: ``loss`` at every step (``times``: GD ``step * eta``, gradient flow the
    ODE time); ``sharpness`` at ``sharpness_steps``, which are at ``sharpness_times``. For
    gradient flow ``eta`` holds the largest RK4 step."""

    eta: float
    loss: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    sharpness_steps: list[int] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    sharpness_times: list[float] = field(default_factory=list)


class _Sharpness:
    """Top Hessian eigenvalue of :func:`cohen_mse` by Lanczos (relative residual ``tol``),
    warm-started from the last top eigenvector (Golub & Van Loan 10.1)."""

    def __init__(self, model, x, y, generator, tol=1e-3, max_iter=60):
        self.model, self.x, self.y, self.tol, self.max_iter = model, x, y, tol, max_iter
        self.params = [p for p in model.parameters() if p.requires_grad]
        size = sum(p.numel() for p in self.params)
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.v = torch.randn(size, generator=gen, device=gen.device).to(self.params[0])

    def __call__(self) -> float:
        loss = cohen_mse(self.model(self.x), self.y)
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])

        def hv(v):
            out = torch.autograd.grad(flat, self.params, grad_outputs=v, retain_graph=True)
            return torch.cat([o.reshape(-1) for o in out]).detach()

        def stop(alpha, beta, Q):
            T = torch.diag(alpha) + torch.diag(beta[:-1], 1) + torch.diag(beta[:-1], -1)
            theta, S = torch.linalg.eigh(T.double())
            return bool(abs(float(beta[-1]) * float(S[-1, -1])) <= self.tol * abs(float(theta[-1])))

        alpha, beta, Q = hessian.lanczos(hv, self.v, self.max_iter, stop=stop)
        T = torch.diag(alpha) + torch.diag(beta[:-1], 1) + torch.diag(beta[:-1], -1)
        theta, S = torch.linalg.eigh(T.double())
        self.v = (S[:, -1].to(Q.dtype) @ Q).detach()
        return float(theta[-1])


def train_gd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eta: float, steps: int,
             sharpness_every: int = 50, generator: torch.Generator | None = None, desc: str | None = None,
             max_loss: float = 1e6) -> Trajectory:
    """Full-batch GD on :func:`cohen_mse`, in place; the sharpness every ``sharpness_every`` steps
    and at the end. Stops early if the loss exceeds ``max_loss``."""
    eta = check_float("eta", eta, min=0.0, open_min=True)
    steps = check_int("steps", steps, min=1)
    sharpness_every = check_int("sharpness_every", sharpness_every, min=1)
    params = [p for p in model.parameters() if p.requires_grad]
    traj = Trajectory(eta)
    sharp = _Sharpness(model, x, y, generator)
    for step in progress(range(steps + 1), desc=desc):
        if step % sharpness_every == 0 or step == steps:
            traj.sharpness_steps.append(step)
            traj.sharpness_times.append(step * eta)
            traj.sharpness.append(sharp())
        loss = cohen_mse(model(x), y)
        traj.loss.append(float(loss.detach()))
        traj.times.append(step * eta)
        if not traj.loss[-1] < max_loss or step == steps:
            break
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= eta * g
    return traj


def gradient_flow(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, time: float, dt: float,
                  alpha: float = 1.0, sharpness_every: int = 20, generator: torch.Generator | None = None,
                  desc: str | None = None) -> Trajectory:
    """Gradient flow ``dtheta/dt = -grad L`` by classical RK4 up to ``time``, in place.

    The RK4 step is ``min(dt, alpha / S)`` with ``S`` the latest measured sharpness, the rule of
    Cohen et al. 2021 (App. on gradient flow; their ``flow.py``): RK4 is stable for
    ``step * S`` below about 2.8, so the step shrinks as the flow sharpens and the solver
    never has an edge of stability of its own. The sharpness is measured every
    ``sharpness_every`` RK4 steps; ``Trajectory.sharpness_times`` holds the ODE times."""
    time = check_float("time", time, min=0.0, open_min=True)
    dt = check_float("dt", dt, min=0.0, open_min=True)
    alpha = check_float("alpha", alpha, min=0.0, max=2.5, open_min=True)
    sharpness_every = check_int("sharpness_every", sharpness_every, min=1)
    params = [p for p in model.parameters() if p.requires_grad]
    theta = torch.nn.utils.parameters_to_vector(params).detach()
    sharp = _Sharpness(model, x, y, generator)

    def grad_at(w):
        torch.nn.utils.vector_to_parameters(w, params)
        return hessian.flat_grad(model, cohen_mse, (x, y)).detach()

    traj = Trajectory(dt)
    t, step, h = 0.0, 0, dt
    bar = progress(total=None, desc=desc)
    while True:
        torch.nn.utils.vector_to_parameters(theta, params)
        done = t >= time * (1 - 1e-12)
        if step % sharpness_every == 0 or done:
            traj.sharpness_steps.append(step)
            traj.sharpness_times.append(t)
            traj.sharpness.append(sharp())
            h = min(dt, alpha / max(traj.sharpness[-1], 1e-12))
        with torch.no_grad():
            traj.loss.append(float(cohen_mse(model(x), y)))
        traj.times.append(t)
        if done:
            break
        h_step = min(h, time - t)
        k1 = grad_at(theta)
        k2 = grad_at(theta - 0.5 * h_step * k1)
        k3 = grad_at(theta - 0.5 * h_step * k2)
        k4 = grad_at(theta - h_step * k3)
        theta = theta - h_step / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t += h_step
        step += 1
        bar.update(1)
    bar.close()
    torch.nn.utils.vector_to_parameters(theta, params)
    return traj


def edge_of_stability_summary(traj: Trajectory, eta: float | None = None, *, until: float | None = None,
                              reach: float = 1.0) -> dict[str, float]:
    """The sharpness relative to ``2/eta`` (Cohen et al. 2021, Sec. 3) on a GD run or on gradient
    flow (pass ``eta``, the step size whose ``2/eta`` the flow is compared with).

    Uses the measurements at times <= ``until`` (default: all). ``reached_time``: the first time
    the sharpness is >= ``reach * 2/eta`` (NaN if never); ``median``/``lo``/``hi``: median, 10th and
    90th percentile of ``sharpness * eta / 2`` from then on; ``sharpening``: the sharpness when
    it first reached ``2/eta`` over its minimum before (progressive sharpening);
    ``fraction_in_band``: the share of those measurements within [0.9, 1.1]."""
    eta = traj.eta if eta is None else check_float("eta", eta, min=0.0, open_min=True)
    times = torch.tensor(traj.sharpness_times, dtype=torch.float64)
    ratio = torch.tensor(traj.sharpness, dtype=torch.float64) * eta / 2
    if until is not None:
        keep = times <= until * (1 + 1e-12)
        times, ratio = times[keep], ratio[keep]
    hit = (ratio >= reach).nonzero()
    nan = float("nan")
    if hit.numel() == 0:
        return {"reached_time": nan, "median": nan, "lo": nan, "hi": nan, "sharpening": nan,
                "fraction_in_band": nan, "count": 0}
    i = int(hit[0])
    after = ratio[i:]
    return {"reached_time": float(times[i]), "median": float(torch.quantile(after, 0.5)),
            "lo": float(torch.quantile(after, 0.1)), "hi": float(torch.quantile(after, 0.9)),
            "sharpening": float(ratio[i] / ratio[: i + 1].min()),
            "fraction_in_band": float(((after >= 0.9) & (after <= 1.1)).double().mean()), "count": int(after.numel())}


def loss_summary(traj: Trajectory, since: float, *, until: float | None = None) -> dict[str, float]:
    """Non-monotone decrease of the loss after time ``since`` (Cohen et al. 2021, Sec. 3):
    ``increase_fraction``, the share of steps at which the loss went up, and ``decrease``, the
    last loss over the loss at ``since`` (both over times in [since, until])."""
    times = torch.tensor(traj.times, dtype=torch.float64)
    loss = torch.tensor(traj.loss, dtype=torch.float64)
    keep = (times >= since) & (times <= (float("inf") if until is None else until * (1 + 1e-12)))
    loss = loss[keep]
    if loss.numel() < 2:
        return {"increase_fraction": float("nan"), "decrease": float("nan")}
    return {"increase_fraction": float((loss[1:] > loss[:-1]).double().mean()),
            "decrease": float(loss[-1] / loss[0])}


def compare_step_sizes(widths, x: torch.Tensor, y: torch.Tensor, etas, *, time: float, flow_dt: float,
                       sharpness_every: int, generator: torch.Generator, flow_alpha: float = 2.0,
                       dtype=torch.float32, device=None) -> tuple[list[Trajectory], Trajectory]:
    """GD at each ``eta`` for ``time / eta`` steps (the same time ``step * eta`` for all) and
    gradient flow (RK4) for the same time, all from one initialization (Cohen et al. 2021,
    Fig. 1 and App. on gradient flow). The sharpness is measured every ``sharpness_every`` GD
    steps at the smallest ``eta`` (at the same times for the others) and every 20 RK4 steps of the
    flow, whose step is ``min(flow_dt, flow_alpha / sharpness)``. Returns
    ``(gd_runs, flow)``."""
    import copy

    etas = check_sequence("etas", etas, lambda n, v: check_float(n, v, min=0.0, open_min=True))
    time = check_float("time", time, min=0.0, open_min=True)
    model0 = tanh_mlp(widths, generator, dtype=dtype, device=device)
    dev = next(model0.parameters()).device
    x, y = x.to(device=dev, dtype=dtype), y.to(dev)
    lanczos_gen = torch.Generator(device=generator.device).manual_seed(0)
    every_time = sharpness_every * min(etas)
    runs = [train_gd(copy.deepcopy(model0), x, y, eta=eta, steps=max(1, round(time / eta)),
                     sharpness_every=max(1, round(every_time / eta)), generator=lanczos_gen,
                     desc=f"GD eta={eta:g}") for eta in etas]
    flow = gradient_flow(copy.deepcopy(model0), x, y, time=time, dt=flow_dt, alpha=flow_alpha,
                         sharpness_every=20, generator=lanczos_gen, desc="gradient flow")
    return runs, flow
