"""The Colab install cell, run as Colab runs it.

Colab preinstalls torch (a CUDA build) and IPython 7.34; the install cell must add gdlab at the
exact commit that produced the notebook, with the chapter's extras, without touching either of
them (an upgraded IPython needs a kernel restart and can break the runtime), and must do nothing
outside Colab. The slow test builds such an environment: a fresh virtual environment with this
run's torch and IPython 7.34 preinstalled, then executes the cell's own text in IPython, with
the repository address pointed at a temporary clone of this checkout (``git+file://``).
"""
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gdlab.book import colab

ROOT = Path(__file__).resolve().parents[1]
COLAB_IPYTHON = "7.34.0"     # what Colab ships (github.com/googlecolab/backend-info, pip-freeze.txt)
SHA = "0123456789abcdef0123456789abcdef01234567"


def test_requirement_pins_the_commit_and_the_extras():
    url = "https://github.com/gdlab-book/gradient-descent-reproduced"
    assert colab.pip_requirement(url, SHA, ["prompts"]) == f"gdlab[prompts] @ git+{url}@{SHA}"
    assert colab.pip_requirement(url + "/", SHA, []) == f"gdlab @ git+{url}@{SHA}"
    cell = colab.install_cell_source(url, SHA, ["prompts"])
    assert 'if "google.colab" in sys.modules:' in cell
    pip_lines = [line for line in cell.splitlines() if "%pip" in line]
    assert pip_lines and all(line.startswith("    ") for line in pip_lines)     # only inside the if
    assert f"@{SHA}" in pip_lines[0] and "gdlab[prompts]" in pip_lines[0]
    with pytest.raises(ValueError):
        colab.pip_requirement(url, "main; rm -rf /", [])


def test_ipython_requirement_is_met_by_colab():
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    from packaging.requirements import Requirement

    reqs = {Requirement(d).name: Requirement(d) for d in deps}
    assert reqs["ipython"].specifier.contains(COLAB_IPYTHON)
    assert reqs["torch"].specifier.contains("2.11.0")        # Colab's torch (Aug 2026 runtime)


def _run(cmd, **kw):
    # a fresh environment sees nothing of this checkout or of this run's venv
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # pip skips byte-compiling what it installs (--no-compile; Python compiles what is imported),
    # which halves the install of the prompts extra; the install cell's own text is unchanged
    env["PIP_COMPILE"] = "0"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


DRIVER = textwrap.dedent('''
    """Run the install cell's text in IPython, outside and then inside a (pretend) Colab."""
    import importlib.util, json, sys, types
    from IPython.core.interactiveshell import InteractiveShell

    source = open(sys.argv[1]).read()
    shell = InteractiveShell.instance()
    outside = shell.run_cell(source)
    before = importlib.util.find_spec("gdlab") is None
    sys.modules["google"] = types.ModuleType("google")
    sys.modules["google.colab"] = types.ModuleType("google.colab")
    inside = shell.run_cell(source)
    print(json.dumps({"outside_ok": outside.success, "nothing_outside": before, "inside_ok": inside.success,
                      "exit_code": shell.user_ns.get("_exit_code")}))
''')

FEW_LINES = textwrap.dedent('''
    import json, importlib.metadata as md
    import torch, IPython
    import gdlab
    from gdlab.prompts.encoder import model_path

    rt = gdlab.setup("quick", 0, "cpu")
    x = torch.randn(8, generator=rt.generator(1), device=rt.device)
    claims = gdlab.Claims.for_runtime("colab-check", rt)
    claims.identity("I1", source="test", statement="a vector minus itself is zero",
                    measured=float((x - x).abs().max()), bound=1e-12)
    claims.report()
    gdlab.glue("colab_check", 1.5)
    direct = json.loads(md.distribution("gdlab").read_text("direct_url.json"))
    print("RESULT", json.dumps({"torch": torch.__version__, "ipython": IPython.__version__,
                               "commit": direct.get("vcs_info", {}).get("commit_id"),
                               "weights": (model_path() / "model.safetensors").exists()}))
''')


@pytest.mark.slow
def test_install_cell_in_a_fresh_colab_like_environment(tmp_path):
    """The cell's own text, in IPython 7.34 with torch preinstalled: it installs this commit with
    the prompts extra (the heaviest chapter's), leaves torch and IPython alone, and gdlab works."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    clone = tmp_path / "repo"
    _run(["git", "clone", "-q", str(ROOT), str(clone)])
    ref = _run(["git", "-C", str(clone), "rev-parse", "HEAD"]).strip()
    # git+file://localhost/...: pip < 24 rejects a git+file:/// URL (no host) as a requirement
    url = "file://localhost" + clone.as_posix()
    venv = tmp_path / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    # Colab's preinstalled packages: torch (here this run's own build) and IPython 7.34.
    # TORCH_INDEX is the Makefile's/CI's index option for a CPU torch, when set.
    index = shlex.split(os.environ.get("TORCH_INDEX", ""))
    _run([py, "-m", "pip", "install", "-q", "--no-compile", f"torch=={torch.__version__}",
          f"ipython=={COLAB_IPYTHON}", *index])
    cell = colab.install_cell_source(url, ref, ["prompts"])
    (tmp_path / "cell.py").write_text(cell)
    (tmp_path / "driver.py").write_text(DRIVER)
    log = _run([py, str(tmp_path / "driver.py"), str(tmp_path / "cell.py")], cwd=tmp_path)
    report = json.loads(log.strip().splitlines()[-1])
    assert report == {"outside_ok": True, "nothing_outside": True, "inside_ok": True, "exit_code": 0}, log[-5000:]
    (tmp_path / "few_lines.py").write_text(FEW_LINES)
    out = _run([py, str(tmp_path / "few_lines.py")], cwd=tmp_path)
    result = json.loads(out.split("RESULT", 1)[1])
    assert result == {"torch": torch.__version__, "ipython": COLAB_IPYTHON, "commit": ref, "weights": True}
    assert "PASS" in out                                       # the claims table was displayed
