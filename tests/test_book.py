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


def test_run_writes_claims_json_in_the_contract_format(toy, capsys):
    assert run(toy, "1", "--seed", "3") == 0
    records = json.loads((toy / "_build" / "claims" / "01-toy.json").read_text())
    assert [r["id"] for r in records] == ["C1", "C2"]
    for r in records:
        for key in ("id", "source", "statement", "paper_value", "measured", "tolerance", "passed",
                    "profile", "seed", "device", "wall_time_s"):
            assert key in r, key
        assert r["passed"] is True and r["seed"] == 3 and r["profile"] == "quick"
    out = capsys.readouterr().out
    assert "PASS" in out and "C2" in out


def test_failed_claim_exits_nonzero_and_prints_the_table(toy, capsys):
    assert run(toy, "01-toy", "-p", "target=2.0") == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "ClaimFailure" in out
    records = json.loads((toy / "_build" / "claims" / "01-toy.json").read_text())
    assert [r["passed"] for r in records] == [False, True]


def test_bad_chapter_parameter_names_the_parameter(toy, capsys):
    assert run(toy, "1", "-p", "target='abc'") == 1
    out = capsys.readouterr().out
    assert "parameter 'target'" in out and "expected a number" in out


@pytest.mark.parametrize("args, message", [
    (["1", "--profile", "fast"], "parameter 'profile'"),
    (["7"], "unknown chapter"),
    (["1", "-p", "novalue"], "NAME=VALUE"),
])
def test_bad_command_line_fails_at_once(toy, capsys, args, message):
    assert run(toy, *args) == 2
    assert message in capsys.readouterr().err


def test_nbval_rerun_reproduces_outputs(toy):
    assert run(toy, "1", "--validate") == 0


def test_nbval_detects_changed_outputs(toy):
    assert run(toy, "1") == 0
    executed = toy / "_build" / "executed" / "01-toy.ipynb"
    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("name") == "stdout":
                out["text"] = out["text"].replace("mean", "MEAN")
    nbformat.write(nb, executed)
    ok, log = book.validate(executed)
    assert not ok


def test_book_builds_html_with_status_page_and_colab_cell(toy):
    assert book.main(["book", "--root", str(toy)]) == 0
    html = toy / "_build" / "html"
    status = (html / "status.html").read_text()
    assert "Reproduction status" in status and "C2" in status
    page = (html / "01-toy.html").read_text()
    assert "colab.research.google.com/github/" in page and "notebooks/01-toy.ipynb" in page
    first = nbformat.read(toy / "_build" / "executed" / "01-toy.ipynb", as_version=4).cells[0]
    assert book.INSTALL_TAG in first.metadata["tags"] and "google.colab" in first.source
    assert "%pip install" in first.source and book.repository_url(toy) in first.source


def test_kept_notebook_must_match_its_source(toy):
    assert run(toy, "1", "--save") == 0
    kept, source = toy / "notebooks" / "01-toy.ipynb", toy / "book" / "01-toy.md"
    assert book.notebook_matches_source(kept, source, toy)[0]
    assert book.main(["book", "--committed", "--no-html", "--root", str(toy)]) == 0
    source.write_text(source.read_text().replace("bins=30", "bins=31"))
    same, why = book.notebook_matches_source(kept, source, toy)
    assert not same and "bins=31" in why
    assert book.main(["check-notebooks", "--root", str(toy)]) == 1
    assert book.main(["book", "--committed", "--no-html", "--root", str(toy)]) == 2


def test_parse_parameters():
    assert book.parse_parameters(["d=20", "noise=0.1", "name=abc", "sizes=[1, 2]"]) == {
        "d": 20, "noise": 0.1, "name": "abc", "sizes": [1, 2]}


def test_status_page_escapes_pipes():
    page = book.status_page([{"chapter": "01", "id": "C1", "source": "a|b", "statement": "s", "paper_value": 1.0,
                              "measured": 1.0, "tolerance": "t", "passed": True, "profile": "quick",
                              "device": "cpu"}])
    assert "a\\|b" in page and "**PASS**" in page and "1 of 1 pass" in page


# ---- the real book
def test_toc_lists_exactly_the_chapters():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = [entry["file"] for entry in toc["chapters"]]
    assert listed[-1] == "status"
    assert listed[:-1] == [p.stem for p in book.chapters(ROOT)]


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


def test_kept_paper_notebooks_match_their_sources():
    """A kept (paper-profile) notebook whose code no longer matches the chapter source fails here:
    re-run it with `gdlab run CHAPTER --profile paper --save`."""
    for source in book.chapters(ROOT):
        kept = ROOT / "notebooks" / f"{source.stem}.ipynb"
        if kept.exists():
            same, why = book.notebook_matches_source(kept, source, ROOT)
            assert same, f"{kept.name}: {why}"
