"""Benchmark the sweep engine against a plain Python loop over models.

Trains the MNIST-1D width sweep of Nakkiran et al. 2019 / Greydanus 2020 (MLP 40 -> h -> h -> 10,
h = geomspace(2, 300), SGD + momentum, 15% label noise) twice in the same run: once as batched
groups with ``gdlab.sweep.run_sweep`` and once model by model with ``gdlab.sweep.train_one``
(``nn.Sequential`` + ``torch.optim.SGD``). Prints both times and the speedup, and checks that the
two give the same losses and errors within floating-point tolerance.

    python benchmarks/bench_sweep.py                    # CPU
    python benchmarks/bench_sweep.py --device cuda      # GPU (target: >= 10x on an H100)
    python benchmarks/bench_sweep.py --widths 12,16,21,27,36,47,61,80,135 --seeds 3 --lr 0.02
                                                        # the chapter's quick-profile widths
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gdlab.data import mnist1d
from gdlab.runtime import pick_device
from gdlab.sweep import MLPPoint, run_sweep, train_one


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def max_difference(a, b) -> dict[str, float]:
    return {f: max(abs(u - v) for x, y in zip(a, b) for u, v in zip(getattr(x, f), getattr(y, f)))
            for f in ("train_loss", "test_loss", "train_error", "test_error")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--num-widths", type=int, default=12, help="widths = geomspace(2, max_width, num_widths)")
    ap.add_argument("--max-width", type=int, default=300)
    ap.add_argument("--widths", default=None, help="comma-separated widths (overrides --num-widths/--max-width)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--num-train", type=int, default=4000)
    ap.add_argument("--loss-tol", type=float, default=None,
                    help="max |loss difference| allowed (default 1e-3 for float32, 1e-9 for float64)")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tol = args.loss_tol if args.loss_tol is not None else (1e-3 if args.dtype == "float32" else 1e-9)

    data = mnist1d()
    data.x, data.y = data.x[:args.num_train], data.y[:args.num_train]
    widths = sorted({int(round(w)) for w in np.geomspace(2, args.max_width, args.num_widths)})
    if args.widths:
        widths = sorted({int(w) for w in args.widths.split(",")})
    points = [MLPPoint(width=w, seed=s, epochs=args.epochs, label_noise=0.15, lr=args.lr, momentum=0.9,
                       batch_size=100, eval_every=args.epochs) for w in widths for s in range(args.seeds)]
    print(f"device {device} ({torch.get_num_threads()} CPU threads), {args.dtype}; {len(points)} models: widths {widths} "
          f"x {args.seeds} seeds; {args.epochs} epochs on {len(data.x)} MNIST-1D samples")

    # warm-up (kernels, allocator) so that neither side pays first-call costs
    warm = [MLPPoint(width=8, epochs=1, eval_every=1)]
    run_sweep(warm, data, None, device=device, dtype=args.dtype, show_progress=False)
    train_one(warm[0], data, device=device, dtype=args.dtype)

    batched, wall_b, cpu_b = timed(lambda: run_sweep(points, data, None, device=device, dtype=args.dtype,
                                                     show_progress=False), device)
    loop, wall_l, cpu_l = timed(lambda: [train_one(p, data, device=device, dtype=args.dtype) for p in points], device)

    diff = max_difference(batched, loop)
    # errors may differ by a few test points where float rounding flips an argmax near a tie
    ok = diff["train_loss"] <= tol and diff["test_loss"] <= tol and diff["test_error"] <= 0.01
    print(f"engine : wall {wall_b:8.2f} s   cpu {cpu_b:8.2f} s")
    print(f"loop   : wall {wall_l:8.2f} s   cpu {cpu_l:8.2f} s")
    print(f"speedup: wall {wall_l / wall_b:.1f}x   cpu {cpu_l / cpu_b:.1f}x")
    print("max |difference| engine vs loop: " + ", ".join(f"{k} {v:.2e}" for k, v in diff.items()))
    print(f"same results within tolerance (loss {tol:g}, error 0.01): {'YES' if ok else 'NO'}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
