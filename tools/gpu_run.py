"""The whole GPU job in one call: every chapter at the smoke size on the device, every chapter at
the paper profile with --save, and the GPU benchmarks; everything it made in a few files.

On the GPU machine (Python 3.12, torch, no network; see ../shared/tools/device-wheelhouse):

    python3 tools/gpu_run.py --out "$OUT" --budget 480

It installs the wheelhouse in ``.whl/`` (papermill, jupytext, nbval, ...) into /tmp/site when the
book's tools are missing, and registers the kernel papermill needs. It stops cleanly at the time
budget: each stage runs only if its projected time fits, a running chapter is stopped at the
budget, and whatever finished is saved. The output folder holds at most 8 files:

    summary.txt    what ran, outcome, wall time per stage, projected-versus-measured, what was skipped
    results.json   the same, machine-readable
    book.tar.gz    notebooks/*.ipynb (the kept paper notebooks), _build/claims/*.json, logs/*.log

The rehearsal on a CPU-only machine (CI runs it) proves the same code paths at the smoke size:

    python tools/gpu_run.py --rehearsal --out _build/gpu-rehearsal

runs every chapter at smoke under --strict-device (device mix-ups raise, as they would on CUDA)
and re-runs it under nbval (outputs must be identical), and the benchmarks at tiny sizes; it
skips the paper stage, which on a CPU could only repeat a smoke run (nothing is saved to
notebooks/). Its runs go to a scratch root, _build/rehearsal-root, not the checkout's _build.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / ".whl"
SITE = Path("/tmp/site")

# projected GPU wall times (s) of each chapter's paper profile on one H200, from CPU measurements at
# reduced steps (the chapters' notes; upper ends of their ranges); a stage is skipped when its
# projection exceeds what is left of the budget. 01: Garg's GPT-2 (12 layers, 500k steps) per
# depth, 3-5 h; 02: ~170k sequential small steps, 4-6 min; 03: 190 MLPs x 500 epochs in one group,
# 2-4 min; 04: the fractal grid (46 x 512^2 networks x 1000 steps, 1.3x the former 9 x 1024^2)
# dominates, 0.1-3 h until bench_fractal measures the fused step; 05: SmolLM2 generation (~97k
# steps), 40-60 min.
PAPER_PROJECTION_S = {"01": 18000, "02": 360, "03": 240, "04": 10800, "05": 3600}
BENCHMARKS = {  # name: (arguments on the GPU, arguments in the rehearsal)
    "sweep": (["benchmarks/bench_sweep.py", "--device", "cuda"],
              ["benchmarks/bench_sweep.py", "--device", "cpu", "--widths", "4,8", "--seeds", "1", "--epochs", "1",
               "--num-train", "200"]),
    "hessian": (["benchmarks/bench_hessian.py", "--device", "cuda"],
                ["benchmarks/bench_hessian.py", "--device", "cpu", "--width", "16", "--n", "64", "--k", "2"]),
    "fractal": (["benchmarks/bench_fractal.py", "--device", "cuda", "--pixels", "1048576"],
                ["benchmarks/bench_fractal.py", "--device", "cpu", "--pixels", "1024", "--steps", "20"]),
}


def have_book_tools() -> bool:
    try:
        import jupytext  # noqa: F401
        import papermill  # noqa: F401
    except ImportError:
        return False
    return True


def install_wheelhouse(env: dict) -> str:
    """Install ``.whl/*.whl`` into /tmp/site and register the python3 kernel (GPU machine only)."""
    wheels = sorted(WHEELHOUSE.glob("*.whl"))
    if not wheels:
        return "no wheelhouse in .whl/ (run ../shared/tools/device-wheelhouse .whl and carry it)"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--target", str(SITE), *map(str, wheels)], check=True)
    env["PYTHONPATH"] = f"{ROOT / 'src'}:{SITE}"
    env["PATH"] = f"{SITE / 'bin'}:{env.get('PATH', '')}"
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", "python3"], env=env,
                   check=True, capture_output=True)
    return f"installed {len(wheels)} wheels into {SITE}"


class Job:
    """Runs stages against a deadline and keeps a log of each."""

    def __init__(self, out: Path, budget: float, env: dict):
        self.out, self.deadline, self.env = out, time.monotonic() + budget, env
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results: list[dict] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def stage(self, name: str, cmd: list[str], projected: float = 0.0) -> dict:
        entry = {"stage": name, "command": " ".join(cmd), "projected_s": projected}
        if self.left() < max(projected, 5.0):
            entry.update(outcome="skipped", reason=f"{self.left():.0f} s left, projected {projected:.0f} s")
        else:
            start = time.monotonic()
            log = self.logs / f"{name}.log"
            with log.open("w") as f:
                try:
                    proc = subprocess.run(cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                          timeout=max(self.left(), 1.0))
                    entry["exit_code"] = proc.returncode
                    entry["outcome"] = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
                except subprocess.TimeoutExpired:
                    entry["outcome"] = "stopped at the budget"
            entry["wall_s"] = round(time.monotonic() - start, 1)
        self.results.append(entry)
        print(f"{name:24s} {entry['outcome']:24s} {entry.get('wall_s', 0):7.1f} s", flush=True)
        return entry


def chapters() -> list[str]:
    return [p.stem for p in sorted((ROOT / "book").glob("[0-9][0-9]-*.md"))]


def rehearsal_root() -> Path:
    """A scratch book root for the rehearsal's runs (``book/``, ``_toc.yml`` and ``_config.yml``
    linked from the checkout), so that its smoke records and notebooks never replace the checkout's
    quick ones in ``_build/claims`` and ``_build/executed``."""
    scratch = ROOT / "_build" / "rehearsal-root"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name in ("book", "_toc.yml", "_config.yml"):
        if (ROOT / name).exists():
            (scratch / name).symlink_to(ROOT / name)
    return scratch


def kernel_torch(job: Job, runs: Path, stems: list[str]) -> None:
    """A stage that checks each smoke record was made by this interpreter's torch: papermill and
    nbval start their kernels with ``sys.executable``, so run with the floor venv's Python (``make
    floor``), the chapters execute at the torch floor and not at some other install's torch."""
    import torch

    from gdlab.book.records import read_records

    want = torch.__version__
    found = {}
    for stem in stems:
        records = read_records(runs, stem)
        found[stem] = (records[0].get("versions") or {}).get("torch") if records else None
    wrong = {stem: v for stem, v in found.items() if v != want}
    entry = {"stage": "kernel-torch", "command": f"records made at torch {want}", "projected_s": 0,
             "outcome": "ok" if not wrong else f"wrong torch {wrong}", "wall_s": 0.0}
    job.results.append(entry)
    print(f"{'kernel-torch':24s} {entry['outcome']:24s} (torch {want} in {len(found) - len(wrong)} of {len(found)} "
          "chapter records)", flush=True)


def pack(job: Job, rehearsal: bool, runs: Path = ROOT) -> None:
    """Write summary.txt, results.json and book.tar.gz into the output folder (``runs``: the book
    root the chapters ran in)."""
    (job.out / "results.json").write_text(json.dumps(job.results, indent=1))
    lines = [f"{r['stage']:24s} {r['outcome']:24s} {r.get('wall_s', 0):7.1f} s (projected {r['projected_s']:.0f} s)"
             + (f"  {r['reason']}" if r.get("reason") else "") for r in job.results]
    total = sum(r.get("wall_s", 0) for r in job.results)
    (job.out / "summary.txt").write_text("\n".join(lines + [f"total {total:.0f} s"]) + "\n")
    with tarfile.open(job.out / "book.tar.gz", "w:gz") as tar:
        if not rehearsal:
            for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
                tar.add(nb, arcname=f"notebooks/{nb.name}")
        else:
            for nb in sorted((runs / "_build" / "executed").glob("*.ipynb")):
                tar.add(nb, arcname=f"executed/{nb.name}")
        for rec in sorted((runs / "_build" / "claims").glob("*.json")):
            tar.add(rec, arcname=f"claims/{rec.name}")
        tar.add(job.logs, arcname="logs")
    shutil.rmtree(job.logs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (at most 8 files are written)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole job (default 480 on the GPU; none in the rehearsal)")
    ap.add_argument("--rehearsal", action="store_true", help="CPU rehearsal at the smoke size (what CI runs)")
    ap.add_argument("--chapters", default=None, help="comma-separated chapter numbers (default: all)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}".rstrip(":")}
    budget = args.budget if args.budget is not None else (1e9 if args.rehearsal else 480.0)
    job = Job(args.out, budget, env)
    if not have_book_tools():
        print(install_wheelhouse(env), flush=True)
    device = "cpu" if args.rehearsal else "cuda"
    runs = rehearsal_root() if args.rehearsal else ROOT
    gdlab = [sys.executable, "-m", "gdlab"]
    where = ["--root", str(runs)] if args.rehearsal else []
    wanted = [c for c in chapters() if not args.chapters or c[:2] in args.chapters.split(",")]
    for stem in wanted:  # smoke: every cell on the device, in seconds
        # the rehearsal also re-runs each smoke notebook under nbval (identical outputs): `make test`
        # executes the quick profile once, so nbval's check of every chapter happens here
        strict = ["--strict-device", "--validate"] if args.rehearsal else []
        job.stage(f"smoke-{stem[:2]}", [*gdlab, "run", stem, *where, "--profile", "smoke", "--no-progress",
                                        "-p", f"device='{device}'", *strict], projected=30)
    if args.rehearsal:
        kernel_torch(job, runs, wanted)
    for stem in [] if args.rehearsal else wanted:  # the paper profile, kept (on CPU it would only
        # repeat a smoke run above: the paper profile does not fit a CPU and smoke runs are never kept)
        cmd = [*gdlab, "run", stem, "--profile", "paper", "--save", "--no-progress", "-p", "device='cuda'"]
        job.stage(f"paper-{stem[:2]}", cmd, projected=PAPER_PROJECTION_S.get(stem[:2], 60))
    for name, (gpu_args, cpu_args) in BENCHMARKS.items():
        job.stage(f"bench-{name}", [sys.executable, *(cpu_args if args.rehearsal else gpu_args)],
                  projected=10 if args.rehearsal else 60)
    pack(job, args.rehearsal, runs)
    # on the GPU a stage that does not fit is skipped and reported; the rehearsal must run them all
    failed = [r for r in job.results if r["outcome"] != "ok" and (args.rehearsal or r["outcome"] != "skipped")]
    print(f"{len(job.results)} stages, {len(failed)} failed; results in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
