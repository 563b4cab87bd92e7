"""The book pipeline end to end, on a one-chapter toy book (fast), plus checks of the real book's
table of contents and kept notebooks."""
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from gdlab import book

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).parent / "fixtures" / "toybook"


@pytest.fixture()
def toy(tmp_path):
    root = tmp_path / "toybook"
    shutil.copytree(TOY, root)
    return root


def run(root, *args):
    return book.main(["run", *args, "--root", str(root), "--no-progress"])


@pytest.fixture(scope="module")
def _toy_run(tmp_path_factory):
    """One default run of the toy chapter, kept and validated by nbval (`run 1 --save --validate`),
    made once for the tests that only need a completed run to start from."""
    root = tmp_path_factory.mktemp("toy-run") / "toybook"
    shutil.copytree(TOY, root)
    return root, run(root, "1", "--save", "--validate")


@pytest.fixture()
def toy_ran(_toy_run, tmp_path):
    """A copy of the toy book after that run (each test may change its copy)."""
    ran, code = _toy_run
    assert code == 0, "the shared toy run failed"
    root = tmp_path / "ran" / "toybook"
    shutil.copytree(ran, root)
    return root


def claims_of(root):
    return json.loads((root / "_build" / "claims" / "01-toy.json").read_text())


def gdlab_claims(root, capsys):
    capsys.readouterr()
    code = book.main(["claims", "--root", str(root)])
    return code, capsys.readouterr().out


def test_run_writes_claims_json_in_the_contract_format(toy, capsys):
    assert run(toy, "1", "--seed", "3") == 0
    records = claims_of(toy)
    assert [r["id"] for r in records] == ["I1", "C2"]
    for r in records:
        for key in ("id", "kind", "source", "statement", "paper_value", "measured", "tolerance", "passed", "status",
                    "controls", "profile", "seed", "device", "threads", "params", "defaults", "commit",
                    "source_hash", "validated", "wall_time_s", "versions"):
            assert key in r, key
        assert r["passed"] is True and r["status"] == "PASS" and r["seed"] == 3 and r["profile"] == "quick"
        assert r["defaults"] is True and r["params"] == {}
    assert records[0]["kind"] == "identity" and records[0]["controls"] == []
    (ctl,) = records[1]["controls"]
    assert ctl["name"] == "N(shift, 1)" and ctl["passed"] is False
    out = capsys.readouterr().out
    assert "PASS" in out and "control" in out and "fails (good)" in out
    assert "1 of 1 reproductions pass; 1 of 1 identities hold" in out


def test_failed_claim_exits_1_and_prints_the_table(toy, capsys):
    assert run(toy, "01-toy", "-p", "target=2.0") == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "CLAIM FAILED" in out
    assert [r["status"] for r in claims_of(toy)] == ["FAIL", "PASS"]
    code, out = gdlab_claims(toy, capsys)
    assert code == 1 and "01-toy: FAIL (failed: I1)" in out


def test_a_control_that_passes_fails_its_claim(toy, capsys):
    assert run(toy, "1", "-p", "control_shift=0.0") == 1
    c2 = claims_of(toy)[1]
    assert c2["measurement_passed"] and c2["controls"][0]["passed"] and c2["status"] == "FAIL"
    assert "cannot tell the effect from its absence" in c2["message"]
    assert "passes (bad)" in capsys.readouterr().out
    code, out = gdlab_claims(toy, capsys)
    assert code == 1 and "01-toy: FAIL" in out and "params: " not in out and "control_shift=0.0" in out


def test_bad_chapter_parameter_exits_2_naming_it(toy, capsys):
    assert run(toy, "1", "-p", "target='abc'") == 2
    out = capsys.readouterr().out
    assert "parameter 'target'" in out and "expected a number" in out
    (err,) = claims_of(toy)
    assert err["status"] == "ERROR" and "parameter 'target'" in err["error"]
    assert run(toy, "1", "-p", "n=5") == 2  # below the declared minimum


def test_unknown_parameter_fails_before_execution_listing_the_parameters(toy, capsys):
    assert run(toy, "1", "-p", "nosuch=1") == 2
    err = capsys.readouterr().err
    assert "no parameter 'nosuch'" in err and "control_shift" in err and "target" in err
    assert not (toy / "_build" / "claims" / "01-toy.json").exists()


@pytest.mark.parametrize("flag, exit_code, cause", [
    ("crash=True", 3, "RuntimeError: the toy chapter crashed on purpose"),
    ("die=True", 3, "DeadKernelError"),
])
def test_a_run_that_does_not_complete_leaves_an_error_record(toy_ran, capsys, flag, exit_code, cause):
    toy = toy_ran  # the error record replaces the completed run's records
    assert claims_of(toy)[0]["id"] != "ERROR"
    assert run(toy, "1", "-p", flag) == exit_code
    records = claims_of(toy)
    assert records[0]["id"] == "ERROR" and cause in records[0]["error"]
    code, out = gdlab_claims(toy, capsys)
    assert code == 1 and "01-toy: ERROR" in out and cause in out


def test_an_interrupted_run_leaves_an_error_record(toy, capsys, monkeypatch):
    import papermill

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    assert run(toy, "1") == 130
    assert "interrupted" in claims_of(toy)[0]["error"]
    code, out = gdlab_claims(toy, capsys)
    assert code == 1 and "01-toy: ERROR (interrupted" in out


def test_a_killed_pipeline_leaves_the_started_record(toy, capsys, monkeypatch):
    from gdlab.book import run as runmod

    def killed(*a, **k):  # the pipeline itself dies before it can write anything else
        raise SystemExit(137)

    monkeypatch.setattr(runmod, "execute", killed)
    with pytest.raises(SystemExit):
        run(toy, "1")
    code, out = gdlab_claims(toy, capsys)
    assert code == 1 and "has not completed" in out


def test_nbval_mismatch_exits_4_and_records_an_error(toy, capsys):
    assert run(toy, "1", "-p", "unstable=True", "--validate") == 4
    assert "nbval" in claims_of(toy)[0]["error"]
    code, out = gdlab_claims(toy, capsys)
    assert code == 1 and "01-toy: ERROR (nbval" in out


def test_missing_and_stale_records_fail_gdlab_claims(toy, toy_ran, capsys):
    code, out = gdlab_claims(toy, capsys)
    assert code == 1 and "01-toy: MISSING" in out
    toy = toy_ran  # after `run 1 --save --validate`
    assert claims_of(toy)[0]["validated"] is True
    code, out = gdlab_claims(toy, capsys)
    assert code == 0 and "01-toy: OK" in out and "defaults" in out
    source = toy / "book" / "01-toy.md"
    source.write_text(source.read_text().replace("bins=30", "bins=31"))
    code, out = gdlab_claims(toy, capsys)
    assert code == 1 and "01-toy: STALE" in out


def test_smoke_records_claims_without_judging_them(toy):
    assert run(toy, "1", "--profile", "smoke", "-p", "control_shift=0.0") == 0
    assert {r["status"] for r in claims_of(toy)} == {"NOT JUDGED"}
    assert run(toy, "1", "--profile", "smoke", "--save") == 2  # smoke runs are never kept
    assert not (toy / "notebooks").exists()


def test_seeds_report_pass_rates_and_spreads(toy, capsys):
    assert book.main(["run", "1", "--seeds", "0-2", "--root", str(toy)]) == 0
    summary = json.loads((toy / "_build" / "claims" / "01-toy.seeds.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    c2 = next(c for c in summary["claims"] if c["id"] == "C2")
    assert c2["passes"] == 3 and c2["controls"][0]["fails"] == 3
    assert c2["spread"]["min"] <= c2["spread"]["mean"] <= c2["spread"]["max"]
    out = capsys.readouterr().out
    assert "3/3 pass" in out and "3/3 fail" in out


@pytest.mark.parametrize("args, message", [
    (["1", "--profile", "fast"], "parameter 'profile'"),
    (["7"], "unknown chapter"),
    (["1", "-p", "novalue"], "NAME=VALUE"),
    (["1", "--seed", str(2**64)], "parameter 'seed'"),
    (["1", "--seeds", "a-b"], "parameter 'seeds'"),
])
def test_bad_command_line_fails_at_once(toy, capsys, args, message):
    assert run(toy, *args) == 2
    assert message in capsys.readouterr().err


def test_nbval_rerun_reproduces_outputs(toy_ran):
    # the shared run was `run 1 --save --validate`, which exits 0 only if nbval's re-run matched
    assert all(r["validated"] is True for r in claims_of(toy_ran))


def test_nbval_detects_changed_outputs(toy_ran):
    toy = toy_ran
    executed = toy / "_build" / "executed" / "01-toy.ipynb"
    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("name") == "stdout":
                out["text"] = out["text"].replace("mean", "MEAN")
    nbformat.write(nb, executed)
    ok, log = book.validate(executed)
    assert not ok


def test_nbval_compares_claim_numbers_to_ten_digits_not_to_the_last_bit(toy_ran):
    """A last-bit difference in the claims JSON (LAPACK noise between processes) passes validation;
    a difference in the sixth digit fails it."""
    import math

    from gdlab.book.nbval_floats import round_floats

    assert round_floats({"a": [0.32127751053941445, 1, "x"]}) == round_floats({"a": [0.3212775105394129, 1, "x"]})
    assert round_floats([3e-17, -1e-13]) == round_floats([5e-17, 0.0]) == [0.0, 0.0]
    assert round_floats(1.0000001) != round_floats(1.0) and round_floats(2e-12) != 0.0
    toy = toy_ran
    executed = toy / "_build" / "executed" / "01-toy.ipynb"
    original = nbformat.read(executed, as_version=4)

    def edited(change):
        nb = nbformat.read(executed, as_version=4)
        hits = 0
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                record = out.get("data", {}).get("application/vnd.gdlab.claims+json")
                if record:
                    claim = record["claims"][0]
                    claim["measured"] = change(float(claim["measured"]))
                    hits += 1
        assert hits == 1
        nbformat.write(nb, executed)
        return executed

    ok, log = book.validate(edited(lambda v: math.nextafter(v, math.inf)))
    assert ok, log
    nbformat.write(original, executed)
    ok, _ = book.validate(edited(lambda v: v * (1 + 1e-6) + 1e-6))
    assert not ok


def test_book_builds_html_with_status_page_and_colab_cell(toy):
    assert book.main(["book", "--root", str(toy)]) == 0
    html = toy / "_build" / "html"
    status = (html / "status.html").read_text()
    assert "Reproduction status" in status and "C2" in status and "control" in status
    assert "Identities" in status and "I1" in status
    page = (html / "01-toy.html").read_text()
    assert "colab.research.google.com/github/" in page and "notebooks/01-toy.ipynb" in page
    first = nbformat.read(toy / "_build" / "executed" / "01-toy.ipynb", as_version=4).cells[0]
    assert book.INSTALL_TAG in first.metadata["tags"] and "google.colab" in first.source
    assert "%pip install" in first.source and book.repository_url(toy) in first.source


def test_kept_notebook_holds_the_run_parameters_in_its_parameters_cell(toy):
    assert run(toy, "1", "--seed", "4", "-p", "n=500", "--save") == 0
    nb = nbformat.read(toy / "notebooks" / "01-toy.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert not any("injected-parameters" in t for t in tags)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert "seed = 4" in params.source and "n = 500" in params.source
    assert "# normal draws for C2" not in params.source or "n = 500  " in params.source
    assert nb.metadata["gdlab"]["source_hash"] and nb.metadata["gdlab"]["params"] == {"n": 500}


def test_kept_notebook_must_match_its_source_and_code(toy_ran):
    toy = toy_ran  # after `run 1 --save`
    kept, source = toy / "notebooks" / "01-toy.ipynb", toy / "book" / "01-toy.md"
    assert book.notebook_matches_source(kept, source, toy)[0]
    assert book.main(["book", "--committed", "--no-html", "--root", str(toy)]) == 0
    source.write_text(source.read_text().replace("bins=30", "bins=31"))
    same, why = book.notebook_matches_source(kept, source, toy)
    assert not same and "bins=31" in why
    assert book.main(["check-notebooks", "--root", str(toy)]) == 1
    assert book.main(["book", "--committed", "--no-html", "--root", str(toy)]) == 2


def test_parse_parameters():
    assert book.parse_parameters(["d=20", "noise=0.1", "name=abc", "sizes=[1, 2]", "t=(1, 2)"]) == {
        "d": 20, "noise": 0.1, "name": "abc", "sizes": [1, 2], "t": [1, 2]}


def test_status_page_shows_controls_identities_and_escapes_pipes():
    from gdlab.claims import Claims

    c = Claims("01", not_reproduced={"C3": "too small here"})
    c.at_most("C1", source="a|b", statement="s", measured=0.0, bound=1.0, controls={"flow": 2.0})
    c.between("C3", source="x", statement="s", measured=5.0, lo=0, hi=1, controls={"z": 9.0})
    c.identity("I1", source="x", statement="exact", measured=0.0, bound=1e-9)
    page = book.status_page(c.records())
    assert "a\\|b" in page and "**PASS**" in page and "fails (good)" in page
    assert "1 of 1 reproductions pass; 1 declared not reproduced; 1 of 1 identities hold" in page
    assert "Declared not reproduced" in page and "**NOT REPRODUCED**" in page and "Identities" in page


# ---- the real book
def test_toc_lists_exactly_the_chapters():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters, reference = toc["parts"]
    assert [entry["file"] for entry in chapters["chapters"]] == [p.stem for p in book.chapters(ROOT)]
    assert [entry["file"] for entry in reference["chapters"]] == ["status", "bibliography", "api/index"]


def test_chapters_have_parameters_cell_and_claims_report():
    for source in book.chapters(ROOT):
        nb = book.to_notebook(source, ROOT)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, source.name
        for name in ("profile", "seed", "device"):
            assert f"{name} =" in params[0].source, (source.name, name)
        assert nb.cells[-1].source.strip() == "claims.report()", source.name


def test_no_code_cell_relies_on_a_trailing_semicolon():
    """nbval re-runs cells without storing history, and IPython then ignores a final ';': the re-run shows
    an output that the executed notebook does not have, and validation fails. End cells another way."""
    for source in book.chapters(ROOT):
        nb = book.to_notebook(source, ROOT)
        for cell in nb.cells:
            lines = [line for line in cell.source.rstrip().splitlines() if line.strip()] if cell.cell_type == "code" else []
            assert not (lines and lines[-1].rstrip().endswith(";")), (source.name, lines[-1] if lines else "")


def test_every_parameter_is_declared_in_the_first_code_cell():
    """The parameters cell lists the knobs; the next code cell declares each one (kind, range, defaults)
    in one ``rt.params(globals(), ...)`` call, so that a bad value fails before any work is done."""
    import ast

    from gdlab.book import notebooks

    for source in book.chapters(ROOT):
        nb = notebooks.read_source(source)
        cells = [c for c in nb.cells if c.cell_type == "code"]
        i = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
        names = set(notebooks.parameter_names(nb)) - {"profile", "seed", "device"}
        calls = [n for n in ast.walk(ast.parse(cells[i + 1].source))
                 if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "params"]
        assert len(calls) == 1, f"{source.name}: the first code cell must call rt.params(globals(), ...) once"
        declared = {k.arg for k in calls[0].keywords}
        assert names == declared, (source.name, sorted(names ^ declared))


def test_kept_notebooks_are_current():
    """A kept notebook whose code no longer matches the chapter source, or that was made by older
    library code, fails here: re-run it with `gdlab run CHAPTER --profile paper --save`."""
    from gdlab.book import run as runmod

    for source in book.chapters(ROOT):
        kept = ROOT / "notebooks" / f"{source.stem}.ipynb"
        if kept.exists():
            current, why = runmod.kept_is_current(ROOT, source)
            assert current, f"{kept.name}: {why}"


def test_book_runs_chapters_in_parallel_and_reports_the_worst_outcome(toy, capsys):
    source = (toy / "book" / "01-toy.md").read_text()
    assert "target = 1.0" in source
    (toy / "book" / "02-toy.md").write_text(source.replace("target = 1.0", "target = 2.0"))
    code = book.main(["book", "--root", str(toy), "--jobs", "2", "--no-html"])
    out = capsys.readouterr().out
    assert code == 1  # the second chapter's claim fails; the first still ran and passed
    assert "2 at a time" in out and "gdlab run 01-toy (exit 0" in out and "gdlab run 02-toy (exit 1" in out
    assert "FAILED chapters: 02-toy (claim)" in out
    assert [r["status"] for r in claims_of(toy)] == ["PASS", "PASS"]
    second = json.loads((toy / "_build" / "claims" / "02-toy.json").read_text())
    assert [r["status"] for r in second] == ["FAIL", "PASS"]


def test_parallel_book_starts_the_longest_chapter_first(toy, capsys, monkeypatch):
    """The order only: each `gdlab run` subprocess is replaced by one that does nothing (the test
    above runs chapters in parallel for real)."""
    import subprocess

    from gdlab.book import cli

    started = []

    def fake_run(cmd, **kwargs):
        started.append(cmd[cmd.index("run") + 1])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)

    source = (toy / "book" / "01-toy.md").read_text()
    (toy / "book" / "02-toy.md").write_text(source)
    (toy / "notebooks").mkdir(exist_ok=True)
    for stem, wall, profile in (("01-toy", 5.0, "quick"), ("02-toy", 50.0, "quick")):
        nb = nbformat.v4.new_notebook(metadata={"gdlab": {"profile": profile, "wall_time_s": wall}})
        nbformat.write(nb, toy / "notebooks" / f"{stem}.ipynb")
    sources = sorted((toy / "book").glob("0*.md"))
    assert [cli._kept_wall_time(toy, s, "quick") for s in sources] == [5.0, 50.0]
    assert [cli._kept_wall_time(toy, s, "smoke") for s in sources] == [0.0, 0.0]  # made at another profile
    assert cli._kept_wall_time(toy, toy / "book" / "09-none.md", "quick") == 0.0
    cli._run_chapters_in_parallel(toy, sources, "quick", 0, False, False, 1)
    assert "longest first: 02, 01" in capsys.readouterr().out and started == ["02-toy", "01-toy"]


def test_book_executed_builds_from_the_latest_runs_and_refuses_stale_or_other_ones(toy, toy_ran, capsys):
    """What `make test` does: `gdlab run` each chapter (as parallel make jobs), then
    `gdlab book --executed` builds the HTML from those runs without executing anything. (The
    shared run here is `run 1 --save --validate`; `make test`'s runs are plain quick runs: the
    refusals below do not depend on validation or on a kept notebook.)"""
    code = book.main(["book", "--root", str(toy), "--executed", "--no-html"])
    assert code == 2 and "MISSING" in capsys.readouterr().err  # no run yet
    toy = toy_ran  # after a run at quick
    capsys.readouterr()
    assert book.main(["book", "--root", str(toy), "--executed"]) == 0
    out = capsys.readouterr().out
    assert "executing" not in out and "01-toy" in out  # nothing executed; the run's claims are shown
    assert (toy / "_build" / "html" / "01-toy.html").exists()
    source = toy / "book" / "01-toy.md"
    text = source.read_text()
    source.write_text(text.replace("bins=30", "bins=31"))
    code = book.main(["book", "--root", str(toy), "--executed", "--no-html"])
    assert code == 2 and "STALE" in capsys.readouterr().err
    source.write_text(text)
    assert run(toy, "1", "--profile", "smoke") == 0
    code = book.main(["book", "--root", str(toy), "--executed", "--no-html"])
    assert code == 2 and "profile smoke" in capsys.readouterr().err  # the latest run is at another profile


def test_a_kept_notebook_with_an_edited_profile_runs_at_that_profile(toy_ran):
    """What the README tells Colab readers: edit `profile` in the parameters cell and run all.
    No injected cell overrides the edit, so the claims are recorded at the edited profile."""
    from nbclient import NotebookClient

    toy = toy_ran  # after `run 1 --save`
    nb = nbformat.read(toy / "notebooks" / "01-toy.ipynb", as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert 'profile = "quick"' in params.source
    params.source = params.source.replace('profile = "quick"', 'profile = "smoke"')
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(toy / "notebooks")}}).execute()
    from gdlab.book.run import read_published

    claims, _ = read_published(nb)
    assert claims and {c["profile"] for c in claims} == {"smoke"}
    assert {c["status"] for c in claims} == {"NOT JUDGED"}


def test_nbval_sanitizing_ignores_reported_timings_only():
    import re

    from gdlab.book.run import NBVAL_SANITIZE

    def clean(text):
        for rx, rep in NBVAL_SANITIZE.items():
            text = re.sub(rx, rep, text)
        return text

    a = "SmolLM2: 281 tokens generated in 64.5 s (4.4 tokens/s, batched); 625 label scorings in 108.3 s"
    b = "SmolLM2: 281 tokens generated in 61.0 s (4.6 tokens/s, batched); 625 label scorings in 99.9 s"
    assert clean(a) == clean(b)
    assert clean(a) != clean(a.replace("281 tokens", "282 tokens"))  # counts still compared
    assert clean("C1 PASS: measured 0.0633: 1.02") == "C1 PASS: measured 0.0633: 1.02"
