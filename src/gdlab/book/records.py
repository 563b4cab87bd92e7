"""Claim records: ``_build/claims/<stem>.json``, written atomically, failing closed.

A run first writes an ERROR record saying it has started and not completed; only a completed
run replaces it with its claims. So a killed kernel, an interrupt, a cell error or a failed
validation all leave a record that ``gdlab claims`` shows as ERROR, naming the cause.

Each record is a list of claim objects (the command-line contract). Every object carries the
run's metadata: profile, seed, device, threads, the ``-p`` parameters (``params``) and whether
the chapter ran with its own defaults (``defaults``), the commit, a hash of the chapter source
and the library code it loaded (``source_hash``, to tell a stale record), the versions, whether
the notebook was validated, and the wall time.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from gdlab.claims import FAILING, fmt, status_of, table_text

__all__ = ["ERROR_ID", "claims_dir", "claims_path", "write_atomic", "library_root", "source_hash",
           "error_record", "write_started", "write_records", "read_records", "chapter_state", "params_text",
           "summary_line", "print_claims", "seeds_summary", "seeds_table"]


ERROR_ID = "ERROR"


def claims_dir(root: Path) -> Path:
    return root / "_build" / "claims"


def claims_path(root: Path, stem: str) -> Path:
    return claims_dir(root) / f"{stem}.json"


def write_atomic(path: Path, data: Any) -> Path:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------- what a record was made from
def _code_digest(path: Path) -> str:
    """A digest of a Python file's code, blind to comments and docstrings (so that editing prose
    does not make every record stale)."""
    text = path.read_text()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return hashlib.sha256(text.encode()).hexdigest()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)):
            body[0] = ast.Pass()
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def library_root() -> Path:
    """The folder holding the ``gdlab`` package that this process imports."""
    import gdlab

    return Path(gdlab.__file__).resolve().parent.parent


def source_hash(source: Path, modules: list[str]) -> str:
    """A hash of a chapter source and the gdlab modules (paths like ``gdlab/icl/lsa.py``) it loaded.
    A module that no longer exists hashes as missing, so the record reads as stale."""
    h = hashlib.sha256(hashlib.sha256(source.read_bytes()).digest())
    lib = library_root()
    for rel in sorted(modules):
        path = lib / rel
        h.update(rel.encode() + b"\0" + (_code_digest(path) if path.exists() else "missing").encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- records
def error_record(stem: str, cause: str, meta: dict) -> dict:
    """The record of a run that did not complete."""
    return {"id": ERROR_ID, "kind": "run", "source": "gdlab run", "statement": f"the run did not complete: {cause}",
            "paper_value": None, "measured": None, "details": {}, "tolerance": "", "passed": False,
            "status": "ERROR", "measurement_passed": False, "controls": [], "not_reproduced": None,
            "message": cause, "note": "", "error": cause, "chapter": stem, **meta}


def write_started(root: Path, stem: str, meta: dict) -> Path:
    """Before a run: a record that shows as ERROR until the run completes and replaces it."""
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return write_atomic(claims_path(root, stem),
                        [error_record(stem, f"started at {started} and has not completed "
                                            "(still running, interrupted or killed)", meta)])


def write_records(root: Path, stem: str, claims: list[dict], meta: dict, error: str = "") -> Path:
    """The run's final record: its claims with the run's metadata, and an ERROR entry if it failed
    in a way other than a failed claim."""
    records = [{**meta, **c} for c in claims]  # the kernel's own fields (device name, ...) win
    if error:
        records.insert(0, error_record(stem, error, meta))
    return write_atomic(claims_path(root, stem), records)


def read_records(root: Path, stem: str) -> list[dict] | None:
    """A chapter's latest record, or None where there is none; an unreadable file is an ERROR."""
    path = claims_path(root, stem)
    if not path.exists():
        return None
    try:
        records = json.loads(path.read_text())
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError("not a list of claim objects")
    except (OSError, ValueError) as e:
        return [error_record(stem, f"unreadable record {path.name}: {e}", {})]
    return records


def chapter_state(root: Path, stem: str, records: list[dict] | None) -> tuple[str, str]:
    """(state, why) of a chapter's record: OK, FAIL, ERROR, MISSING or STALE."""
    if records is None:
        return "MISSING", f"no record: run `gdlab run {stem}`"
    errors = [r for r in records if r.get("id") == ERROR_ID]
    if errors:
        return "ERROR", errors[0].get("error") or errors[0].get("message", "")
    if not records:
        return "ERROR", "the record holds no claims"
    source = root / "book" / f"{stem}.md"
    first = records[0]
    if source.exists() and "source_hash" in first:
        if source_hash(source, first.get("modules", [])) != first["source_hash"]:
            return "STALE", "the chapter or the library code it uses changed since this record was made"
    failing = [r["id"] for r in records if status_of(r) in FAILING]
    if failing:
        return "FAIL", f"failed: {', '.join(failing)}"
    return "OK", ""


def params_text(record: dict) -> str:
    params = record.get("params") or {}
    return "defaults" if not params else ", ".join(f"{k}={v}" for k, v in params.items())


def summary_line(records: list[dict]) -> str:
    """"N of M reproductions pass; K declared not reproduced; I of J identities hold"."""
    claims = [r for r in records if r.get("id") != ERROR_ID]
    if claims and all(status_of(r) == "NOT JUDGED" for r in claims):
        return f"smoke run: {len(claims)} claims recorded, not judged"
    repro = [r for r in claims if r.get("kind", "reproduction") == "reproduction"]
    declared = [r for r in repro if r.get("not_reproduced")]
    judged = [r for r in repro if not r.get("not_reproduced")]
    ident = [r for r in claims if r.get("kind") == "identity"]
    n = lambda rs: sum(status_of(r) == "PASS" for r in rs)  # noqa: E731
    text = f"{n(judged)} of {len(judged)} reproductions pass"
    if declared:
        text += f"; {len(declared)} declared not reproduced"
        surprises = [r["id"] for r in declared if status_of(r) == "UNEXPECTED PASS"]
        if surprises:
            text += (f" ({', '.join(surprises)} pass{'es' if len(surprises) == 1 else ''} in this run; remove a "
                     "declaration only if the claim passes at every seed of `gdlab run --seeds`)")
    return text + f"; {n(ident)} of {len(ident)} identities hold"


def print_claims(root: Path, stems: list[str]) -> bool:
    """``gdlab claims``: every chapter of the book with its latest record. False (exit non-zero)
    when any chapter is MISSING, ERROR or STALE, or any claim FAILS."""
    rows, ok, states = [], True, []
    for stem in stems:
        records = read_records(root, stem)
        state, why = chapter_state(root, stem, records)
        states.append((stem, state, why, records))
        ok &= state == "OK"
        if state in ("MISSING", "ERROR"):
            rows.append({"chapter": stem, "id": "-", "kind": "run", "status": state, "statement": why,
                         "measured": None, "tolerance": "", "profile": "", "seed": "", "params": {}})
            continue
        for r in records:
            rows.append({**r, "chapter": stem, "status": "STALE" if state == "STALE" else status_of(r)})
    cols = ("chapter", "id", "kind", "measured", "tolerance", "status", "profile", "seed", "params_text",
            "validated")
    for r in rows:
        r["params_text"] = params_text(r) if r.get("kind") != "run" else ""
    print(table_text(rows, cols))
    print()
    for stem, state, why, records in states:
        line = f"{stem}: {state}" + (f" ({why})" if why else "")
        if records and state not in ("MISSING", "ERROR"):
            r0 = records[0]
            line += (f" -- {summary_line(records)}; profile {r0.get('profile')}, seed {r0.get('seed')}, "
                     f"{params_text(r0)}, device {r0.get('device')}")
        print(line)
    all_records = [r for _, state, _, recs in states if recs and state not in ("MISSING", "ERROR") for r in recs]
    print(f"\nbook: {summary_line(all_records)}" + ("" if ok else "; NOT ALL CHAPTERS OK"))
    return ok


# ---------------------------------------------------------------- several seeds
def _spread(values: list) -> Any:
    """min / mean / max of numbers, key by key for dicts; None where the values are not numbers."""
    vals = [v for v in values if v is not None]
    if vals and all(isinstance(v, dict) for v in vals):
        keys = [k for k in vals[0] if all(k in v for v in vals)]
        return {k: _spread([v[k] for v in vals]) for k in keys}
    nums = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not nums or len(nums) != len(vals):
        return None
    finite = [x for x in nums if math.isfinite(x)]
    mean = sum(finite) / len(finite) if finite else float("nan")
    return {"min": min(nums), "mean": mean, "max": max(nums)}


def seeds_summary(stem: str, runs: dict[int, list[dict]], errors: dict[int, str], meta: dict) -> dict:
    """Per claim and control over seeds: the pass rate and the spread of the measured values."""
    ids = []
    for records in runs.values():
        ids += [r["id"] for r in records if r["id"] not in ids and r["id"] != ERROR_ID]
    claims = []
    for cid in ids:
        per_seed = {s: next((r for r in recs if r["id"] == cid), None) for s, recs in runs.items()}
        present = {s: r for s, r in per_seed.items() if r is not None}
        first = next(iter(present.values()))
        controls = []
        for ctl in first.get("controls") or []:
            vals = {s: next((c for c in r.get("controls", []) if c["name"] == ctl["name"]), None)
                    for s, r in present.items()}
            vals = {s: c for s, c in vals.items() if c is not None}
            controls.append({"name": ctl["name"], "runs": len(vals),
                             "fails": sum(not c["passed"] for c in vals.values()),
                             "measured": {str(s): c["measured"] for s, c in vals.items()},
                             "spread": _spread([c["measured"] for c in vals.values()])})
        claims.append({"id": cid, "kind": first.get("kind"), "statement": first.get("statement"),
                       "source": first.get("source"), "tolerance": first.get("tolerance"),
                       "not_reproduced": first.get("not_reproduced"), "runs": len(present),
                       "passes": sum(status_of(r) in ("PASS", "UNEXPECTED PASS") for r in present.values()),
                       "statuses": {str(s): status_of(r) for s, r in present.items()},
                       "measured": {str(s): r["measured"] for s, r in present.items()},
                       "spread": _spread([r["measured"] for r in present.values()]), "controls": controls})
    return {"chapter": stem, **meta, "seeds": sorted(runs) + sorted(errors),
            "errors": {str(s): e for s, e in errors.items()}, "claims": claims}


def _spread_text(spread) -> str:
    if spread is None:
        return "-"
    if "min" in spread and not isinstance(spread["min"], dict):
        return f"{fmt(spread['min'])} .. {fmt(spread['max'])}"
    return "; ".join(f"{k}: {_spread_text(v)}" for k, v in spread.items())


def seeds_table(summary: dict) -> str:
    rows = []
    for c in summary["claims"]:
        rows.append({"id": c["id"], "kind": c.get("kind") or "", "statement": c["statement"] or "",
                     "rate": f"{c['passes']}/{c['runs']} pass", "measured": _spread_text(c["spread"]),
                     "status": "NOT REPRODUCED (declared)" if c.get("not_reproduced") else ""})
        for ctl in c["controls"]:
            rows.append({"id": "", "kind": "  control", "statement": ctl["name"],
                         "rate": f"{ctl['fails']}/{ctl['runs']} fail", "measured": _spread_text(ctl["spread"]),
                         "status": ""})
    cols = ("id", "kind", "statement", "rate", "measured", "status")
    widths = {c: max(len(c), *(len(str(r[c])[:70]) for r in rows)) if rows else len(c) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(str(r[c])[:70].ljust(widths[c]) for c in cols).rstrip() for r in rows]
    if summary.get("errors"):
        lines += [f"seed {s}: ERROR {e}" for s, e in summary["errors"].items()]
    return "\n".join(lines)
