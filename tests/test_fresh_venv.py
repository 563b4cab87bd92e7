"""A researcher's first use: a fresh virtual environment with ``pip install .`` alone (no book extras;
torch installed first, as the README says, so that pip never pulls a CUDA build) runs a sweep of the
researcher's own small CNN and the top Hessian eigenvalues of a trained one. Network: only what pip
install needs (PyPI)."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXAMPLE = textwrap.dedent('''
    import warnings
    import matplotlib
    import torch
    import torch.nn.functional as F
    import gdlab
    from gdlab import sweep

    torch.set_num_threads(1)
    rc = dict(matplotlib.rcParams)

    class CNN(torch.nn.Module):  # the researcher's own model
        def __init__(self, width):
            super().__init__()
            self.conv = torch.nn.Conv1d(1, width, 3, padding=1)
            self.head = torch.nn.Linear(width * 16, 3)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x.unsqueeze(1))).flatten(1))

    g = torch.Generator().manual_seed(0)
    means = 2 * torch.randn(3, 16, generator=g)
    y = torch.randint(0, 3, (150,), generator=g)
    x = means[y] + torch.randn(150, 16, generator=g)
    points = sweep.grid(width=[2, 4, 8], seed=[0, 1], lr=0.05, momentum=0.9, epochs=3, batch_size=25)
    results = sweep.run(CNN, F.cross_entropy, (x[:100], y[:100], x[100:], y[100:]), points,
                        store="store", return_state=True, show_progress=False)
    assert all(r.train_loss[-1] < r.train_loss[0] for r in results)
    net = results[-1].model(CNN).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged, and no train-mode problem
        vals, _ = gdlab.hessian.top_eigenpairs(net, F.cross_entropy, (x[:100], y[:100]), k=3)
    assert vals.shape == (3,) and bool((vals[:-1] >= vals[1:]).all())
    assert dict(matplotlib.rcParams) == rc  # no global side effect
    print("widths", [r.point.model["width"] for r in results], "top eigenvalues", [round(float(v), 4) for v in vals])
''')


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_pip_install_alone_runs_a_cnn_sweep_and_its_hessian(tmp_path):
    start = time.time()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [py, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    run(pip + ["torch==2.13.0"], env=env)  # the CPU build (from the local disk here; the Makefile does the same)
    run(pip + [str(ROOT)], env=env)
    work = tmp_path / "work"
    work.mkdir()
    (work / "example.py").write_text(EXAMPLE)
    out = run([py, "example.py"], cwd=work, env=env)
    assert "top eigenvalues" in out
    # the installed package, not this checkout, was used; and no book extras came with it
    where = run([py, "-c", "import gdlab, importlib.util as u; print(gdlab.__file__, u.find_spec('papermill'))"],
                cwd=work, env=env)
    assert str(venv) in where and where.strip().endswith("None")
    print(f"fresh venv: {time.time() - start:.0f} s; {out.strip()}")
