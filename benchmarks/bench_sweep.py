"""Benchmark the sweep engine against a plain Python loop over models, for an MLP and a CNN sweep.

MLP: the MNIST-1D width sweep of Nakkiran et al. 2019 / Greydanus 2020 (MLP 40 -> h -> h -> 10,
h = geomspace(2, 300), SGD + momentum, 15% label noise), trained once as batched groups with
``gdlab.sweep.run_sweep`` and once model by model with ``gdlab.sweep.train_one``
(``nn.Sequential`` + ``torch.optim.SGD``).

CNN: ``gdlab.sweep.models.CNN1d`` (two convolutions of h channels and a linear read-out) on
MNIST-1D, h = geomspace(2, 32), trained once with ``gdlab.sweep.run`` (``torch.func`` + ``vmap``)
and once model by model with ``gdlab.sweep.reference.train_reference`` (``torch.optim.SGD``).

Both in the same run; prints the times (wall and process CPU), the speedups and the largest
differences between the two, and exits non-zero if they disagree beyond floating-point tolerance.

For the MLP it also prints a floor: the time of the matrix products alone that the engine's groups
must run (forward and backward of every minibatch step, and the forward passes of the
evaluations), timed as bare ``torch.bmm`` calls on the same shapes, and the loop's time over that
floor, a ceiling on the speedup that no saving of overhead can pass.

    python benchmarks/bench_sweep.py --threads 2          # CPU, 2 threads (the issue's setting)
    python benchmarks/bench_sweep.py --device cuda        # GPU
    python benchmarks/bench_sweep.py --only mlp --widths 12,16,21,27,36,47,61,80,135 --seeds 3 --lr 0.02
                                                          # the chapter's quick-profile widths
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from gdlab import sweep
from gdlab.data import mnist1d
from gdlab.runtime import pick_device, pick_dtype
from gdlab.sweep import MLPPoint, run_sweep, train_one
from gdlab.sweep.engine import plan_groups
from gdlab.sweep.mlp import MLPFamily
from gdlab.sweep.models import CNN1d
from gdlab.sweep.reference import train_reference


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def max_difference(a, b, fields) -> dict[str, float]:
    return {f: max(abs(u - v) for x, y in zip(a, b) for u, v in zip(getattr(x, f), getattr(y, f))) for f in fields}


def report(name, n, batched, loop, tol):
    (rb, wb, cb), (rl, wl, cl) = batched, loop
    fields = ("train_loss", "test_loss", "train_error", "test_error")
    diff = max_difference(rb, rl, fields)
    # errors may differ by a few test points where float rounding flips an argmax near a tie
    ok = diff["train_loss"] <= tol and diff["test_loss"] <= tol and diff["test_error"] <= 0.01
    print(f"{name}: {n} models")
    print(f"  engine : wall {wb:8.2f} s   cpu {cb:8.2f} s")
    print(f"  loop   : wall {wl:8.2f} s   cpu {cl:8.2f} s")
    print(f"  speedup: wall {wl / wb:.1f}x   cpu {cl / cb:.1f}x")
    print("  max |difference| engine vs loop: " + ", ".join(f"{k} {v:.2e}" for k, v in diff.items()))
    print(f"  same results within tolerance (loss {tol:g}, error 0.01): {'YES' if ok else 'NO'}")
    return ok


def matmul_floor(points, n_train, n_test, in_dim, out_dim, device, dtype, group_overhead=None, reps=3):
    """Seconds of bare ``torch.bmm`` calls for the matrix products of the engine's groups (padded to
    each group's widest model, as the engine pads): per minibatch step the forward and backward
    products of every layer but the input's gradient, and the forward products of the evaluations
    (train and test sets, at every recorded epoch, in chunks of 1024). Best of ``reps``."""
    overhead = group_overhead if group_overhead is not None else (2e4 if device.type == "cpu" else 1e9)
    groups = plan_groups(MLPFamily(in_dim, out_dim), points, None, overhead)
    total = 0.0
    for idx in groups:
        p = points[idx[0]]
        M, H, B = len(idx), max(points[i].width for i in idx), p.batch_size
        sizes = [in_dim] + [H] * p.depth + [out_dim]
        Ws = [torch.randn(M, a, b, device=device, dtype=dtype) for a, b in zip(sizes[:-1], sizes[1:])]
        x = torch.randn(M, B, in_dim, device=device, dtype=dtype)
        xe = torch.randn(M, 1024, in_dim, device=device, dtype=dtype)
        g_out = torch.randn(M, B, out_dim, device=device, dtype=dtype)
        steps = p.epochs * -(-n_train // B)
        evals = len(p.eval_epochs()) * (-(-n_train // 1024) + -(-n_test // 1024))

        def run():
            for _ in range(steps):
                acts = [x]
                for W in Ws:
                    acts.append(torch.bmm(acts[-1], W))
                g = g_out
                for i in range(len(Ws) - 1, -1, -1):
                    torch.bmm(acts[i].mT, g)                # the weight's gradient
                    if i:
                        g = torch.bmm(g, Ws[i].mT)          # the gradient of the layer's input
            for _ in range(evals):
                a = xe
                for W in Ws:
                    a = torch.bmm(a, W)

        total += min(timed(run, device)[1] for _ in range(reps))
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--only", choices=["mlp", "cnn"], default=None)
    ap.add_argument("--num-widths", type=int, default=12, help="MLP widths = geomspace(2, max_width, num_widths)")
    ap.add_argument("--max-width", type=int, default=300)
    ap.add_argument("--widths", default=None, help="comma-separated MLP widths (overrides --num-widths/--max-width)")
    ap.add_argument("--cnn-widths", default="2,3,4,6,8,11,16,23,32", help="comma-separated CNN widths")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--cnn-epochs", type=int, default=2)
    ap.add_argument("--num-train", type=int, default=4000)
    ap.add_argument("--loss-tol", type=float, default=None,
                    help="max |loss difference| allowed (default 1e-3 for float32, 1e-9 for float64)")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tol = args.loss_tol if args.loss_tol is not None else (1e-3 if args.dtype == "float32" else 1e-9)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device} ({torch.get_num_threads()} CPU threads), {args.dtype}; load average {load:.2f} "
          f"on {os.cpu_count()} CPUs")

    data = mnist1d()
    data.x, data.y = data.x[:args.num_train], data.y[:args.num_train]
    ok = True
    if args.only in (None, "mlp"):
        widths = sorted({int(round(w)) for w in np.geomspace(2, args.max_width, args.num_widths)})
        if args.widths:
            widths = sorted({int(w) for w in args.widths.split(",")})
        points = [MLPPoint(width=w, seed=s, epochs=args.epochs, label_noise=0.15, lr=args.lr, momentum=0.9,
                           batch_size=100, eval_every=args.epochs) for w in widths for s in range(args.seeds)]
        print(f"MLP widths {widths} x {args.seeds} seeds; {args.epochs} epochs on {len(data.x)} MNIST-1D samples")
        warm = [MLPPoint(width=8, epochs=1, eval_every=1)]  # kernels and allocator warm on both sides
        run_sweep(warm, data, None, device=device, dtype=args.dtype, show_progress=False)
        train_one(warm[0], data, device=device, dtype=args.dtype)
        batched = timed(lambda: run_sweep(points, data, None, device=device, dtype=args.dtype, show_progress=False),
                        device)
        loop = timed(lambda: [train_one(p, data, device=device, dtype=args.dtype) for p in points], device)
        ok &= report("MLP (run_sweep vs nn.Sequential + torch.optim.SGD)", len(points), batched, loop, tol)
        n_test = 0 if data.x_test is None else len(data.x_test)
        floor = matmul_floor(points, len(data.x), n_test, data.x.shape[1], int(data.y.max()) + 1, device,
                             pick_dtype(args.dtype))
        print(f"  matrix products alone (the engine's groups, bare torch.bmm): {floor:.2f} s; "
              f"loop / that floor: {loop[1] / floor:.1f}x (a ceiling on the speedup)")

    if args.only in (None, "cnn"):
        widths = sorted({int(w) for w in args.cnn_widths.split(",")})
        points = sweep.grid(width=widths, seed=range(args.seeds), lr=0.05, momentum=0.9, label_noise=0.15,
                            batch_size=100, epochs=args.cnn_epochs, eval_every=args.cnn_epochs)
        print(f"CNN1d widths {widths} x {args.seeds} seeds; {args.cnn_epochs} epochs on {len(data.x)} MNIST-1D samples")
        run = lambda pts: sweep.run(CNN1d, F.cross_entropy, data, pts, device=device, dtype=args.dtype,  # noqa: E731
                                    show_progress=False)
        run(points[:1])
        train_reference(CNN1d, F.cross_entropy, data, points[0], device=device, dtype=args.dtype)
        batched = timed(lambda: run(points), device)
        loop = timed(lambda: [train_reference(CNN1d, F.cross_entropy, data, p, device=device, dtype=args.dtype)
                              for p in points], device)
        ok &= report("CNN (sweep.run vs nn.Module + torch.optim.SGD)", len(points), batched, loop, tol)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
