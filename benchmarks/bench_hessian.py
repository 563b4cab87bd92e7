"""Benchmark gdlab.hessian against curvlinops (Dangel et al., maintained) and PyHessian (Yao et al.
2020, unmaintained since 2021) on the same model, data and loss, in one run, as time ratios at
equal (or better) accuracy.

    python benchmarks/bench_hessian.py [--device cpu|cuda] [--width 200] [--n 2000] [--k 5] [--threads 2]

Parts:
1. Top-k eigenvalues of fc-tanh [40, width, width, 10] (MSE loss, mean over the batch) on n
   MNIST-1D samples: gdlab's Lanczos (and ARPACK on gdlab's HVP), curvlinops'
   ``HessianLinearOperator`` with scipy's ARPACK ``eigsh`` (its documented route), PyHessian's power
   iteration with deflation. Each at ``--tol``; the accuracy is the largest relative error of the
   top-k against a float64 Lanczos reference at tol 1e-10; ratios are other / gdlab.
2. One HVP and a block of 32: double backward (cached gradient graph) against ``torch.func``
   forward-over-reverse (single, and ``vmap`` over the block), the choice gdlab makes.
3. Trace: Hutchinson against Hutch++ at equal HVPs on Chapter 4's models (the 10-class Gaussian
   mixture classifier and the edge-of-stability fc-tanh [40, 64, 64, 10]), RMS relative error
   over 20 seeds against the exact trace; and the time of 100 probes in gdlab, curvlinops and
   PyHessian on the part-1 model.

Optional packages, kept out of gdlab's install because curvlinops pulls backpack-for-pytorch and
torchvision, and through them a multi-GB CUDA torch that replaces a CPU one. With the CPU torch
kept (PyPI's torchvision does not import beside it, and neither library needs it on these code
paths: backpack imports torchvision only in its examples), install with
``bash benchmarks/install_bench.sh``. Without them, only gdlab is timed.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from gdlab import data, hessian
from gdlab.stability import eos


def timed(fn, device, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return result, best


def rel_err(vals, ref):
    vals = torch.sort(torch.as_tensor(vals, dtype=torch.float64).cpu().reshape(-1), descending=True).values
    return float(((vals - ref) / ref.abs()).abs().max())


def exact_trace(model, loss_fn, batch, block=256):
    """Tr H as the sum of e_i^T H e_i, by blocks of unit vectors (P HVPs)."""
    P = hessian.num_params(model)
    p0 = next(model.parameters())
    total = 0.0
    for s in range(0, P, block):
        idx = torch.arange(s, min(P, s + block))
        E = torch.zeros(len(idx), P, dtype=p0.dtype, device=p0.device)
        E[torch.arange(len(idx)), idx] = 1
        total += float((E * hessian.hvp(model, loss_fn, batch, E)).sum())
    return total


def trace_study(name, model, loss_fn, batch, matvecs=(30, 99), seeds=20):
    exact = exact_trace(model, loss_fn, batch)
    print(f"  {name}: P = {hessian.num_params(model)}, exact trace {exact:.4f}")
    for m in matvecs:
        rms = {}
        for label, fn in (("Hutchinson", lambda g: hessian.hutchinson_trace(model, loss_fn, batch, n_samples=m,
                                                                          generator=g)),
                          ("Hutch++", lambda g: hessian.hutchpp_trace(model, loss_fn, batch, n_matvecs=m,
                                                                      generator=g))):
            errs = [(fn(torch.Generator().manual_seed(s)) - exact) / abs(exact) for s in range(seeds)]
            rms[label] = (sum(e * e for e in errs) / len(errs)) ** 0.5
        print(f"    {m:3d} HVPs: RMS relative error Hutchinson {rms['Hutchinson']:.2e}, Hutch++ {rms['Hutch++']:.2e} "
              f"({rms['Hutchinson'] / max(rms['Hutch++'], 1e-300):.1f}x smaller)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--width", type=int, default=200)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="best of this many timings")
    ap.add_argument("--skip-trace-study", action="store_true")
    ap.add_argument("--skip-topk", action="store_true", help="skip part 1")
    ap.add_argument("--seeds", type=int, default=20, help="seeds of the trace study")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    split = data.mnist1d(num_samples=max(1000, int(args.n * 1.25)))
    x = split.x[: args.n].to(device)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.nn.functional.one_hot(split.y[: args.n], 10).float().to(device)
    model = eos.tanh_mlp([40, args.width, args.width, 10], torch.Generator().manual_seed(0), device=device)
    loss = torch.nn.MSELoss()  # mean over batch and outputs; a module, as curvlinops needs
    P = hessian.num_params(model)
    print(f"fc-tanh [40, {args.width}, {args.width}, 10], {P} parameters; n = {args.n}; MSE loss; device {device} "
          f"({torch.get_num_threads()} threads; load average {load:.2f} on {os.cpu_count()} CPUs); k = {args.k}; "
          f"tol = {args.tol}")

    ref_model = eos.tanh_mlp([40, args.width, args.width, 10], torch.Generator().manual_seed(0), device=device,
                             dtype=torch.float64)
    ref, _ = hessian.top_eigenpairs(ref_model, loss, (x.double(), y.double()), k=args.k, tol=1e-10)
    ref = ref.cpu()
    print(f"reference (Lanczos, float64, tol 1e-10): {[round(float(v), 5) for v in ref]}")
    hessian.hvp(model, loss, (x, y), torch.ones(P, device=device))  # warm-up

    rows = {}
    if not args.skip_topk:
        topk(args, model, loss, x, y, ref, device, rows)
    hvp_backends(model, loss, x, y, P, device)
    traces(args, model, loss, x, y, split, device)


def topk(args, model, loss, x, y, ref, device, rows):
    print("\n1. top-k eigenvalues (time, largest relative error of the top-k)")
    for method in ("lanczos", "arpack"):
        (vals, _, info), dt = timed(lambda: hessian.top_eigenpairs(model, loss, (x, y), k=args.k, tol=args.tol,
                                                                   method=method, return_info=True), device, args.repeat)
        rows[f"gdlab {method}"] = (dt, rel_err(vals, ref), info["hvps"])
    try:
        import numpy as np
        from curvlinops import HessianLinearOperator
        from scipy.sparse.linalg import eigsh

        def curv():
            H = HessianLinearOperator(model, loss, [p for p in model.parameters()], [(x, y)],
                                      check_deterministic=False).to_scipy(dtype=np.float64)
            return eigsh(H, k=args.k, which="LA", tol=args.tol)[0]

        vals, dt = timed(curv, device, args.repeat)
        rows["curvlinops + ARPACK"] = (dt, rel_err(vals, ref), None)
    except ImportError:
        print("  curvlinops not installed (bash benchmarks/install_bench.sh): skipped")
    try:
        from pyhessian import hessian as PyHessian

        comp = PyHessian(model, loss, data=(x, y), cuda=device.type == "cuda")
        (vals, _), dt = timed(lambda: comp.eigenvalues(top_n=args.k, tol=args.tol, maxIter=1000), device, args.repeat)
        rows["PyHessian (power)"] = (dt, rel_err(vals, ref), None)
    except ImportError:
        print("  PyHessian not installed (bash benchmarks/install_bench.sh): skipped")
    base = rows["gdlab lanczos"][0]
    for name, (dt, err, hvps) in rows.items():
        extra = f", {hvps} HVPs" if hvps else ""
        print(f"  {name:22s} {dt:8.3f} s  error {err:.1e}{extra}  ratio {dt / base:5.1f}x")


def hvp_backends(model, loss, x, y, P, device):
    print("\n2. HVP backends (ms per product)")
    V = torch.randn(32, P, generator=torch.Generator().manual_seed(1)).to(device)
    nan = float("nan")
    _, a1 = timed(lambda: hessian.hvp(model, loss, (x, y), V[0], backend="autograd"), device, 3)
    _, ab = timed(lambda: hessian.hvp(model, loss, (x, y), V, backend="autograd"), device, 1)
    try:
        _, f1 = timed(lambda: hessian.hvp(model, loss, (x, y), V[0], backend="func"), device, 3)
        _, fb = timed(lambda: hessian.hvp(model, loss, (x, y), V, backend="func"), device, 1)
    except RuntimeError as e:  # e.g. a loss whose forward-mode derivative torch.func cannot take
        print(f"  torch.func failed here ({str(e)[:90]}...); backend='auto' falls back to double backward")
        f1 = fb = nan
    op = hessian._Hessian(model, loss, (x, y))
    op(V[0])
    _, cached = timed(lambda: op(V[1]), device, 5)
    print(f"  one vector : double backward {1e3 * a1:7.2f} (graph cached, as in Lanczos: {1e3 * cached:7.2f}), "
          f"torch.func jvp(grad) {1e3 * f1:7.2f}")
    print(f"  block of 32: double backward (is_grads_batched) {1e3 * ab / 32:7.2f}, torch.func vmap {1e3 * fb / 32:7.2f}")


def traces(args, model, loss, x, y, split, device):
    print("\n3. trace")
    g = torch.Generator().manual_seed(0)
    tr, dt = timed(lambda: hessian.hutchinson_trace(model, loss, (x, y), n_samples=100, generator=g), device)
    print(f"  gdlab Hutchinson, 100 probes:     {dt:7.3f} s  {tr:.4f}")
    tr, dt = timed(lambda: hessian.hutchpp_trace(model, loss, (x, y), n_matvecs=99, generator=g), device)
    print(f"  gdlab Hutch++, 99 HVPs:           {dt:7.3f} s  {tr:.4f}")
    try:
        from curvlinops import HessianLinearOperator, hutchinson_trace, hutchpp_trace

        H = HessianLinearOperator(model, loss, [p for p in model.parameters()], [(x, y)], check_deterministic=False)
        tr, dt = timed(lambda: float(hutchinson_trace(H, 100)), device)
        print(f"  curvlinops Hutchinson, 100:       {dt:7.3f} s  {tr:.4f}")
        tr, dt = timed(lambda: float(hutchpp_trace(H, 99)), device)
        print(f"  curvlinops Hutch++, 99:           {dt:7.3f} s  {tr:.4f}")
    except ImportError:
        pass
    try:
        from pyhessian import hessian as PyHessian

        comp = PyHessian(model, loss, data=(x, y), cuda=device.type == "cuda")
        tr, dt = timed(lambda: comp.trace(maxIter=100, tol=0.0), device)
        print(f"  PyHessian trace, {len(tr)} probes:       {dt:7.3f} s  {sum(tr) / len(tr):.4f}")
    except ImportError:
        pass

    if not args.skip_trace_study:
        print("\n   Hutch++ against Hutchinson at equal HVPs on Chapter 4's models (exact trace by P HVPs)")
        gen = torch.Generator().manual_seed(9)
        mix = data.gaussian_mixture(600, 20, 10, gen, separation=20.0)
        net = eos.tanh_mlp([20, 32, 10], gen, device=device)
        mx, my = mix.x.to(device), mix.y.to(device)
        eos.train_gd(net, mx, my, eta=0.2, steps=300, sharpness_every=301)
        trace_study("mixture classifier [20, 32, 10] after 300 GD steps (Sagun et al.)", net, eos.cohen_mse, (mx, my),
                    seeds=args.seeds)
        net = eos.tanh_mlp([40, 64, 64, 10], torch.Generator().manual_seed(3), device=device)
        m = min(500, len(x))  # the first 500 points (all of them at the rehearsal's --n 64)
        xe, ye = x[:m], split.y[:m].to(device)
        eos.train_gd(net, xe, ye, eta=0.1, steps=500, sharpness_every=501)
        trace_study("edge of stability fc-tanh [40, 64, 64, 10] after 500 GD steps (Cohen et al.)", net,
                    eos.cohen_mse, (xe, ye), seeds=args.seeds)


if __name__ == "__main__":
    main()
