"""tools/gpu_run.py, the GPU job and its CPU rehearsal (which `make floor` runs at the torch floor)."""
import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "tools" / "gpu_run.py")
gpu_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_run)


def _record(runs, stem, torch_version):
    claims = runs / "_build" / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    (claims / f"{stem}.json").write_text(json.dumps([{"id": "C1", "versions": {"torch": torch_version}}]))


def test_kernel_torch_stage_fails_a_chapter_run_at_another_torch(tmp_path):
    """The floor is only tested if each chapter's kernel ran the floor's torch: a record made at
    another torch, or missing, fails the stage (and so the rehearsal)."""
    runs = tmp_path / "runs"
    _record(runs, "01-a", torch.__version__)
    _record(runs, "02-b", "2.99.0")
    job = gpu_run.Job(tmp_path / "out", 60, {})
    gpu_run.kernel_torch(job, runs, ["01-a"])
    gpu_run.kernel_torch(job, runs, ["01-a", "02-b", "03-c"])
    assert [r["outcome"] for r in job.results][0] == "ok"
    bad = job.results[1]["outcome"]
    assert bad.startswith("wrong torch") and "02-b" in bad and "03-c" in bad and "01-a" not in bad


def test_the_rehearsal_skips_the_paper_stage_and_the_gpu_job_keeps_it(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(gpu_run.Job, "stage", lambda self, name, cmd, projected=0.0: ran.append((name, cmd)) or {})
    monkeypatch.setattr(gpu_run, "pack", lambda *a, **k: None)
    monkeypatch.setattr(gpu_run, "have_book_tools", lambda: True)
    monkeypatch.setattr(gpu_run, "rehearsal_root", lambda: tmp_path / "scratch")
    monkeypatch.setattr(gpu_run, "kernel_torch", lambda job, runs, stems: ran.append(("kernel-torch", stems)))
    gpu_run.main(["--rehearsal", "--out", str(tmp_path / "r"), "--chapters", "01"])
    names = [n for n, _ in ran]
    assert names == ["smoke-01", "kernel-torch", "bench-sweep", "bench-hessian", "bench-fractal"]
    smoke = ran[0][1]
    assert "--strict-device" in smoke and "--validate" in smoke and "device='cpu'" in smoke
    ran.clear()
    gpu_run.main(["--out", str(tmp_path / "g"), "--chapters", "01"])
    names = [n for n, _ in ran]
    assert names == ["smoke-01", "paper-01", "bench-sweep", "bench-hessian", "bench-fractal"]
    assert "--save" in ran[1][1] and "device='cuda'" in ran[1][1]
