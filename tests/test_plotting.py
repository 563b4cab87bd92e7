"""Tests for gdlab.plotting's style: a shipped .mplstyle file, opt-in only (no global side effect on
import), a context manager that restores matplotlib's settings, and the explicit global opt-in."""
import subprocess
import sys
import textwrap

import matplotlib
import pytest

from gdlab import plotting


@pytest.fixture(autouse=True)
def restore_rc():
    saved = dict(matplotlib.rcParams)
    yield
    matplotlib.rcParams.update(saved)


def test_style_file_is_shipped_and_parses():
    style = plotting.STYLE
    assert style["figure.figsize"] == [6.0, 3.6] and style["axes.grid"] is True
    colors = [c["color"] for c in style["axes.prop_cycle"]]
    assert [("#" + c if not c.startswith("#") else c).lower() for c in colors] == plotting.COLORS


def test_import_changes_nothing():
    code = textwrap.dedent("""
        import matplotlib
        before = dict(matplotlib.rcParams)
        import gdlab, gdlab.plotting, gdlab.hessian, gdlab.sweep
        rt = gdlab.setup("quick", 0, "cpu")
        changed = [k for k, v in matplotlib.rcParams.items() if before.get(k) != v]
        print(changed)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_context_manager_restores_and_use_style_applies():
    import matplotlib.pyplot as plt

    before = dict(matplotlib.rcParams)
    with plotting.style():
        assert matplotlib.rcParams["axes.spines.top"] is False and matplotlib.rcParams["grid.alpha"] == 0.25
        fig, ax = plotting.subplots(2)
        plt.close(fig)
    assert dict(matplotlib.rcParams) == before
    plotting.use_style()
    assert matplotlib.rcParams["lines.linewidth"] == 1.6
    assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][0].lower() == plotting.COLORS[0]


def test_submodules_are_reachable_lazily():
    code = textwrap.dedent("""
        import sys, gdlab
        assert "gdlab.hessian" not in sys.modules and "gdlab.sweep" not in sys.modules
        assert callable(gdlab.hessian.top_eigenpairs) and callable(gdlab.sweep.run)
        assert "hessian" in dir(gdlab) and gdlab.Claims and gdlab.setup and gdlab.Runtime
        try:
            gdlab.no_such_module
        except AttributeError:
            print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ok"
