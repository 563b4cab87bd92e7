"""The HTML book: staging the executed notebooks with the book's pages, the "Reproduction status"
page, and the Jupyter Book 1.x build (execution off, warnings as errors)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from gdlab.book.notebooks import PipelineError
from gdlab.book.records import params_text, summary_line
from gdlab.claims import MIMETYPE, fmt, status_of

STATUS_COLUMNS = ("id", "source", "statement", "paper_value", "measured", "tolerance", "status")


def _md(value) -> str:
    text = value if isinstance(value, str) else fmt(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _measured(r: dict) -> str:
    text = _md(r.get("measured"))
    return text + (f" ({_md(r['details'])})" if r.get("details") else "")


def _table(rows: list[dict], with_controls: bool) -> list[str]:
    lines = ["| " + " | ".join(c.replace("_", " ") for c in STATUS_COLUMNS) + " |",
             "|" + "---|" * len(STATUS_COLUMNS)]
    for r in rows:
        cells = [_md(r.get(c)) if c not in ("measured", "status") else "" for c in STATUS_COLUMNS]
        cells[STATUS_COLUMNS.index("measured")] = _measured(r)
        cells[STATUS_COLUMNS.index("status")] = f"**{status_of(r)}**"
        lines.append("| " + " | ".join(cells) + " |")
        for c in (r.get("controls") or []) if with_controls else []:
            verdict = "passes (bad)" if c["passed"] else "fails (good)"
            ctl = {"measured": c["measured"], "details": c.get("details")}
            lines.append(f"| | control | {_md(c['name'])} | | {_measured(ctl)} | same criterion | {verdict} |")
    return lines


def _rates(seeds: dict | None) -> dict:
    if not seeds:
        return {}
    return {c["id"]: c for c in seeds.get("claims", [])}


def status_page(records: list[dict], seeds: dict[str, dict] | None = None) -> str:
    """The "Reproduction status" page: reproductions (with their controls), the findings declared
    not reproduced, and the identities, chapter by chapter, with each run's profile, seed, device,
    commit, versions and wall time, and the pass rates over seeds where ``gdlab run --seeds`` ran."""
    seeds = seeds or {}
    lines = ["# Reproduction status", "",
             f"As measured in the runs this book was built from: **{summary_line(records)}**. "
             "A reproduction passes only when its measurement passes and every control (the same measurement "
             "under the condition the paper rules out) fails. `gdlab claims` prints this in a terminal.", ""]
    chapters = list(dict.fromkeys(r.get("chapter", "") for r in records))
    for stem in chapters:
        rows = [r for r in records if r.get("chapter") == stem]
        r0 = rows[0]
        versions = ", ".join(f"{k} {v}" for k, v in (r0.get("versions") or {}).items())
        lines += [f"## {stem}", "",
                  f"{summary_line(rows)}. Run: profile `{r0.get('profile')}`, seed {r0.get('seed')}, "
                  f"{params_text(r0)}, device {r0.get('device')}, commit `{(r0.get('commit') or '-')[:12]}`, "
                  f"{versions or 'versions not recorded'}, wall time {fmt(r0.get('wall_time_s'))} s.", ""]
        groups = [("Reproductions", [r for r in rows if r.get("kind", "reproduction") == "reproduction"
                                     and not r.get("not_reproduced")], True),
                  ("Declared not reproduced", [r for r in rows if r.get("not_reproduced")], True),
                  ("Identities (exact properties of our code)", [r for r in rows if r.get("kind") == "identity"],
                   False)]
        for title, group, with_controls in groups:
            if group:
                lines += [f"**{title}**", "", ":::{div} full-width", ""] + _table(group, with_controls) + ["", ":::", ""]
        rates = _rates(seeds.get(stem))
        if rates:
            summary = seeds[stem]
            lines += [f"**Over seeds {', '.join(map(str, summary.get('seeds', [])))}** "
                      f"(profile `{summary.get('profile')}`, {params_text(summary)})", "",
                      "| id | passes | controls that fail |", "|---|---|---|"]
            for cid, c in rates.items():
                ctl = "; ".join(f"{_md(x['name'])}: {x['fails']}/{x['runs']}" for x in c["controls"]) or "-"
                lines.append(f"| {cid} | {c['passes']}/{c['runs']} | {ctl} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def stage_notebook(source: Path, target: Path) -> None:
    """Copy an executed notebook for the HTML build, without the claims JSON (the table's HTML
    rendering stays; Sphinx has no renderer for the JSON and would warn)."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            out.get("data", {}).pop(MIMETYPE, None)
    nbformat.write(nb, target)


def kept_seeds(root: Path) -> dict[str, dict]:
    """The kept ``notebooks/<stem>.seeds.json`` summaries, by chapter."""
    out = {}
    for path in sorted((root / "notebooks").glob("*.seeds.json")):
        try:
            out[path.name.removesuffix(".seeds.json")] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def build_html(root: Path, notebooks: list[Path], records: list[dict], strict: bool = True) -> Path:
    """Stage the executed notebooks with the book's pages and build the HTML with Jupyter Book
    (execution off). Returns the HTML folder."""
    stage = root / "_build" / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    for path in (root / "book").iterdir():
        if path.is_file() and not re.match(r"\d\d-.*\.md$", path.name):
            shutil.copy2(path, stage / path.name)
    # chapters may show library code with ```{literalinclude} /src/gdlab/<module>.py``` (a path
    # from the book's root, which is the stage)
    if (root / "src").is_dir():
        shutil.copytree(root / "src", stage / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for nb in notebooks:
        stage_notebook(nb, stage / nb.name)
    (stage / "status.md").write_text(status_page(records, kept_seeds(root)))
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(stage),
           "--builder", "html", "--keep-going"]
    if strict:
        cmd += ["-W", "-n"]
    print("building HTML: jupyter-book", " ".join(cmd[3:]))
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-8000:], proc.stderr[-4000:])
        raise PipelineError("jupyter-book build failed (warnings are errors)")
    html = stage / "_build" / "html"
    out = root / "_build" / "html"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(html, out)
    print(f"HTML: {out}/index.html")
    return out
