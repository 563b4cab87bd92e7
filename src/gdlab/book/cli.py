"""The ``gdlab`` command::

    gdlab run CHAPTER [--profile smoke|quick|paper] [--seed N | --seeds 0-5] [-p NAME=VALUE ...]
                      [--validate] [--save] [--strict-device]
    gdlab book [--profile ...] [--seed N] [--validate] [--committed | --executed] [--no-html] [--strict-device]
    gdlab claims
    gdlab check-notebooks

Exit codes of ``run`` and ``book``: 0 ok, 1 a claim failed, 2 a bad command line or parameter,
3 a chapter did not complete, 4 an nbval mismatch, 130 interrupted (see :mod:`gdlab.book.run`).
``claims`` and ``check-notebooks`` exit 1 when anything is not in order.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

from gdlab.book import notebooks, records, run, site
from gdlab.book.notebooks import PipelineError
from gdlab.claims import table_text
from gdlab.runtime import ParameterError


__all__ = ["parse_parameters", "build_book", "check_notebooks", "main"]


def parse_parameters(pairs: list[str]) -> dict:
    """``["d=20", "noise=0.1", "name=abc", "sizes=(1, 2)"]`` -> ``{"d": 20, "noise": 0.1, "name": "abc",
    "sizes": [1, 2]}`` (tuples reach the notebook as lists)."""
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
        if isinstance(params[name], tuple):
            params[name] = list(params[name])
    return params


def _kept_wall_time(root: Path, source: Path, profile: str) -> float:
    """The wall time (s) recorded in the chapter's kept notebook when it was made at ``profile``;
    0 when there is none."""
    import json

    kept = root / "notebooks" / f"{source.stem}.ipynb"
    try:
        meta = json.loads(kept.read_text()).get("metadata", {}).get("gdlab", {})
    except (OSError, ValueError):
        return 0.0
    return float(meta.get("wall_time_s") or 0.0) if meta.get("profile") == profile else 0.0


def _run_chapters_in_parallel(root: Path, sources: list[Path], profile: str, seed: int,
                              validate_outputs: bool, strict_device: bool, jobs: int) -> dict:
    """Execute chapters as ``gdlab run`` subprocesses, ``jobs`` at a time, each kernel with
    ``cores // jobs`` threads. Prints each chapter's output whole when it ends; returns
    {stem: RunResult} rebuilt from the records and executed notebooks they wrote."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "GDLAB_PROGRESS": "0"}

    def one(source: Path) -> tuple[Path, int, str, float]:
        cmd = [sys.executable, "-m", "gdlab", "run", source.stem, "--profile", profile, "--seed", str(seed),
               "--root", str(root), "--no-progress"]
        cmd += ["--validate"] * validate_outputs + ["--strict-device"] * strict_device
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        return source, proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start

    # longest first (the wall time its kept notebook took at this profile), so that the short
    # chapters fill in at the end: 01-05 in order left one core idle for ~100 s of a quick book
    order = sorted(sources, key=lambda s: -_kept_wall_time(root, s, profile))
    print(f"executing {len(sources)} chapters, {jobs} at a time ({threads} thread(s) each), longest first: "
          f"{', '.join(s.stem[:2] for s in order)}", flush=True)
    out = {}
    with ThreadPoolExecutor(jobs) as pool:
        for source, code, log, wall in pool.map(one, order):
            print(f"\n##### gdlab run {source.stem} (exit {code}, {wall:.0f} s)\n{log}", flush=True)
            rows = records.read_records(root, source.stem) or []
            errors = [r for r in rows if r.get("id") == records.ERROR_ID]
            outcome = next((k for k, v in run.EXIT.items() if v == code), "error")
            error = (errors[0].get("error") or errors[0].get("message", "")) if errors else ""
            if code and not error and outcome != "claim":
                error = f"gdlab run exited {code}"
            out[source.stem] = _recorded_result(root, source.stem, rows, wall, error, outcome)
    return out


def _recorded_result(root: Path, stem: str, rows: list[dict], wall: float, error: str,
                     outcome: str) -> "run.RunResult":
    """A RunResult rebuilt from what a ``gdlab run`` left: its record ``rows`` and its executed
    notebook (``_build/executed/<stem>.ipynb``, read for the run's info where it exists)."""
    import nbformat

    nb_path = root / "_build" / "executed" / f"{stem}.ipynb"
    run_info = {}
    if nb_path.exists():
        _, run_info = run.read_published(nbformat.read(nb_path, as_version=4))
    claims = [r for r in rows if r.get("id") != records.ERROR_ID]
    return run.RunResult(stem, nb_path, claims, wall, error, outcome, run_info)


def _latest_run(root: Path, source: Path, profile: str, seed: int) -> "run.RunResult":
    """The chapter's latest ``gdlab run`` as a RunResult, for ``gdlab book --executed``; a
    PipelineError naming the command to run where it is missing, did not complete, is stale, or
    was made at another profile, seed or with parameters."""
    stem = source.stem
    rows = records.read_records(root, stem)
    state, why = records.chapter_state(root, stem, rows)
    nb_path = root / "_build" / "executed" / f"{stem}.ipynb"
    redo = f"run `gdlab run {stem} --profile {profile} --seed {seed}`"
    if state in ("MISSING", "ERROR", "STALE"):
        raise PipelineError(f"{stem}: its latest run is {state} ({why}); {redo}")
    first = rows[0]
    if (first.get("profile"), first.get("seed"), first.get("params") or {}) != (profile, seed, {}) or first.get("kept"):
        raise PipelineError(f"{stem}: its latest run was at profile {first.get('profile')}, seed {first.get('seed')}, "
                            f"parameters {records.params_text(first)}; {redo}")
    if not nb_path.exists():
        raise PipelineError(f"{stem}: no executed notebook {nb_path.relative_to(root)}; {redo}")
    return _recorded_result(root, stem, rows, float(first.get("wall_time_s") or 0.0), "",
                            "ok" if state == "OK" else "claim")


def build_book(root: Path, profile: str = "quick", seed: int = 0, validate_outputs: bool = False,
               committed: bool = False, html: bool = True, strict_device: bool = False,
               jobs: int = 1, executed_runs: bool = False) -> int:
    """``gdlab book``: execute every chapter (or reuse the kept notebooks) and build the HTML.
    ``jobs > 1`` executes that many chapters at once (subprocesses sharing the cores).
    ``executed_runs`` executes nothing: it builds from each chapter's latest ``gdlab run`` (its
    record and ``_build/executed`` notebook), which must be current and at ``profile`` and ``seed``.
    Returns the exit code: the worst outcome over the chapters."""
    import nbformat

    from gdlab.runtime import check_int

    check_int("jobs", jobs, min=1, max=64)
    results, executed, all_records = [], [], []
    sources = notebooks.chapters(root)
    parallel = {}
    if executed_runs:
        if committed or validate_outputs or strict_device:
            raise PipelineError("--executed builds from earlier runs: it takes no --committed, --validate "
                                "or --strict-device")
        parallel = {s.stem: _latest_run(root, s, profile, seed) for s in sources}
    elif jobs > 1:
        fresh = [s for s in sources if not (committed and (root / "notebooks" / f"{s.stem}.ipynb").exists())]
        parallel = _run_chapters_in_parallel(root, fresh, profile, seed, validate_outputs, strict_device, jobs)
    for source in sources:
        kept = root / "notebooks" / f"{source.stem}.ipynb"
        if committed and kept.exists():
            current, why = run.kept_is_current(root, source)
            if not current:
                raise PipelineError(f"{kept.relative_to(root)} is out of date: {why}\n"
                                    f"re-run it with: gdlab run {source.stem} --profile paper --save")
            nb = nbformat.read(kept, as_version=4)
            claims, info = run.read_published(nb)
            meta = dict(nb.metadata.get("gdlab", {}))
            meta.pop("device", None)  # the claims name their device
            ename, error = run.cell_error(nb)
            outcome, error = run.outcome_of(claims, ename, error)
            result = run.RunResult(source.stem, kept, claims, meta.get("wall_time_s") or 0.0, error, outcome, info)
            records.write_records(root, source.stem, claims, {**meta, "chapter": source.stem, "kept": True},
                                  error=error if outcome != "claim" else "")
            print(f"using kept notebook {kept.relative_to(root)}")
            run.report(result)
            rows = records.read_records(root, source.stem) or []
        elif source.stem in parallel:
            result = parallel[source.stem]
            rows = records.read_records(root, source.stem) or []
        else:
            result = run.run_chapter(root, source.stem, profile, seed, validate_outputs=validate_outputs,
                                     strict_device=strict_device)
            rows = records.read_records(root, source.stem) or []
        results.append(result)
        executed.append(result.notebook)
        all_records += [r for r in rows if r.get("id") != records.ERROR_ID]
    failed = [r for r in results if not r.ok]
    print("\n== all claims")
    print(table_text(all_records, ("chapter", "id", "source", "measured", "tolerance", "status")))
    print(records.summary_line(all_records))
    if failed:
        print(f"\nFAILED chapters: {', '.join(f'{r.chapter} ({r.outcome})' for r in failed)}")
        return max(r.exit_code for r in failed)
    if html and profile == "smoke" and not committed:
        print("smoke runs are never shown: no HTML built")
    elif html:
        site.build_html(root, executed, all_records)
    return 0


def check_notebooks(root: Path) -> bool:
    """``gdlab check-notebooks``: every kept notebook runs its chapter's code and was made by the
    current library code."""
    ok = True
    for source in notebooks.chapters(root):
        kept = root / "notebooks" / f"{source.stem}.ipynb"
        if not kept.exists():
            print(f"{source.stem}: no kept notebook")
            continue
        current, why = run.kept_is_current(root, source)
        print(f"{source.stem}: {'current' if current else 'OUT OF DATE: ' + why}")
        ok &= current
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gdlab", description="Gradient Descent, Reproduced: the book pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="quick",
                        help="smoke (seconds, claims not judged), quick (CPU, ~2 min a chapter) or paper (GPU)")
    common.add_argument("--validate", action="store_true", help="re-run under nbval; outputs must be identical")
    common.add_argument("--strict-device", action="store_true",
                        help="raise on device mix-ups, with the CPU kept apart from the run's device as CUDA is")
    common.add_argument("--root", type=Path, default=None, help="repository root (default: found from here)")
    run_p = sub.add_parser("run", parents=[common], help="execute one chapter headlessly")
    run_p.add_argument("chapter", help="file stem (01-icl-as-gd) or number (1)")
    seeds = run_p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0)
    seeds.add_argument("--seeds", default=None, metavar="0-5",
                       help="run at several seeds and report each claim's pass rate and spread")
    run_p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                       help="override a parameter of the chapter's parameters cell")
    run_p.add_argument("--save", action="store_true", help="keep the executed notebook in notebooks/")
    run_p.add_argument("--no-progress", action="store_true")
    book = sub.add_parser("book", parents=[common], help="execute every chapter and build the HTML")
    book.add_argument("--seed", type=int, default=0)
    book.add_argument("--committed", action="store_true",
                      help="use the kept notebooks in notebooks/ (checked against their sources) where present")
    book.add_argument("--no-html", action="store_true")
    book.add_argument("--executed", action="store_true",
                      help="execute nothing: build from each chapter's latest `gdlab run` (which must be current)")
    book.add_argument("--jobs", "-j", type=int, default=1,
                      help="execute this many chapters at once, sharing the cores (default 1)")
    for name, text in (("claims", "print the latest claims of every chapter"),
                       ("check-notebooks", "check the kept notebooks against their sources")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--root", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        root = args.root.resolve() if args.root else notebooks.find_root()
        if args.command == "run":
            params = parse_parameters(args.param)
            if args.seeds is not None:
                _, ok = run.run_seeds(root, args.chapter, run.parse_seeds(args.seeds), args.profile, params,
                                      args.save, not args.no_progress, args.strict_device)
                return 0 if ok else 1
            result = run.run_chapter(root, args.chapter, args.profile, args.seed, params, args.validate,
                                     args.save, not args.no_progress, args.strict_device)
            return result.exit_code
        if args.command == "book":
            return build_book(root, args.profile, args.seed, args.validate, args.committed, not args.no_html,
                              args.strict_device, args.jobs, args.executed)
        if args.command == "claims":
            return 0 if records.print_claims(root, notebooks.toc_chapters(root)) else 1
        return 0 if check_notebooks(root) else 1
    except (PipelineError, ParameterError) as e:
        print(f"gdlab: error: {e}", file=sys.stderr)
        return run.EXIT["parameter"]
    except KeyboardInterrupt:
        print("gdlab: interrupted", file=sys.stderr)
        return run.EXIT["interrupt"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
