"""The HTML book's generated pages and staging: the status page (reproductions with controls,
declared not reproduced, identities apart, each run's metadata, pass rates over seeds and their
staleness), figure cells, and the staged table of contents."""
import json
from pathlib import Path

import nbformat

from gdlab.book import records, site
from gdlab.claims import Claims

ROOT = Path(__file__).resolve().parents[1]


def chapter_records():
    c = Claims("01-x", not_reproduced={"C3": "needs the paper's width"})
    c.at_most("C1", source="Cohen et al. 2021, Fig. 2", statement="gap|small", measured=0.01, bound=0.1,
              paper_value="about 0", controls={"gradient flow": 0.5})
    c.between("C3", source="x", statement="s", measured=5.0, lo=0, hi=1, controls={"z": 9.0})
    c.identity("I1", source="x", statement="exact", measured=0.0, bound=1e-9)
    meta = {"chapter": "01-x", "profile": "quick", "seed": 0, "params": {}, "commit": "0123456789abcdef",
            "versions": {"torch": "2.13.0", "numpy": "2.1"}, "wall_time_s": 104.6, "device": "cpu"}
    return [{**r, **meta} for r in c.records()]


def seeds_summary(source_hash="h"):
    runs = {s: chapter_records() for s in range(6)}
    runs[3][0] = {**runs[3][0], "passed": False, "status": "FAIL", "measurement_passed": False}
    return records.seeds_summary("01-x", runs, {}, {"profile": "quick", "params": {}, "commit": "abc",
                                                    "modules": [], "source_hash": source_hash})


def test_status_page_shows_every_group_and_the_run():
    page = site.status_page(chapter_records(), titles={"01-x": "1. A chapter"})
    assert page.startswith("# Reproduction status")
    assert "| {ref}`1. A chapter <status-01-x>` |" in page and "(status-01-x)=\n## 1. A chapter" in page
    assert "{doc}`01-x`" in page
    assert "**Reproductions**" in page and "**Declared not reproduced**" in page
    assert "**Identities (exact properties of our code)**" in page
    assert "- C3: needs the paper's width" in page and "gap\\|small" in page
    assert "| | control | gradient flow | | 0.5 | same criterion | fails (good) |" in page
    for text in ("profile `quick`", "seed 0", "device cpu", "commit `0123456789ab`", "torch 2.13.0",
                 "wall time: 105 s", "parameters: defaults"):
        assert text in page, text
    assert "**PASS**" in page and "**UNEXPECTED PASS**" in page  # the legend


def test_status_page_shows_pass_rates_over_seeds_and_marks_them_stale():
    page = site.status_page(chapter_records(), {"01-x": seeds_summary()}, {"01-x": (True, "")})
    assert "**Over seeds 0-5**" in page
    assert "| C1 | gap\\|small | 5/6 | 0.01 .. 0.01 | gradient flow: 6/6 |" in page
    assert "C1 5/6" in page and "stale" not in page
    page = site.status_page(chapter_records(), {"01-x": seeds_summary()}, {"01-x": (False, "the code changed")})
    assert ":::{warning}\nThese pass rates are stale: the code changed." in page and "(stale)" in page


def test_kept_seeds_summary_is_stale_when_the_chapter_or_its_code_changes(tmp_path):
    source = tmp_path / "book" / "01-x.md"
    source.parent.mkdir()
    source.write_text("# 1. X\n")
    (tmp_path / "notebooks").mkdir()
    summary = seeds_summary(records.source_hash(source, []))
    (tmp_path / "notebooks" / "01-x.seeds.json").write_text(json.dumps(summary))
    assert site.seeds_state(tmp_path) == {"01-x": (True, "")}
    source.write_text("# 1. X, edited\n")
    current, why = site.seeds_is_current(tmp_path, "01-x", summary)
    assert not current and "changed" in why
    current, why = site.seeds_is_current(tmp_path, "01-x", {**summary, "source_hash": None})
    assert not current and "no single source hash" in why


def test_kept_seeds_summaries_are_current():
    """A kept notebooks/<stem>.seeds.json made by older code fails here: rerun
    `gdlab run CHAPTER --seeds 0-5 --save`."""
    for stem, (current, why) in site.seeds_state(ROOT).items():
        assert current, f"notebooks/{stem}.seeds.json: {why}"


def test_a_figure_cell_keeps_only_its_figure():
    png = nbformat.from_dict({"output_type": "display_data", "metadata": {},
                              "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}})
    glued = nbformat.from_dict({"output_type": "display_data", "data": {"application/papermill.record/text/plain": "1"},
                                "metadata": {"scrapbook": {"name": "x", "mime_prefix": "application/papermill.record/"}}})
    result = nbformat.from_dict({"output_type": "execute_result", "execution_count": 1, "metadata": {},
                                 "data": {"text/plain": "C2 PASS"}})
    text = nbformat.from_dict({"output_type": "stream", "name": "stdout", "text": "hi\n"})
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plt.show()", outputs=[text, glued, png, result],
                                     metadata={"mystnb": {"figure": {"caption": "c", "name": "fig-a"}}})
    nb.cells = [cell, nbformat.v4.new_code_cell("x = 1")]
    site.split_figure_cells(nb)
    assert [o["output_type"] for o in nb.cells[0].outputs] == ["stream", "display_data", "display_data"]
    assert nb.cells[1].outputs == [result] and nb.cells[1].metadata["tags"] == ["remove-input"]
    assert nb.cells[1].id == cell.id + "-outputs" and len(nb.cells) == 3
    nbformat.validate(nb)


def test_chapter_titles_come_from_the_sources():
    titles = site.chapter_titles(ROOT)
    assert list(titles) == [p.stem for p in sorted((ROOT / "book").glob("[0-9][0-9]-*.md"))]
    assert all(t and not t.startswith("#") for t in titles.values())


def test_figure_format_is_a_no_op_outside_ipython():
    import subprocess
    import sys

    # in a fresh interpreter: an earlier test in this process may have started an IPython shell
    code = "from gdlab.notebook import figure_format; print(figure_format())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # a script is not an IPython kernel; inside one it sets "retina"


def test_an_unexpected_pass_asks_for_every_seed_before_the_declaration_goes():
    from gdlab.book.records import summary_line

    rows = [{"id": "C1", "status": "PASS", "passed": True},
            {"id": "C8", "status": "UNEXPECTED PASS", "passed": True, "not_reproduced": "why"}]
    text = summary_line(rows)
    assert text.startswith("1 of 1 reproductions pass; 1 declared not reproduced (C8 passes in this run;")
    assert "every seed" in text and "--seeds" in text
