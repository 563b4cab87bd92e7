"""Throughput of the fractal grid trainer (Sohl-Dickstein 2024): network-steps per second, float64.

    python benchmarks/bench_fractal.py [--device cuda] [--pixels 262144] [--steps 100] [--n 272]

Times, in the same run, the plain batched-matmul step (baseline) and the fused step
(``torch.compile`` of the same function; on CUDA it fuses the element-wise work into a few
kernels). The chapter's target on one H100: >= 3.5e7 network-steps/s for the width-16 grid,
10x a plain batched loop (about 3.5e6). With ``--n`` below the input dimension (16), e.g. his
single-datapoint condition ``--n 1``, the trainer runs in pre-activations (``fractal._kernel_step``):
on 2 CPU threads, 65536 such networks took 7.2e6 network-steps/s against 3.4e5 for the full weights.
With ``--n 1`` it also times, in the same run, the element-wise single-example step
(``fractal._point_step``, what ``train_pixels`` uses for n = 1) against the kernel step (baseline)
on the same networks.
"""
from __future__ import annotations

import argparse
import time

import torch

from gdlab.stability import fractal


def throughput(problem, pixels, steps, fused, device):
    """Network-steps per second of wall time (and, on the CPU, per second of process CPU time).
    The step sizes are small enough that every network keeps training (none is dropped)."""
    e = torch.logspace(-2, -1, pixels, dtype=problem.W0.dtype, device=device)
    fractal.train_pixels(problem, e[:pixels], e.flip(0)[:pixels], steps=2, fused=fused)     # warm-up / compile
    if device.type == "cuda":
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    fractal.train_pixels(problem, e, e.flip(0), steps=steps, fused=fused)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return pixels * steps / (time.perf_counter() - t), pixels * steps / (time.process_time() - c)


def single_example_steps(problem, pixels, steps):
    """Network-steps per second of the kernel step (baseline) and of the element-wise step, on
    the same ``pixels`` single-example networks at small step sizes (none diverges)."""
    x = problem.x * (problem.gain / problem.x.shape[1] ** 0.5)
    h, dev, dt = problem.W0.shape[0], problem.W0.device, problem.W0.dtype
    e = torch.logspace(-2, -1, pixels, dtype=dt, device=dev)
    Z = (problem.W0 @ x.T).expand(pixels, -1, -1).contiguous()
    forms = {"kernel step (baseline)": (fractal._kernel_step, Z, x @ x.T, problem.y),
             "element-wise step": (fractal._point_step, Z[:, :, 0].contiguous(), (x @ x.T)[0, 0], problem.y[0])}
    rates = {}
    for name, (step, z, k, y) in forms.items():
        v = problem.v0.expand(pixels, -1).contiguous()
        step(z, v, k, y, e, e.flip(0), h)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            z, v, _ = step(z, v, k, y, e, e.flip(0), h)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rates[name] = pixels * steps / (time.perf_counter() - t)
    return rates


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pixels", type=int, default=None, help="networks trained at once")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--n", type=int, default=None, help="training examples (default: as many as parameters)")
    ap.add_argument("--no-fused", action="store_true", help="skip the torch.compile path")
    args = ap.parse_args()
    device = torch.device(args.device)
    pixels = args.pixels or (262144 if device.type == "cuda" else 256)
    problem = fractal.make_problem(torch.Generator().manual_seed(0), n=args.n, device=device)
    print(f"Sohl-Dickstein's network (width 16, input dim 16), n = {problem.x.shape[0]}, float64, "
          f"{pixels} networks, {args.steps} steps, device {device}, {torch.get_num_threads()} threads")
    plain, plain_cpu = throughput(problem, pixels, args.steps, False, device)
    print(f"plain batched step : {plain:.3e} network-steps/s ({plain_cpu:.3e} per CPU-second)")
    if not args.no_fused:
        try:
            fused, _ = throughput(problem, pixels, args.steps, True, device)
            print(f"fused (compiled)   : {fused:.3e} network-steps/s  ({fused / plain:.1f}x the plain step)")
        except Exception as err:  # torch.compile needs a working compiler toolchain
            print(f"fused step unavailable here: {type(err).__name__}: {str(err)[:200]}")
    if problem.x.shape[0] == 1:
        rates = single_example_steps(problem, pixels, args.steps)
        base = rates["kernel step (baseline)"]
        for name, rate in rates.items():
            print(f"{name:23s}: {rate:.3e} network-steps/s ({rate / base:.1f}x the kernel step)")
    if device.type == "cuda":
        print("target on one H100: >= 3.5e7 network-steps/s (10x a plain batched loop at ~3.5e6)")


if __name__ == "__main__":
    main()
