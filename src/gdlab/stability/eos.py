"""Edge of stability: full-batch GD with sharpness tracking, and gradient flow (Cohen et al. 2021).

Cohen, Kaur, Li, Kolter & Talwalkar 2021 train with full-batch GD on the square loss
``0.5 sum_k (f_k(x) - e_y,k)^2`` averaged over examples (their App. "MSE loss"), track the
sharpness (top Hessian eigenvalue of *that* loss) by Lanczos, and observe progressive
sharpening followed by the sharpness hovering just above ``2/eta`` (their Figs. 1-2), while
gradient flow (an RK4 solver in their App.) keeps sharpening.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gdlab import hessian
from gdlab.runtime import check_float, check_int, check_sequence, progress


def cohen_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum over outputs of squared error``, mean over the batch (Cohen et al. 2021, App. B).

    ``targets`` are one-hot (float) or integer class labels."""
    if not targets.is_floating_point():
        targets = torch.nn.functional.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
    return 0.5 * ((outputs - targets) ** 2).sum(dim=-1).mean()


def tanh_mlp(widths, generator: torch.Generator, *, dtype=torch.float32, device="cpu") -> torch.nn.Sequential:
    """Fully connected tanh network ``widths = [d_in, h_1, ..., d_out]`` with PyTorch's default
    (uniform fan-in) initialization drawn from ``generator`` (Cohen et al.'s "fc-tanh")."""
    widths = check_sequence("widths", widths, lambda n, v: check_int(n, v, min=1), min_len=2)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = torch.nn.Linear(a, b)
        bound = 1.0 / a ** 0.5
        with torch.no_grad():
            lin.weight.copy_((torch.rand(b, a, generator=generator) * 2 - 1) * bound)
            lin.bias.copy_((torch.rand(b, generator=generator) * 2 - 1) * bound)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype)


@dataclass
class Trajectory:
    """Logged training: ``loss`` at every step; ``sharpness`` at ``sharpness_steps``, which are
    at times ``sharpness_times`` (GD: ``step * eta``; gradient flow: the ODE time). For gradient
    flow ``eta`` holds the largest RK4 step."""

    eta: float
    loss: list[float] = field(default_factory=list)
    sharpness_steps: list[int] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    sharpness_times: list[float] = field(default_factory=list)


def _sharpness(model, x, y, generator):
    vals, _ = hessian.top_eigenpairs(model, cohen_mse, (x, y), k=1, tol=1e-4, generator=generator)
    return float(vals[0])


def train_gd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eta: float, steps: int,
             sharpness_every: int = 20, generator: torch.Generator | None = None, desc: str | None = None,
             max_loss: float = 1e6) -> Trajectory:
    """Full-batch GD on :func:`cohen_mse`, in place; the sharpness (Lanczos on HVPs of the
    trained loss) every ``sharpness_every`` steps. Stops early if the loss exceeds ``max_loss``."""
    eta = check_float("eta", eta, min=0.0, open_min=True)
    steps = check_int("steps", steps, min=1)
    sharpness_every = check_int("sharpness_every", sharpness_every, min=1)
    params = [p for p in model.parameters() if p.requires_grad]
    traj = Trajectory(eta)
    for step in progress(range(steps + 1), desc=desc):
        if step % sharpness_every == 0 or step == steps:
            traj.sharpness_steps.append(step)
            traj.sharpness_times.append(step * eta)
            traj.sharpness.append(_sharpness(model, x, y, generator))
        loss = cohen_mse(model(x), y)
        traj.loss.append(float(loss.detach()))
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
            traj.sharpness.append(_sharpness(model, x, y, generator))
            h = min(dt, alpha / max(traj.sharpness[-1], 1e-12))
        with torch.no_grad():
            traj.loss.append(float(cohen_mse(model(x), y)))
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


def edge_of_stability_summary(traj: Trajectory, *, reach: float = 0.95) -> dict[str, float]:
    """Sharpness statistics relative to ``2/eta`` (Cohen et al. 2021, Sec. 3).

    ``reached_step``: the first logged step with sharpness >= reach * 2/eta (-1 if never);
    ``after_min``/``after_max``/``after_median``: min, max and median of sharpness * eta / 2 from then on;
    ``sharpening``: max before reaching, over min before reaching (progressive sharpening).
    """
    ratio = torch.tensor(traj.sharpness) * traj.eta / 2
    hit = (ratio >= reach).nonzero()
    if hit.numel() == 0:
        return {"reached_step": -1, "after_min": float("nan"), "after_max": float("nan"),
                "after_median": float("nan"), "sharpening": float(ratio.max() / ratio.min())}
    i = int(hit[0])
    before = ratio[: i + 1]
    after = ratio[i:]
    return {"reached_step": traj.sharpness_steps[i], "after_min": float(after.min()),
            "after_max": float(after.max()), "after_median": float(after.median()),
            "sharpening": float(before.max() / before.min())}


def compare_step_sizes(widths, x: torch.Tensor, y: torch.Tensor, etas, *, steps: int, flow_time: float,
                       flow_dt: float, sharpness_every: int, generator: torch.Generator,
                       dtype=torch.float32, device="cpu") -> tuple[list[Trajectory], Trajectory]:
    """GD at each ``eta`` and gradient flow (RK4), all from the same initialization
    (Cohen et al. 2021, Fig. 1 and App. on gradient flow). Returns ``(gd_runs, flow)``."""
    import copy

    etas = check_sequence("etas", etas, lambda n, v: check_float(n, v, min=0.0, open_min=True))
    model0 = tanh_mlp(widths, generator, dtype=dtype, device=device)
    x, y = x.to(device=device, dtype=dtype), y.to(device)
    lanczos_gen = torch.Generator().manual_seed(0)
    runs = [train_gd(copy.deepcopy(model0), x, y, eta=eta, steps=steps, sharpness_every=sharpness_every,
                     generator=lanczos_gen, desc=f"GD eta={eta:g}") for eta in etas]
    every = max(1, int(round(sharpness_every * min(etas) / flow_dt)))
    flow = gradient_flow(copy.deepcopy(model0), x, y, time=flow_time, dt=flow_dt, sharpness_every=every,
                         generator=lanczos_gen, desc="gradient flow")
    return runs, flow
