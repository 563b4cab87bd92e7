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

__all__ = ["STATUS_COLUMNS", "LEGEND", "chapter_titles", "API_ORDER", "api_modules", "api_pages", "api_toc_sections", "status_page",
           "stage_toc", "split_figure_cells", "stage_notebook", "kept_seeds", "seeds_is_current", "seeds_state", "stage",
           "build_html"]

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


def _spread_text(spread) -> str:
    """``{"min", "mean", "max"}`` (or a dict of them) as "min .. max"."""
    if not spread:
        return "-"
    if "min" in spread and not isinstance(spread["min"], dict):
        return f"{fmt(spread['min'])} .. {fmt(spread['max'])}"
    return "; ".join(f"{k}: {_spread_text(v)}" for k, v in spread.items())


def _seeds_text(seeds: list) -> str:
    seeds = sorted(int(x) for x in seeds)
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _summary(rows: list[dict]) -> str:
    """:func:`gdlab.book.records.summary_line` without the groups a chapter does not have."""
    text = summary_line(rows)
    return text.replace("; 0 of 0 identities hold", "").replace("0 of 0 reproductions pass; ", "")


def _commit(r: dict) -> str:
    return f"commit `{r['commit'][:12]}`" if r.get("commit") else "commit not recorded"


def _wall(r0: dict) -> str:
    return f"{fmt(r0['wall_time_s'])} s" if r0.get("wall_time_s") else "time not recorded"


def _rate_summary(stem: str, summary: dict | None) -> str:
    """"seeds 0-5: all 14 claims pass at every seed" or "seeds 0-5: C3 5/6; the other 13 pass at all 6"."""
    rates = _rates(summary)
    if not rates:
        return f"not measured yet (`gdlab run {stem} --seeds 0-5 --save`)"
    full = [c for c in rates.values() if c["passes"] == c["runs"]]
    short = [c for c in rates.values() if c["passes"] != c["runs"]]
    runs = max(c["runs"] for c in rates.values())
    text = f"seeds {_seeds_text(summary.get('seeds', []))}: "
    if not short:
        return text + f"all {len(full)} claims pass at every seed"
    parts = [f"{c['id']} {c['passes']}/{c['runs']}" + (" (declared)" if c.get("not_reproduced") else "")
             for c in short]
    return text + "; ".join(parts) + (f"; the other {len(full)} pass at all {runs}" if full else "")


LEGEND = [
    "**PASS**: the measurement meets the tolerance fixed before the run, and every control (the same "
    "measurement under the condition the paper rules out) fails it.",
    "**FAIL**: the measurement misses the tolerance, or a control passes too (then the check cannot tell "
    "the effect from its absence). A failed claim fails the book's build.",
    "**NOT REPRODUCED**: declared before the run, with its reason; it is shown and does not fail the build.",
    "**UNEXPECTED PASS**: a claim declared not reproduced passed; its declaration should go.",
    "**Identities** are exact properties of the book's own code (a construction equals what it claims to "
    "compute); they have no control and are listed apart from the reproductions.",
]


def chapter_titles(root: Path) -> dict[str, str]:
    """``{stem: title}`` from the first heading of every ``book/NN-*.md``."""
    out = {}
    for path in sorted((root / "book").glob("[0-9][0-9]-*.md")):
        m = re.search(r"^#\s+(.+)$", path.read_text(), re.MULTILINE)
        out[path.stem] = m.group(1).strip() if m else path.stem
    return out


def status_page(records: list[dict], seeds: dict[str, dict] | None = None,
                states: dict[str, tuple[bool, str]] | None = None,
                titles: dict[str, str] | None = None) -> str:
    """The "Reproduction status" page (MyST): an overview table of the chapters, a legend, then per
    chapter the run (profile, seed, parameters, device, commit, versions, wall time), the
    reproductions with their controls, the findings declared not reproduced, the identities, and
    the pass rates over seeds from the kept ``gdlab run --seeds`` summaries (``seeds``), marked
    stale where ``states`` says the code changed since. ``titles`` (by chapter stem) name and link
    the chapters."""
    seeds, states, titles = seeds or {}, states or {}, titles or {}
    chapters = list(dict.fromkeys(r.get("chapter", "") for r in records))
    lines = ["# Reproduction status", "",
             "Every claim of the book, as measured in the runs this book was built from, and how often it "
             f"passes when the chapter is rerun at other seeds. In all: **{_summary(records)}**. "
             "`gdlab claims` prints the same table in a terminal, and `gdlab run NN --seeds 0-5` reruns a "
             "chapter at six seeds.", ""]
    if chapters:
        lines += [":::{div} full-width", "", "| chapter | claims at the book's run | over seeds | run |", "|---|---|---|---|"]
        for stem in chapters:
            rows = [r for r in records if r.get("chapter") == stem]
            r0 = rows[0]
            name = f"{{ref}}`{_md(titles.get(stem, stem))} <status-{stem}>`"
            stale = " (stale)" if stem in states and not states[stem][0] else ""
            lines.append(f"| {name} | {_md(_summary(rows))} | {_md(_rate_summary(stem, seeds.get(stem)))}{stale} | "
                         f"`{r0.get('profile')}`, seed {r0.get('seed')}, {_md(str(r0.get('device')))}, "
                         f"{_wall(r0)} |")
        lines += ["", ":::", ""]
    lines += [f"- {item}" for item in LEGEND] + [""]
    for stem in chapters:
        rows = [r for r in records if r.get("chapter") == stem]
        r0 = rows[0]
        versions = ", ".join(f"{k} {v}" for k, v in (r0.get("versions") or {}).items())
        title = titles.get(stem, stem)
        lines += [f"(status-{stem})=", f"## {title}", ""]
        if stem in titles:
            lines += [f"The chapter: {{doc}}`{stem}`. {_summary(rows)}.", ""]
        else:
            lines += [f"{_summary(rows)}.", ""]
        lines += [f"Run: profile `{r0.get('profile')}`, seed {r0.get('seed')}, parameters: {_md(params_text(r0))}, "
                  f"device {_md(str(r0.get('device')))}, {_commit(r0)}, "
                  f"{_md(versions) or 'versions not recorded'}, wall time: {_wall(r0)}.", ""]
        groups = [("Reproductions", [r for r in rows if r.get("kind", "reproduction") == "reproduction"
                                     and not r.get("not_reproduced")], True),
                  ("Declared not reproduced", [r for r in rows if r.get("not_reproduced")], True),
                  ("Identities (exact properties of our code)", [r for r in rows if r.get("kind") == "identity"],
                   False)]
        for heading, group, with_controls in groups:
            if group:
                lines += [f"**{heading}**", "", ":::{div} full-width", ""] + _table(group, with_controls) + ["", ":::", ""]
                if heading == "Declared not reproduced":
                    lines += [f"- {r['id']}: {_md(r['not_reproduced'])}" for r in group] + [""]
        rates = _rates(seeds.get(stem))
        if rates:
            summary = seeds[stem]
            current, why = states.get(stem, (True, ""))
            lines += [f"**Over seeds {_seeds_text(summary.get('seeds', []))}** (profile `{summary.get('profile')}`, "
                      f"parameters: {_md(params_text(summary))}, {_commit(summary)})", ""]
            if not current:
                lines += [":::{warning}", f"These pass rates are stale: {why}. Rerun "
                          f"`gdlab run {stem} --seeds {_seeds_text(summary.get('seeds', []))} --save`.", ":::", ""]
            lines += [":::{div} full-width", "", "| id | statement | passes | measured (min .. max) | controls that fail |",
                      "|---|---|---|---|---|"]
            for cid, c in rates.items():
                ctl = "; ".join(f"{_md(x['name'])}: {x['fails']}/{x['runs']}" for x in c["controls"]) or "-"
                note = " (declared not reproduced)" if c.get("not_reproduced") else ""
                lines.append(f"| {cid} | {_md(c.get('statement') or '')} | {c['passes']}/{c['runs']}{note} | "
                             f"{_md(_spread_text(c.get('spread')))} | {ctl} |")
            errors = summary.get("errors") or {}
            lines += ["", ":::", ""] + [f"- seed {s}: the run did not complete: {_md(e)}" for s, e in errors.items()]
            lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the API reference
#: The order of the API pages (one per top-level module or subpackage of gdlab); anything not
#: listed here follows in alphabetical order, so a new module gets its page without an edit.
API_ORDER = ("runtime", "claims", "notebook", "plotting", "data", "train", "hessian", "sweep",
             "icl", "implicit", "double_descent", "stability", "prompts", "devicecheck", "book")


def api_modules(src: Path) -> dict[str, list[str]]:
    """``{top-level name: [dotted module names]}`` of the public modules of ``<src>/gdlab`` (files
    and folders whose names start with ``_`` are private), in :data:`API_ORDER`."""
    pkg = src / "gdlab"
    groups: dict[str, list[str]] = {}
    for path in sorted(pkg.iterdir()):
        name = path.stem if path.suffix == ".py" else path.name
        if name.startswith("_") or not (path.suffix == ".py" or (path / "__init__.py").exists()):
            continue
        if path.is_dir():
            subs = sorted(p.stem for p in path.glob("*.py") if not p.stem.startswith("_"))
            subs += sorted(p.name for p in path.iterdir() if (p / "__init__.py").exists()
                           and not p.name.startswith("_"))
            groups[name] = [f"gdlab.{name}"] + [f"gdlab.{name}.{s}" for s in subs]
        else:
            groups[name] = [f"gdlab.{name}"]
    rank = {n: i for i, n in enumerate(API_ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def _first_line(module: str, src: Path) -> str:
    """The first sentence of a module's docstring, read from its source (no import)."""
    import ast

    parts = module.split(".")
    path = src.joinpath(*parts)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    return first


def _own_members(package: str, src: Path) -> list[str]:
    """The public names that a package's ``__init__.py`` itself defines (functions, classes,
    assignments; those in its ``__all__`` where it has one), read from its source (no import).
    Names it only re-exports are documented in their own modules."""
    import ast

    tree = ast.parse(src.joinpath(*package.split("."), "__init__.py").read_text())
    defined, listed = [], None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if "__all__" in names and isinstance(node.value, (ast.List, ast.Tuple)):
                listed = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
            defined += [n for n in names if not n.startswith("_")]
    return [n for n in defined if not n.startswith("_") and (listed is None or n in listed)]


def api_pages(src: Path) -> dict[str, str]:
    """The API part of the book: ``{"api/index.md": ..., "api/<name>.md": ...}``, one page per
    top-level module or subpackage, each documenting its modules with Sphinx autodoc (members
    as listed in ``__all__``) after an autosummary table."""
    groups = api_modules(src)
    pages = {}
    index = ["# API reference", "",
             "The library behind the chapters, `gdlab`, generated from its docstrings. The chapters "
             "call these functions; each page documents one module or subpackage.", "",
             "```{eval-rst}", ".. automodule:: gdlab", "   :no-members:", "", ".. autosummary::", ""]
    index += [f"   {mods[0].removeprefix('gdlab.')}" for mods in groups.values()]
    index += ["```", ""]
    pages["api/index.md"] = "\n".join(index)
    for name, mods in groups.items():
        lines = [f"# {mods[0]}", ""]
        package, members = mods[0], mods[1:]
        own = _own_members(package, src) if members else []
        options = (f"   :members: {', '.join(own)}" if own else "   :no-members:") if members else \
            "   :members:\n   :undoc-members:"
        lines += ["```{eval-rst}", f".. automodule:: {package}", options, "```", ""]
        if members:
            lines += ["```{eval-rst}", ".. autosummary::", ""]
            lines += [f"   {m.removeprefix(package + '.')}" for m in members] + ["```", ""]
            for m in members:
                lines += [f"## {m}", "", "```{eval-rst}", f".. automodule:: {m}", "   :members:",
                          "   :undoc-members:", "```", ""]
        pages[f"api/{name}.md"] = "\n".join(lines)
    return pages


def api_toc_sections(src: Path) -> list[dict]:
    """The ``sections`` of the ``api/index`` entry of the staged ``_toc.yml``."""
    return [{"file": f"api/{name}"} for name in api_modules(src)]


def stage_toc(toc_text: str, src: Path) -> str:
    """``_toc.yml`` with the generated API pages as the sections of its ``api/index`` entry."""
    import yaml

    toc = yaml.safe_load(toc_text)
    entries = list(toc.get("chapters") or []) + [c for p in toc.get("parts") or [] for c in p.get("chapters") or []]
    for entry in entries:
        if isinstance(entry, dict) and entry.get("file") == "api/index":
            entry["sections"] = api_toc_sections(src)
    return yaml.safe_dump(toc, sort_keys=False)


def _is_image(output) -> bool:
    return output.get("output_type") in ("display_data", "execute_result") and any(
        k.startswith("image/") for k in output.get("data", {}))


def split_figure_cells(nb) -> None:
    """myst-nb wraps EVERY displayed output of a cell with a ``mystnb: figure`` option in a figure
    with that caption and label, so a figure cell that also shows a value (a claim's repr, a table)
    would declare its label twice. Keep the image (and printed text, and glue data) in the figure
    cell, and move its other displayed outputs into an output-only cell right after it."""
    import nbformat

    cells = []
    for cell in nb.cells:
        cells.append(cell)
        fig = (cell.get("metadata", {}).get("mystnb") or {}).get("figure") if cell.get("cell_type") == "code" else None
        if not fig:
            continue
        keep, moved, seen_image = [], [], False
        for out in cell.get("outputs", []):
            shown = out.get("output_type") in ("display_data", "execute_result") and \
                "scrapbook" not in out.get("metadata", {})
            if shown and not (_is_image(out) and not seen_image):
                moved.append(out)
            else:
                seen_image |= _is_image(out)
                keep.append(out)
        if moved:
            cell["outputs"] = keep
            extra = nbformat.v4.new_code_cell("# the other outputs of the figure cell above", outputs=moved,
                                              metadata={"tags": ["remove-input"]})  # myst-nb skips empty cells
            extra["id"] = (str(cell.get("id") or "cell") + "-outputs")[-64:]
            cells.append(extra)
    nb.cells = cells


def stage_notebook(source: Path, target: Path) -> None:
    """Copy an executed notebook for the HTML build: without the claims JSON (the table's HTML
    rendering stays; Sphinx has no renderer for the JSON and would warn), and with each figure
    cell showing only its figure (:func:`split_figure_cells`)."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            out.get("data", {}).pop(MIMETYPE, None)
    split_figure_cells(nb)
    nbformat.write(nb, target)


def seeds_is_current(root: Path, stem: str, summary: dict) -> tuple[bool, str]:
    """Whether a kept ``notebooks/<stem>.seeds.json`` summary was made by the current chapter source
    and library code (its recorded source hash), as :func:`gdlab.book.run.kept_is_current` checks
    a kept notebook."""
    from gdlab.book.records import source_hash

    source = root / "book" / f"{stem}.md"
    if not source.exists():
        return False, f"no chapter source book/{stem}.md"
    if not summary.get("source_hash"):
        return False, "it records no single source hash (made before hashes were kept, or its seeds ran different code)"
    if source_hash(source, summary.get("modules") or []) != summary["source_hash"]:
        return False, "the chapter or the library code it uses changed since it was made"
    return True, ""


def seeds_state(root: Path) -> dict[str, tuple[bool, str]]:
    """``{stem: (current, why)}`` for every kept seeds summary."""
    return {stem: seeds_is_current(root, stem, summary) for stem, summary in kept_seeds(root).items()}


def kept_seeds(root: Path) -> dict[str, dict]:
    """The kept ``notebooks/<stem>.seeds.json`` summaries, by chapter."""
    out = {}
    for path in sorted((root / "notebooks").glob("*.seeds.json")):
        try:
            out[path.name.removesuffix(".seeds.json")] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def stage(root: Path, notebooks: list[Path], records: list[dict]) -> Path:
    """Lay out the book's sources for Jupyter Book in ``_build/stage``: the configuration, the pages
    of ``book/`` (not the chapter sources), the executed notebooks, a copy of ``src/``, the
    generated API pages (when ``_toc.yml`` lists ``api/index``) and the status page."""
    stage = root / "_build" / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    shutil.copy2(root / "_config.yml", stage / "_config.yml")
    toc_text = (root / "_toc.yml").read_text()
    for path in (root / "book").iterdir():
        if path.is_file() and not re.match(r"\d\d-.*\.md$", path.name):
            shutil.copy2(path, stage / path.name)
    # chapters may show library code with ```{literalinclude} /src/gdlab/<module>.py``` (a path
    # from the book's root, which is the stage)
    if (root / "src").is_dir():
        shutil.copytree(root / "src", stage / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        if "api/index" in toc_text:
            for name, text in api_pages(root / "src").items():
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                (stage / name).write_text(text)
            toc_text = stage_toc(toc_text, root / "src")
    (stage / "_toc.yml").write_text(toc_text)
    for nb in notebooks:
        stage_notebook(nb, stage / nb.name)
    titles = {k: v for k, v in chapter_titles(root).items() if k in toc_text}
    (stage / "status.md").write_text(status_page(records, kept_seeds(root), seeds_state(root), titles))
    return stage


def _jupyter_book(staged: Path, builder: str, strict: bool, cwd: Path) -> None:
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(staged),
           "--builder", builder, "--keep-going"]
    if strict:
        cmd += ["-W", "-n"]
    print("building:", "jupyter-book", " ".join(cmd[3:]))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-8000:], proc.stderr[-4000:])
        raise PipelineError(f"jupyter-book {builder} build failed (warnings are errors)")


def build_html(root: Path, notebooks: list[Path], records: list[dict], strict: bool = True) -> Path:
    """Stage the executed notebooks with the book's pages and build the HTML with Jupyter Book
    (execution off). With ``strict``, warnings and unresolved references (``-W -n``) are errors,
    and Sphinx's linkcheck then checks the book's links to its own files, offline (links to the
    web are ignored in ``_config.yml``). Returns the HTML folder, ``_build/html``."""
    staged = stage(root, notebooks, records)
    _jupyter_book(staged, "html", strict, root)
    html = staged / "_build" / "html"
    if strict:
        _jupyter_book(staged, "linkcheck", strict, root)  # reuses the environment: seconds
        report = root / "_build" / "linkcheck"
        report.mkdir(parents=True, exist_ok=True)
        for name in ("output.txt", "output.json"):  # Jupyter Book writes them into the HTML folder
            if (html / name).exists():
                shutil.move(str(html / name), str(report / name))
    out = root / "_build" / "html"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(html, out)
    print(f"HTML: {out}/index.html")
    return out
