"""The book pipeline and the ``gdlab`` command.

    gdlab run CHAPTER [--profile quick|paper] [--seed N] [-p NAME=VALUE ...] [--validate] [--save]
    gdlab book [--profile ...] [--seed N] [--validate] [--committed] [--no-html]
    gdlab claims
    gdlab check-notebooks

A chapter is a MyST-markdown Jupytext notebook ``book/NN-name.md`` (the only source of truth).
``run`` converts it with jupytext, prepends the Colab install cell, executes it with papermill
at a profile and seed, reads the claims the chapter published, writes
``_build/claims/<stem>.json`` and prints the claims table; with ``--validate`` it re-runs the
executed notebook under nbval and requires identical sanitized outputs. ``--save`` keeps the
executed notebook as ``notebooks/<stem>.ipynb``, the copy the online book and Colab show.
``book`` does this for every chapter and builds the Jupyter Book 1.x HTML from the executed
notebooks, with execution off in that build. Every command fails loudly: a cell error, a
failed claim, a chapter without claims or a validation mismatch gives a non-zero exit.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gdlab.claims import MIMETYPE, table_text

STATUS_COLUMNS = ("chapter", "id", "source", "statement", "paper_value", "measured", "tolerance", "status",
                  "profile", "device")
INSTALL_TAG = "gdlab-colab-install"
# nbval compares every text output exactly after these substitutions (regex -> replacement).
NBVAL_SANITIZE = {
    r"0x[0-9a-fA-F]+": "0xADDRESS",  # object reprs
    r"\d+(\.\d+)?(it/s|s/it)": "RATE",  # progress-bar rates printed by third-party libraries
    r"\[\d\d:\d\d<\d\d:\d\d": "[ELAPSED<REMAINING",
}


class PipelineError(RuntimeError):
    """A chapter failed: a cell error, a failed claim, missing claims or a validation mismatch."""


# ---------------------------------------------------------------- locating things
def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder above ``start`` holding ``_toc.yml`` and ``book/``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").exists() and (folder / "book").is_dir():
            return folder
    raise PipelineError(f"no book found above {here}: run gdlab from the repository (it needs _toc.yml and book/)")


def chapters(root: Path) -> list[Path]:
    """The chapter sources, ``book/NN-name.md``, in order."""
    return sorted(p for p in (root / "book").glob("[0-9][0-9]-*.md"))


def resolve_chapter(root: Path, name: str) -> Path:
    """A chapter by file stem (``01-icl-as-gd``), number (``1``, ``01``) or path (a draft too)."""
    if name.endswith(".md") and Path(name).is_file():
        return Path(name).resolve()
    candidates = chapters(root)
    stem = Path(name).stem
    for path in candidates:
        if path.stem == stem or (stem.isdigit() and path.stem.split("-")[0] == f"{int(stem):02d}"):
            return path
    known = ", ".join(p.stem for p in candidates) or "none"
    raise PipelineError(f"unknown chapter {name!r}; known chapters: {known}")


def repository_url(root: Path) -> str:
    """The repository URL from ``_config.yml`` (used by the Colab install cell)."""
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text())
    return config["repository"]["url"].rstrip("/")


# ---------------------------------------------------------------- conversion
def install_cell_source(root: Path) -> str:
    url = repository_url(root)
    return ("# Running in Colab? This installs gdlab (with the book's optional extras); elsewhere it does nothing.\n"
            "import sys\n"
            "if \"google.colab\" in sys.modules:\n"
            f"    %pip install -q \"gdlab[prompts] @ git+{url}\"")


def to_notebook(source: Path, root: Path):
    """Convert a chapter with jupytext and prepend the Colab install cell."""
    import jupytext
    import nbformat

    nb = jupytext.read(source)
    tags = [c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "code"]
    if not any("parameters" in t for t in tags):
        raise PipelineError(f"{source.name}: no code cell is tagged 'parameters'")
    cell = nbformat.v4.new_code_cell(install_cell_source(root))
    cell.metadata["tags"] = [INSTALL_TAG, "remove-cell"]
    nb.cells.insert(0, cell)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.pop("jupytext", None)
    return nb


def code_cells(nb) -> list[str]:
    """The code a notebook runs, without the Colab cell and papermill's injected parameters."""
    skip = {INSTALL_TAG, "injected-parameters"}
    return [c.source.strip() for c in nb.cells
            if c.cell_type == "code" and not skip & set(c.metadata.get("tags", []))]


def notebook_matches_source(notebook: Path, source: Path, root: Path) -> tuple[bool, str]:
    """Whether a kept executed notebook still runs exactly the code of its source."""
    import nbformat

    kept = code_cells(nbformat.read(notebook, as_version=4))
    fresh = code_cells(to_notebook(source, root))
    if kept == fresh:
        return True, ""
    for i, (a, b) in enumerate(zip(kept, fresh)):
        if a != b:
            return False, f"code cell {i} differs:\n--- kept\n{a[:400]}\n--- source\n{b[:400]}"
    return False, f"{len(kept)} code cells kept, {len(fresh)} in the source"


# ---------------------------------------------------------------- execution
def parse_parameters(pairs: list[str]) -> dict:
    """``["d=20", "noise=0.1", "name=abc"]`` -> ``{"d": 20, "noise": 0.1, "name": "abc"}``."""
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise PipelineError(f"-p expects NAME=VALUE, got {pair!r}")
        name, value = pair.split("=", 1)
        if not name.isidentifier():
            raise PipelineError(f"-p {pair!r}: {name!r} is not a parameter name")
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[name] = value
    return params


@dataclass
class RunResult:
    chapter: str
    notebook: Path
    claims: list[dict]
    wall_time_s: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.claims) and all(c["passed"] for c in self.claims)


def read_claims(nb) -> list[dict]:
    """The claims a chapter published (``Claims.report``) in an executed notebook."""
    for cell in reversed(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if MIMETYPE in data:
                return list(data[MIMETYPE]["claims"])
    return []


def cell_error(nb) -> str:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')}"
    return ""


def execute(root: Path, source: Path, profile: str, seed: int, params: dict, out_dir: Path,
            progress: bool = True, timeout: int = 3600) -> RunResult:
    """Execute one chapter with papermill; never raises on a chapter failure (see ``RunResult``)."""
    import nbformat
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    nb = to_notebook(source, root)
    with tempfile.TemporaryDirectory() as tmp:
        src_nb = Path(tmp) / f"{source.stem}.ipynb"
        nbformat.write(nb, src_nb)
        out_nb = out_dir / f"{source.stem}.ipynb"
        parameters = {"profile": profile, "seed": seed, **params}
        env_before = os.environ.get("GDLAB_PROGRESS")
        os.environ["GDLAB_PROGRESS"] = "0"
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(src_nb), str(out_nb), parameters=parameters, kernel_name="python3",
                                progress_bar=progress, cwd=str(root), execution_timeout=timeout,
                                report_mode=False)
        except pm.PapermillExecutionError:
            pass  # the executed notebook, with its error, is still written; reported below
        finally:
            if env_before is None:
                os.environ.pop("GDLAB_PROGRESS", None)
            else:
                os.environ["GDLAB_PROGRESS"] = env_before
        wall = time.perf_counter() - start
    executed = nbformat.read(out_nb, as_version=4)
    claims = [{**c, "wall_time_s": round(wall, 1)} for c in read_claims(executed)]
    error = cell_error(executed)
    if not error and not claims:
        error = "the chapter published no claims (it must end with claims.report())"
    return RunResult(source.stem, out_nb, claims, wall, error)


def write_claims(root: Path, result: RunResult) -> Path:
    path = root / "_build" / "claims" / f"{result.chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.claims, indent=1))
    return path


def validate(notebook: Path, timeout: int = 3600) -> tuple[bool, str]:
    """Re-run an executed notebook under nbval; True iff every cell gives identical sanitized outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "sanitize.cfg"
        cfg.write_text("".join(f"[rule{i}]\nregex: {rx}\nreplace: {rep}\n\n"
                               for i, (rx, rep) in enumerate(NBVAL_SANITIZE.items())))
        cmd = [sys.executable, "-m", "pytest", "--nbval", str(notebook), "--nbval-sanitize-with", str(cfg),
               "--nbval-cell-timeout", str(timeout), "-p", "no:cacheprovider", "-q", "--no-header",
               "-o", "addopts=", "--rootdir", tmp]
        env = {**os.environ, "GDLAB_PROGRESS": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=notebook.parent)
    return proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def report(result: RunResult, stream=None) -> None:
    stream = stream or sys.stdout
    print(f"\n== {result.chapter}: {'ok' if result.ok else 'FAILED'} in {result.wall_time_s:.0f} s", file=stream)
    if result.claims:
        print(table_text(result.claims), file=stream)
    if result.error:
        print(f"error: {result.error}", file=stream)


def run_chapter(root: Path, name: str, profile: str = "quick", seed: int = 0, params: dict | None = None,
                validate_outputs: bool = False, save: bool = False, progress: bool = True) -> RunResult:
    """``gdlab run``: execute, write the claims JSON, print the table, optionally validate and keep."""
    from gdlab.runtime import PROFILES, check_choice, check_int

    check_choice("profile", profile, PROFILES)
    check_int("seed", seed, min=0)
    source = resolve_chapter(root, name)
    result = execute(root, source, profile, seed, params or {}, root / "_build" / "executed", progress)
    write_claims(root, result)
    report(result)
    if result.ok and validate_outputs:
        ok, log = validate(result.notebook)
        print(f"nbval: {'identical outputs on re-run' if ok else 'MISMATCH'}")
        if not ok:
            print(log)
            result.error = "nbval: re-running the notebook did not reproduce its outputs"
    if result.ok and save:
        kept = root / "notebooks" / result.notebook.name
        kept.parent.mkdir(exist_ok=True)
        shutil.copy2(result.notebook, kept)
        print(f"kept {kept.relative_to(root)}")
    return result


# ---------------------------------------------------------------- the HTML book
def status_page(records: list[dict]) -> str:
    """The "Reproduction status" page: every chapter's claims in one table."""
    from gdlab.claims import fmt

    def cell(r, c):
        if c == "status":
            return "**PASS**" if r["passed"] else "**FAIL**"
        v = r.get(c)
        text = v if isinstance(v, str) else fmt(v)
        return text.replace("|", "\\|").replace("\n", " ")

    n_pass = sum(r["passed"] for r in records)
    lines = ["# Reproduction status", "",
             f"Every claim of every chapter, as measured in the run this book was built from: "
             f"**{n_pass} of {len(records)} pass**. Each chapter's own table, at its end, has the details; "
             "`gdlab claims` prints this table in a terminal.", "",
             ":::{div} full-width", "",
             "| " + " | ".join(c.replace("_", " ") for c in STATUS_COLUMNS) + " |",
             "|" + "---|" * len(STATUS_COLUMNS)]
    lines += ["| " + " | ".join(cell(r, c) for c in STATUS_COLUMNS) + " |" for r in records]
    return "\n".join(lines + ["", ":::"]) + "\n"


def stage_notebook(source: Path, target: Path) -> None:
    """Copy an executed notebook for the HTML build, without the claims JSON (the table's
    HTML rendering stays; Sphinx has no renderer for the JSON and would warn), and with
    papermill's injected parameters folded away."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            cell.metadata["tags"] = tags + ["hide-input"]
        for out in cell.get("outputs", []):
            out.get("data", {}).pop(MIMETYPE, None)
    nbformat.write(nb, target)


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
    (stage / "status.md").write_text(status_page(records))
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


def build_book(root: Path, profile: str = "quick", seed: int = 0, validate_outputs: bool = False,
               committed: bool = False, html: bool = True) -> bool:
    """``gdlab book``: execute every chapter (or reuse kept notebooks) and build the HTML."""
    import nbformat

    results, notebooks, records = [], [], []
    for source in chapters(root):
        kept = root / "notebooks" / f"{source.stem}.ipynb"
        if committed and kept.exists():
            same, why = notebook_matches_source(kept, source, root)
            if not same:
                raise PipelineError(f"{kept.relative_to(root)} no longer matches {source.name}: {why}\n"
                                    f"re-run it with: gdlab run {source.stem} --profile paper --save")
            nb = nbformat.read(kept, as_version=4)
            wall = nb.metadata.get("papermill", {}).get("duration") or 0.0
            result = RunResult(source.stem, kept, [{**c, "wall_time_s": round(wall, 1)} for c in read_claims(nb)],
                               wall, cell_error(nb))
            write_claims(root, result)
            print(f"using kept notebook {kept.relative_to(root)}")
            report(result)
        else:
            result = run_chapter(root, source.stem, profile, seed, validate_outputs=validate_outputs)
        results.append(result)
        notebooks.append(result.notebook)
        records += [{**c, "chapter": source.stem} for c in result.claims]
    failed = [r.chapter for r in results if not r.ok]
    print("\n== all claims")
    print(table_text(records, ("chapter",) + tuple(c for c in STATUS_COLUMNS if c != "chapter")[:7]))
    if failed:
        print(f"\nFAILED chapters: {', '.join(failed)}")
        return False
    if html:
        build_html(root, notebooks, records)
    return True


def print_claims(root: Path) -> bool:
    """``gdlab claims``: the latest claims of every chapter as one table."""
    records = []
    for path in sorted((root / "_build" / "claims").glob("*.json")):
        records += [{**c, "chapter": path.stem} for c in json.loads(path.read_text())]
    if not records:
        print("no claims yet: run `gdlab run CHAPTER` or `gdlab book` first")
        return False
    cols = ("chapter", "id", "source", "measured", "tolerance", "status", "profile", "seed", "wall_time_s")
    print(table_text(records, cols))
    n_pass = sum(r["passed"] for r in records)
    print(f"\n{n_pass} of {len(records)} claims pass")
    return n_pass == len(records)


def check_notebooks(root: Path) -> bool:
    """``gdlab check-notebooks``: every kept notebook still matches its chapter source."""
    ok = True
    for source in chapters(root):
        kept = root / "notebooks" / f"{source.stem}.ipynb"
        if not kept.exists():
            print(f"{source.stem}: no kept notebook")
            continue
        same, why = notebook_matches_source(kept, source, root)
        print(f"{source.stem}: {'matches its source' if same else 'OUT OF DATE: ' + why}")
        ok &= same
    return ok


# ---------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gdlab", description="Gradient Descent, Reproduced: the book pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="quick", help="quick (CPU, ~2 min a chapter) or paper (GPU)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--validate", action="store_true", help="re-run under nbval; outputs must be identical")
    common.add_argument("--root", type=Path, default=None, help="repository root (default: found from here)")
    run = sub.add_parser("run", parents=[common], help="execute one chapter headlessly")
    run.add_argument("chapter", help="file stem (01-icl-as-gd) or number (1)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override a parameter of the chapter's parameters cell")
    run.add_argument("--save", action="store_true", help="keep the executed notebook in notebooks/")
    run.add_argument("--no-progress", action="store_true")
    book = sub.add_parser("book", parents=[common], help="execute every chapter and build the HTML")
    book.add_argument("--committed", action="store_true",
                      help="use the kept notebooks in notebooks/ (checked against their sources) where present")
    book.add_argument("--no-html", action="store_true")
    for name, text in (("claims", "print the latest claims of every chapter"),
                       ("check-notebooks", "check the kept notebooks against their sources")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--root", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        root = args.root.resolve() if args.root else find_root()
        if args.command == "run":
            result = run_chapter(root, args.chapter, args.profile, args.seed, parse_parameters(args.param),
                                 args.validate, args.save, not args.no_progress)
            return 0 if result.ok else 1
        if args.command == "book":
            return 0 if build_book(root, args.profile, args.seed, args.validate, args.committed,
                                   not args.no_html) else 1
        if args.command == "claims":
            return 0 if print_claims(root) else 1
        return 0 if check_notebooks(root) else 1
    except (PipelineError, ValueError, TypeError) as e:
        print(f"gdlab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
