"""The GitHub workflows are valid (against the vendored GitHub workflow schema) and run the
README's commands."""
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_workflows_validate_against_the_github_schema():
    assert [p.name for p in WORKFLOWS] == ["ci.yml", "pages.yml"]
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
           *map(str, WORKFLOWS)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_make_test_and_pages_deploys_the_html():
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    assert any(step.get("run") == "make test" for step in ci["jobs"]["test"]["steps"])
    pages = yaml.safe_load((ROOT / ".github/workflows/pages.yml").read_text())
    uses = [step.get("uses", "") for job in pages["jobs"].values() for step in job["steps"]]
    assert any(u.startswith("actions/deploy-pages") for u in uses)
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert "make book" in (ROOT / "README.md").read_text() and "make test" in (ROOT / "README.md").read_text()


def test_make_test_executes_every_chapter_of_the_book():
    """`make test` executes the chapters listed in the Makefile's CHAPTERS_BY_TIME: exactly the
    chapters of the book, each once (a chapter missing from it would make `gdlab book --executed`
    fail, but this names the cause)."""
    makefile = (ROOT / "Makefile").read_text().splitlines()
    line = next(ln for ln in makefile if ln.startswith("CHAPTERS_BY_TIME :="))
    listed = line.split(":=", 1)[1].split()
    chapters = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]-*.md"))
    assert sorted(listed) == chapters and len(set(listed)) == len(listed)
