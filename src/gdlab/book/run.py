"""Executing chapters: papermill at a profile and seed, nbval validation, several seeds, and
keeping the executed notebook.

Outcomes and the exit codes of ``gdlab run`` (:data:`EXIT`):

======  =====================================================================
0       every claim passes (or is declared not reproduced); smoke: no cell error
1       a claim failed
2       a bad command line or parameter (unknown ``-p`` name, a chapter's ParameterError)
3       the chapter did not complete: a cell error, a dead kernel, a timeout, no claims
4       nbval: re-running the notebook did not reproduce its outputs
130     interrupted
======  =====================================================================
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gdlab.book import notebooks, records
from gdlab.claims import FAIL, MIMETYPE, status_of, table_text

__all__ = ["EXIT", "NBVAL_SANITIZE", "PARAMETER_ERRORS", "RunResult", "read_published", "cell_error",
           "outcome_of", "execute", "validate", "report", "run_meta", "run_chapter", "keep",
           "kept_is_current", "parse_seeds", "run_seeds"]


#: The exit code of ``gdlab run`` / ``gdlab book`` for each outcome.
EXIT = {"ok": 0, "claim": 1, "parameter": 2, "error": 3, "validation": 4, "interrupt": 130}
#: nbval compares every text output exactly after these substitutions (regex -> replacement).
NBVAL_SANITIZE = {
    r"0x[0-9a-fA-F]+": "0xADDRESS",  # object reprs
    r"\d+(\.\d+)?(it/s|s/it)": "RATE",  # progress-bar rates printed by third-party libraries
    r"\[\d\d:\d\d<\d\d:\d\d": "[ELAPSED<REMAINING",
    r"\bin \d+(\.\d+)? ?(s|ms|min)\b": "in DURATION",  # timings a chapter reports ("loaded in 3.1 s")
    r"\d+(\.\d+)? (tokens|examples|steps)/s\b": "RATE",  # throughputs ("4.4 tokens/s")
}
PARAMETER_ERRORS = ("ParameterError", "ParameterTypeError")


@dataclass
class RunResult:
    chapter: str
    notebook: Path
    claims: list[dict]
    wall_time_s: float
    error: str = ""
    outcome: str = "ok"  # a key of EXIT
    run_info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def exit_code(self) -> int:
        return EXIT[self.outcome]


def read_published(nb) -> tuple[list[dict], dict]:
    """The claims a chapter published (``Claims.report``) in an executed notebook, and its run info."""
    for cell in reversed(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if MIMETYPE in data:
                return list(data[MIMETYPE]["claims"]), dict(data[MIMETYPE].get("run", {}))
    return [], {}


def cell_error(nb) -> tuple[str, str]:
    """(exception name, "name: value") of the first cell error, or ("", "")."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return out.get("ename", ""), f"{out.get('ename')}: {out.get('evalue')}"
    return "", ""


def outcome_of(claims: list[dict], ename: str, error: str) -> tuple[str, str]:
    """Classify a finished execution: (outcome, error text)."""
    if ename in PARAMETER_ERRORS:
        return "parameter", error
    if ename == "ClaimFailure" and claims:
        return "claim", ""
    if error:
        return "error", error
    if not claims:
        return "error", "the chapter published no claims (it must end with claims.report())"
    if any(status_of(c) == FAIL for c in claims):
        return "claim", ""
    return "ok", ""


def execute(root: Path, source: Path, profile: str, seed: int, params: dict, out_dir: Path,
            progress: bool = True, timeout: int = 3600, strict_device: bool = False,
            ref: str | None = None) -> RunResult:
    """Execute one chapter with papermill. A chapter failure is reported in the result; only an
    interrupt propagates."""
    import nbformat
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    nb = notebooks.to_notebook(source, root, ref)
    out_nb = out_dir / f"{source.stem}.ipynb"
    out_nb.unlink(missing_ok=True)
    env = {"GDLAB_PROGRESS": "0", "GDLAB_STRICT_DEVICE": "1" if strict_device else "0"}
    saved = {k: os.environ.get(k) for k in env}
    start = time.perf_counter()
    failure = ""
    with tempfile.TemporaryDirectory() as tmp:
        src_nb = Path(tmp) / f"{source.stem}.ipynb"
        nbformat.write(nb, src_nb)
        os.environ.update(env)
        try:
            pm.execute_notebook(str(src_nb), str(out_nb), parameters={"profile": profile, "seed": seed, **params},
                                kernel_name="python3", progress_bar=progress, cwd=str(root),
                                execution_timeout=timeout, report_mode=False)
        except pm.PapermillExecutionError:
            pass  # the executed notebook, with its error, is still written; classified below
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a dead kernel, a timeout, a broken notebook
            failure = f"{type(e).__name__}: {e}".strip()[:2000]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    wall = time.perf_counter() - start
    if not out_nb.exists():
        return RunResult(source.stem, out_nb, [], wall, failure or "no executed notebook was written", "error")
    executed = nbformat.read(out_nb, as_version=4)
    notebooks.fold_parameters(executed)
    nbformat.write(executed, out_nb)
    claims, info = read_published(executed)
    ename, error = cell_error(executed)
    outcome, error = outcome_of(claims, ename, failure or error)
    return RunResult(source.stem, out_nb, claims, wall, error, outcome, info)


def validate(notebook: Path, timeout: int = 3600, strict_device: bool = False) -> tuple[bool, str]:
    """Re-run an executed notebook under nbval; True iff every cell gives identical sanitized outputs
    (text after :data:`NBVAL_SANITIZE`; numbers in JSON outputs to 10 significant digits, see
    :mod:`gdlab.book.nbval_floats`)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "sanitize.cfg"
        cfg.write_text("".join(f"[rule{i}]\nregex: {rx}\nreplace: {rep}\n\n"
                               for i, (rx, rep) in enumerate(NBVAL_SANITIZE.items())))
        cmd = [sys.executable, "-m", "pytest", "--nbval", str(notebook), "--nbval-sanitize-with", str(cfg),
               "--nbval-cell-timeout", str(timeout), "-p", "no:cacheprovider", "-p", "gdlab.book.nbval_floats",
               "-q", "--no-header",
               "-o", "addopts=", "--rootdir", tmp]
        env = {**os.environ, "GDLAB_PROGRESS": "0", "GDLAB_STRICT_DEVICE": "1" if strict_device else "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=notebook.parent)
    return proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def report(result: RunResult, stream=None) -> None:
    stream = stream or sys.stdout
    word = {"ok": "ok", "claim": "CLAIM FAILED", "parameter": "PARAMETER ERROR", "error": "ERROR",
            "validation": "VALIDATION MISMATCH", "interrupt": "INTERRUPTED"}[result.outcome]
    print(f"\n== {result.chapter}: {word} in {result.wall_time_s:.0f} s", file=stream)
    if result.claims:
        print(table_text(result.claims), file=stream)
        print(records.summary_line(result.claims), file=stream)
    if result.error:
        print(f"error: {result.error}", file=stream)


def run_meta(root: Path, source: Path, profile: str, seed: int, params: dict, strict_device: bool,
             commit: str | None) -> dict:
    return {"chapter": source.stem, "profile": profile, "seed": seed, "params": params, "defaults": not params,
            "commit": commit, "strict_device": strict_device, "validated": False}


def run_chapter(root: Path, name: str, profile: str = "quick", seed: int = 0, params: dict | None = None,
                validate_outputs: bool = False, save: bool = False, progress: bool = True,
                strict_device: bool = False, quiet: bool = False) -> RunResult:
    """``gdlab run``: execute, write the claims record (failing closed), print the table, optionally
    validate and keep the notebook."""
    from gdlab.runtime import MAX_SEED, PROFILES, check_choice, check_int

    check_choice("profile", profile, PROFILES)
    check_int("seed", seed, min=0, max=MAX_SEED)
    if save and profile == "smoke":
        raise notebooks.PipelineError("smoke runs are never kept: run --profile quick or paper with --save")
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in (params or {}).items()}
    source = notebooks.resolve_chapter(root, name)
    notebooks.check_parameter_names(source, params)
    commit = notebooks.git_commit(root)
    meta = run_meta(root, source, profile, seed, params, strict_device, commit)
    records.write_started(root, source.stem, meta)
    try:
        result = execute(root, source, profile, seed, params, root / "_build" / "executed", progress,
                         strict_device=strict_device, ref=commit)
    except KeyboardInterrupt:
        records.write_records(root, source.stem, [], meta, error="interrupted (KeyboardInterrupt)")
        raise
    info = result.run_info
    meta.update({"wall_time_s": round(result.wall_time_s, 1), "threads": info.get("threads"),
                 "versions": info.get("versions"), "modules": info.get("modules", []),
                 "source_hash": records.source_hash(source, info.get("modules", []))})
    if not quiet:
        report(result)
    if result.outcome in ("ok", "claim") and validate_outputs:
        ok, log = validate(result.notebook, strict_device=strict_device)
        print(f"nbval: {'identical outputs on re-run' if ok else 'MISMATCH'}")
        meta["validated"] = ok
        if not ok:
            print(log)
            result.outcome = "validation"
            result.error = "nbval: re-running the notebook did not reproduce its outputs"
    error = result.error if result.outcome in ("error", "parameter", "validation") else ""
    records.write_records(root, source.stem, result.claims, meta, error=error)
    if result.ok and save:
        keep(root, result, meta)
    return result


def keep(root: Path, result: RunResult, meta: dict) -> Path:
    """Keep the executed notebook as ``notebooks/<stem>.ipynb`` with its run's metadata (the hash
    of the code that made it, to tell a stale kept notebook)."""
    import nbformat

    nb = nbformat.read(result.notebook, as_version=4)
    nb.metadata["gdlab"] = {k: meta.get(k) for k in ("profile", "seed", "params", "commit", "source_hash",
                                                     "modules", "versions", "wall_time_s", "strict_device")}
    nb.metadata["gdlab"]["device"] = result.claims[0].get("device") if result.claims else None
    kept = root / "notebooks" / result.notebook.name
    kept.parent.mkdir(exist_ok=True)
    nbformat.write(nb, kept)
    print(f"kept {kept.relative_to(root)}")
    return kept


def kept_is_current(root: Path, source: Path) -> tuple[bool, str]:
    """Whether ``notebooks/<stem>.ipynb`` runs the chapter's code and was made by the current
    library code (its recorded source hash)."""
    import nbformat

    kept = root / "notebooks" / f"{source.stem}.ipynb"
    same, why = notebooks.notebook_matches_source(kept, source, root)
    if not same:
        return False, why
    meta = nbformat.read(kept, as_version=4).metadata.get("gdlab", {})
    if "source_hash" not in meta:
        return False, "it records no source hash (made before hashes were kept)"
    if records.source_hash(source, meta.get("modules", [])) != meta["source_hash"]:
        return False, "the library code it used changed since it was made"
    return True, ""


def parse_seeds(text: str) -> list[int]:
    """``"0-5"`` -> [0..5]; ``"1,3,7"`` -> [1, 3, 7]."""
    from gdlab.runtime import MAX_SEED, ParameterError, check_int

    seeds = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                seeds += list(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ParameterError(f"parameter 'seeds': got {text!r}; expected a range like 0-5 or a list like 0,2,7")
    if not seeds or len(seeds) > 100:
        raise ParameterError(f"parameter 'seeds': got {text!r}; expected 1 to 100 seeds")
    return [check_int("seeds", s, min=0, max=MAX_SEED) for s in dict.fromkeys(seeds)]


def run_seeds(root: Path, name: str, seeds: list[int], profile: str = "quick", params: dict | None = None,
              save: bool = False, progress: bool = False, strict_device: bool = False) -> tuple[dict, bool]:
    """``gdlab run CHAPTER --seeds 0-5``: the chapter at every seed; per claim and control, the pass
    rate and the spread of the measured values, written to ``_build/claims/<stem>.seeds.json``
    (and kept as ``notebooks/<stem>.seeds.json`` with ``save``)."""
    source = notebooks.resolve_chapter(root, name)
    runs, errors, hashes, modules = {}, {}, set(), set()
    for seed in seeds:
        print(f"== {source.stem}: seed {seed}", flush=True)
        result = run_chapter(root, name, profile, seed, params, progress=progress, strict_device=strict_device,
                             quiet=True)
        failed = [c["id"] for c in result.claims if status_of(c) == FAIL]
        print(f"   {result.outcome} in {result.wall_time_s:.0f} s" + (f": {', '.join(failed)}" if failed else "")
              + (f": {result.error}" if result.error else ""), flush=True)
        if result.outcome == "parameter":
            break
        if result.claims:
            runs[seed] = result.claims
            hashes.add(records.source_hash(source, result.run_info.get("modules", [])))
            modules.update(result.run_info.get("modules", []))
        if result.outcome not in ("ok", "claim"):
            errors[seed] = result.error
        (root / "_build" / "claims" / "seeds").mkdir(parents=True, exist_ok=True)
        shutil.copy2(records.claims_path(root, source.stem),
                     root / "_build" / "claims" / "seeds" / f"{source.stem}.{seed}.json")
    modules = sorted(modules)
    meta = {"profile": profile, "params": params or {}, "defaults": not params,
            "commit": notebooks.git_commit(root), "modules": modules,
            "source_hash": records.source_hash(source, modules) if len(hashes) == 1 else None}
    summary = records.seeds_summary(source.stem, runs, errors, meta)
    path = records.write_atomic(records.claims_dir(root) / f"{source.stem}.seeds.json", summary)
    print(records.seeds_table(summary))
    print(f"written {path.relative_to(root)}")
    ok = not errors and len(runs) == len(seeds) and all(
        c["passes"] == c["runs"] or c.get("not_reproduced") for c in summary["claims"])
    if save:
        kept = root / "notebooks" / f"{source.stem}.seeds.json"
        kept.parent.mkdir(exist_ok=True)
        shutil.copy2(path, kept)
        print(f"kept {kept.relative_to(root)}")
    return summary, ok
