"""The library's public surface: ``__all__`` in every module, lazy submodule access, and the API
reference pages generated from the package (gdlab.book.site.api_pages)."""
import ast
from pathlib import Path

import pytest

from gdlab.book import site

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MODULES = sorted(p for p in (SRC / "gdlab").rglob("*.py")
                 if not any(part.startswith("_") and part != "__init__.py" for part in p.relative_to(SRC).parts)
                 and p.name != "__main__.py")


def top_level_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(every name bound at module level, the public functions and classes defined there)."""
    bound, public = set(), set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            if not node.name.startswith("_"):
                public.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        bound.add(n.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)):
            sub = ast.Module(body=list(ast.iter_child_nodes(node)), type_ignores=[])
            b, _ = top_level_names(sub)
            bound |= b
    for node in tree.body:  # names a module-level __getattr__ serves lazily (compared as strings there)
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            bound |= {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return bound, public


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC / "gdlab")))
def test_every_module_declares_its_public_names_in_all(path):
    tree = ast.parse(path.read_text())
    declared = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            declared = ast.literal_eval(node.value)
    assert declared is not None, f"{path.relative_to(ROOT)} has no __all__"
    assert len(declared) == len(set(declared)), f"duplicates in __all__: {declared}"
    bound, public = top_level_names(tree)
    if path.name == "__init__.py":  # a package may list its submodules
        bound |= {p.stem for p in path.parent.glob("*.py")} | {p.name for p in path.parent.iterdir() if p.is_dir()}
    assert not set(declared) - bound, f"__all__ names nothing of that name: {sorted(set(declared) - bound)}"
    assert not public - set(declared), (f"public functions/classes missing from __all__ (add them, or "
                                        f"prefix private helpers with _): {sorted(public - set(declared))}")


def test_submodules_load_on_first_access():
    import gdlab

    assert gdlab.hessian.__name__ == "gdlab.hessian"
    assert gdlab.book.site is site
    with pytest.raises(AttributeError):
        gdlab.no_such_module  # noqa: B018


def test_api_pages_document_every_public_module():
    pages = site.api_pages(SRC)
    text = "\n".join(pages.values())
    for path in MODULES:
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        assert f".. automodule:: {name}\n" in text, f"{name} has no API page"
    groups = site.api_modules(SRC)
    assert list(groups)[:2] == ["runtime", "claims"] and "book" in groups and "icl" in groups
    assert set(pages) == {"api/index.md"} | {f"api/{g}.md" for g in groups}


def test_a_package_page_documents_what_its_init_defines_not_what_it_re_exports():
    # gdlab.sweep.run is defined in sweep/__init__.py; the docstrings cross-reference it, and
    # Sphinx (-n) fails on a reference to an undocumented name
    page = site.api_pages(SRC)["api/sweep.md"]
    assert ".. automodule:: gdlab.sweep\n   :members: run\n" in page
    assert ".. automodule:: gdlab.icl\n   :no-members:\n" in site.api_pages(SRC)["api/icl.md"]


def test_staged_toc_lists_the_api_pages_under_api_index():
    import yaml

    toc = yaml.safe_load(site.stage_toc((ROOT / "_toc.yml").read_text(), SRC))
    (api,) = [c for part in toc["parts"] for c in part["chapters"] if c["file"] == "api/index"]
    assert [s["file"] for s in api["sections"]] == [f"api/{g}" for g in site.api_modules(SRC)]
