"""Claims: a paper's finding, our measurement, a tolerance fixed in advance, and controls.

A chapter builds one :class:`Claims` registry and records two kinds of claim:

- a **reproduction** states what a paper found. It names one or more *controls*: the same
  measurement, by the same code, under the condition the paper rules out (a large
  initialization, the zero predictor, gradient flow, clean labels, random edits). It is judged
  by one criterion; the claim passes only when its measurement passes the criterion **and
  every control fails it**. A control that passes means the check cannot tell the effect from
  its absence, and the claim FAILS;
- an **identity** is an exact property of our own code ("the constructed layer equals one GD
  step"). It needs no control and is listed apart.

A finding the book cannot reproduce at its scale is declared up front
(``Claims.for_runtime(..., not_reproduced={"C5": "why"})``): it is still measured, with its
controls, and shows as NOT REPRODUCED without failing the build (UNEXPECTED PASS if it passes,
so that the declaration is removed). At the ``smoke`` profile claims are recorded, NOT JUDGED.

The chapter ends with ``claims.report()``: it displays the table, publishes the claims as JSON
inside the notebook (the book pipeline reads them and writes ``_build/claims/<stem>.json``) and
raises :class:`ClaimFailure` if a claim failed.
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

__all__ = ["MIMETYPE", "COLUMNS", "KINDS", "FAILING", "ClaimFailure", "Control", "ControlResult", "Claim",
           "fmt", "Claims", "table_text", "STATUS_COLORS", "table_html", "status_of"]


MIMETYPE = "application/vnd.gdlab.claims+json"
COLUMNS = ("id", "source", "statement", "paper_value", "measured", "tolerance", "status")
KINDS = ("reproduction", "identity")
# statuses; only FAIL (and, for a whole run, ERROR / MISSING / STALE) fails the build
PASS, FAIL, NOT_REPRODUCED, UNEXPECTED_PASS, NOT_JUDGED = (
    "PASS", "FAIL", "NOT REPRODUCED", "UNEXPECTED PASS", "NOT JUDGED")
FAILING = ("FAIL", "ERROR", "MISSING", "STALE")


class ClaimFailure(AssertionError):
    """Raised by :meth:`Claims.report` when a claim failed."""


class Control:
    """A control's measured value, with optional details shown beside it:
    ``Control(err, residual=1e-9, rank=15)``. A plain value is a control without details."""

    def __init__(self, measured: Any, **details: Any):
        self.measured = measured
        self.details = details

    def __repr__(self) -> str:
        return f"Control({fmt(self.measured)}{', ' + fmt(self.details) if self.details else ''})"


@dataclass
class ControlResult:
    name: str
    measured: Any
    details: dict
    passed: bool


@dataclass
class Claim:
    id: str
    source: str
    statement: str
    paper_value: Any
    measured: Any
    tolerance: str
    measurement_passed: bool
    kind: str = "reproduction"
    controls: list[ControlResult] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    not_reproduced: str | None = None
    judged: bool = True
    note: str = ""

    @property
    def passed(self) -> bool:
        """The measurement passes and every control fails."""
        return self.measurement_passed and not any(c.passed for c in self.controls)

    @property
    def status(self) -> str:
        if not self.judged:
            return NOT_JUDGED
        if self.passed:
            return UNEXPECTED_PASS if self.not_reproduced else PASS
        return NOT_REPRODUCED if self.not_reproduced else FAIL

    @property
    def message(self) -> str:
        """Why the claim has its status, in words (empty for a plain PASS)."""
        parts = []
        if not self.measurement_passed:
            parts.append("the measurement fails its criterion")
        parts += [f"control {c.name!r} passes too: the check cannot tell the effect from its absence"
                  for c in self.controls if c.passed]
        if self.not_reproduced:
            parts.append(("declared not reproduced, but it passes: remove the declaration"
                          if self.passed else f"declared not reproduced: {self.not_reproduced}"))
        return "; ".join(parts)

    def record(self) -> dict:
        return {"id": self.id, "kind": self.kind, "source": self.source, "statement": self.statement,
                "paper_value": self.paper_value, "measured": self.measured, "details": self.details,
                "tolerance": self.tolerance, "passed": self.passed, "status": self.status,
                "measurement_passed": self.measurement_passed,
                "controls": [{"name": c.name, "measured": c.measured, "details": c.details, "passed": c.passed}
                             for c in self.controls],
                "not_reproduced": self.not_reproduced, "message": self.message, "note": self.note}

    def __repr__(self) -> str:
        ctl = "".join(f"; control {c.name!r} {fmt(c.measured)} {'passes' if c.passed else 'fails'}"
                      for c in self.controls)
        return f"{self.id} {self.status}: measured {fmt(self.measured)} ({self.tolerance}){ctl}"


def fmt(value: Any) -> str:
    """Compact display of numbers, lists and dicts of numbers."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        a = abs(value)
        return f"{value:.3g}" if 1e-3 <= a < 1e4 else f"{value:.2e}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def _plain(value: Any) -> Any:
    """Make numpy/torch scalars and arrays JSON-serializable."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass
class Claims:
    """The claim registry of one chapter."""

    chapter: str
    profile: str = "quick"
    seed: int = 0
    device: str = "cpu"
    not_reproduced: dict[str, str] = field(default_factory=dict)
    items: list[Claim] = field(default_factory=list)

    @classmethod
    def for_runtime(cls, chapter: str, rt, not_reproduced: Mapping[str, str] | None = None) -> "Claims":
        """The registry of a chapter run by ``rt``. ``not_reproduced`` declares, before the run, the
        claims the book cannot reproduce at its scale, each with its reason."""
        declared = dict(not_reproduced or {})
        for key, reason in declared.items():
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(f"not_reproduced[{key!r}]: give the reason as a sentence")
        return cls(chapter=chapter, profile=rt.profile, seed=rt.seed, device=rt.device_name,
                   not_reproduced=declared)

    @property
    def judged(self) -> bool:
        return self.profile != "smoke"

    # ---- recording
    def check(self, id: str, *, source: str, statement: str, measured: Any, tolerance: str,
              passed: bool | None = None, criterion: Callable[[Any], bool] | None = None,
              controls: Mapping[str, Any] | None = None, kind: str = "reproduction",
              paper_value: Any = None, details: Mapping[str, Any] | None = None, note: str = "") -> Claim:
        """Record a claim. Give ``criterion`` (a function of a measured value, used for the measurement
        and every control), or for a claim without controls the verdict ``passed`` itself."""
        if any(c.id == id for c in self.items):
            raise ValueError(f"claim id {id!r} is recorded twice")
        if kind not in KINDS:
            raise ValueError(f"claim {id}: kind must be one of {KINDS}, got {kind!r}")
        controls = dict(controls or {})
        if kind == "reproduction" and not controls:
            raise ValueError(f"claim {id} is a reproduction and names no control: give controls={{name: value}} "
                             "(the same measurement under the condition the paper rules out), or use "
                             "claims.identity(...) for an exact property of our own code")
        if kind == "identity" and controls:
            raise ValueError(f"claim {id}: an identity has no controls")
        if (passed is None) == (criterion is None):
            raise ValueError(f"claim {id}: give exactly one of passed= and criterion=")
        if controls and criterion is None:
            raise ValueError(f"claim {id}: controls need criterion= (the same test as the measurement)")
        if id in self.not_reproduced and kind == "identity":
            raise ValueError(f"claim {id}: an identity cannot be declared not reproduced")

        def judge(value) -> bool:  # a criterion that raises is a bug in the chapter: let it show
            return bool(criterion(value))

        ok = bool(passed) if criterion is None else judge(measured)
        results = []
        for name, ctl in controls.items():
            value, extra = (ctl.measured, ctl.details) if isinstance(ctl, Control) else (ctl, {})
            results.append(ControlResult(str(name), _plain(value), _plain(dict(extra)), judge(value)))
        claim = Claim(id, source, statement, _plain(paper_value), _plain(measured), tolerance, ok, kind,
                      results, _plain(dict(details or {})), self.not_reproduced.get(id), self.judged, note)
        self.items.append(claim)
        return claim

    def close(self, id: str, *, source: str, statement: str, measured: float, target: float,
              rtol: float = 0.0, atol: float = 0.0, paper_value: Any = None, **kw) -> Claim:
        """PASS iff ``|measured - target| <= atol + rtol |target|`` (for the measurement; every control must fail it)."""
        target = float(target)
        tol = " + ".join(t for t in (f"atol {atol:g}" if atol else "", f"rtol {rtol:g}" if rtol else "") if t)

        def criterion(x):
            x = float(x)
            return _finite(x) and abs(x - target) <= atol + rtol * abs(target)

        return self._shortcut(id, source, statement, measured, criterion, f"|x - {fmt(target)}| <= {tol or '0'}",
                              target if paper_value is None else paper_value, kw)

    def between(self, id: str, *, source: str, statement: str, measured: float, lo: float, hi: float,
                paper_value: Any = None, **kw) -> Claim:
        """PASS iff lo <= measured <= hi."""
        return self._shortcut(id, source, statement, measured, lambda x: _finite(float(x)) and lo <= float(x) <= hi,
                              f"in [{fmt(lo)}, {fmt(hi)}]", paper_value, kw)

    def at_most(self, id: str, *, source: str, statement: str, measured: float, bound: float,
                paper_value: Any = None, **kw) -> Claim:
        """PASS iff measured <= bound."""
        return self._shortcut(id, source, statement, measured, lambda x: _finite(float(x)) and float(x) <= bound,
                              f"<= {fmt(bound)}", paper_value, kw)

    def at_least(self, id: str, *, source: str, statement: str, measured: float, bound: float,
                 paper_value: Any = None, **kw) -> Claim:
        """PASS iff measured >= bound."""
        return self._shortcut(id, source, statement, measured, lambda x: _finite(float(x)) and float(x) >= bound,
                              f">= {fmt(bound)}", paper_value, kw)

    def identity(self, id: str, *, source: str, statement: str, measured: Any, bound: float | None = None,
                 passed: bool | None = None, tolerance: str | None = None, paper_value: Any = None,
                 details: Mapping[str, Any] | None = None, note: str = "") -> Claim:
        """An exact property of our own code: ``measured <= bound`` (an error), or a verdict ``passed``
        with its ``tolerance`` in words. Listed apart from the reproductions; no controls."""
        if (bound is None) == (passed is None):
            raise ValueError(f"claim {id}: give exactly one of bound= and passed=")
        if bound is not None:
            value = float(measured)
            passed, tolerance = _finite(value) and value <= bound, tolerance or f"<= {fmt(bound)}"
        if not tolerance:
            raise ValueError(f"claim {id}: say what was checked in tolerance=")
        return self.check(id, source=source, statement=statement, measured=measured, passed=passed,
                          tolerance=tolerance, kind="identity", paper_value=paper_value, details=details,
                          note=note)

    def _shortcut(self, id, source, statement, measured, criterion, tolerance, paper_value, kw) -> Claim:
        kind = kw.pop("kind", "reproduction")
        if kind == "identity":
            if kw.get("controls"):
                raise ValueError(f"claim {id}: an identity has no controls")
            kw.pop("controls", None)
            return self.check(id, source=source, statement=statement, measured=measured,
                              passed=criterion(measured), tolerance=tolerance, kind=kind,
                              paper_value=paper_value, **kw)
        return self.check(id, source=source, statement=statement, measured=measured, criterion=criterion,
                          tolerance=tolerance, kind=kind, paper_value=paper_value, **kw)

    # ---- output
    @property
    def failed(self) -> list[Claim]:
        """The claims that fail the build (status FAIL)."""
        return [c for c in self.items if c.status == FAIL]

    @property
    def missing_declared(self) -> list[str]:
        """Ids declared not reproduced but never recorded."""
        recorded = {c.id for c in self.items}
        return [k for k in self.not_reproduced if k not in recorded]

    def records(self) -> list[dict]:
        """The claims in the command-line contract's JSON format (the pipeline adds the run's metadata)."""
        meta = {"chapter": self.chapter, "profile": self.profile, "seed": self.seed, "device": self.device}
        return [{**c.record(), **meta} for c in self.items]

    def run_info(self) -> dict:
        """What the kernel knows about the run: threads, versions, and the gdlab modules it loaded
        (the pipeline hashes them to tell a stale record or kept notebook)."""
        import platform
        import sys

        import torch

        import gdlab

        root = Path(gdlab.__file__).resolve().parent
        modules = sorted(str(Path(m.__file__).resolve().relative_to(root.parent))
                         for name, m in list(sys.modules.items())
                         if (name == "gdlab" or name.startswith("gdlab.")) and getattr(m, "__file__", None)
                         and Path(m.__file__).resolve().is_relative_to(root))
        return {"threads": torch.get_num_threads(), "modules": modules,
                "versions": {"python": platform.python_version(), "torch": torch.__version__,
                             "gdlab": gdlab.__version__}}

    def table_text(self) -> str:
        return table_text(self.records())

    def table_html(self) -> str:
        return table_html(self.records())

    def report(self, raise_on_failure: bool = True) -> None:
        """Display the claims table, publish the JSON, and fail loudly if a claim failed."""
        from IPython.display import display

        bundle = {"text/plain": self.table_text(), "text/html": self.table_html(),
                  MIMETYPE: {"chapter": self.chapter, "claims": self.records(), "run": self.run_info()}}
        display(bundle, raw=True)
        if not raise_on_failure:
            return
        if self.missing_declared:
            raise ClaimFailure(f"declared not reproduced but never recorded: {', '.join(self.missing_declared)}")
        if self.failed:
            ids = ", ".join(c.id for c in self.failed)
            raise ClaimFailure(f"{len(self.failed)} of {len(self.items)} claims failed: {ids}")

    def to_json(self) -> str:
        return json.dumps(self.records(), indent=1)


# ---------------------------------------------------------------- tables
def _display_rows(records: Iterable[dict]) -> list[tuple[dict, bool]]:
    """Reproductions first, then identities under a heading row; each claim followed by its
    controls. Returns (row, is_secondary) pairs, where heading and control rows are secondary."""
    records = list(records)
    ordered = [r for r in records if r.get("kind", "reproduction") != "identity"]
    identities = [r for r in records if r.get("kind") == "identity"]
    rows = []
    for r in ordered + identities:
        if identities and r is identities[0]:
            rows.append(({"kind": "heading", "source": "identities:",
                          "statement": "exact properties of our own code (no controls)"}, True))
        rows.append((r, False))
        for c in r.get("controls") or []:
            rows.append(({**{k: "" for k in r}, "id": "", "source": "  control",
                          "chapter": r.get("chapter", ""), "statement": c["name"], "measured": c["measured"],
                          "details": c.get("details") or {}, "tolerance": "same criterion",
                          "status": "passes (bad)" if c["passed"] else "fails (good)",
                          "passed": not c["passed"], "kind": "control"}, True))
    return rows


def table_text(records: Iterable[dict], columns: tuple = COLUMNS, width: int = 60) -> str:
    """A plain-text table of claim records (used in the terminal and as the notebook's text/plain)."""
    rows = [[_cell(r, c)[:width] for c in columns] for r, _ in _display_rows(records)]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(out)


STATUS_COLORS = {PASS: "#1a7f37", FAIL: "#cf222e", NOT_REPRODUCED: "#9a6700", UNEXPECTED_PASS: "#9a6700",
                 NOT_JUDGED: "#57606a", "ERROR": "#cf222e", "MISSING": "#cf222e", "STALE": "#cf222e",
                 "fails (good)": "#1a7f37", "passes (bad)": "#cf222e"}


def table_html(records: Iterable[dict], columns: tuple = COLUMNS) -> str:
    pad = 'style="padding:2px 8px;text-align:left;vertical-align:top"'
    head = "".join(f"<th {pad}>{html.escape(c.replace('_', ' '))}</th>" for c in columns)
    body = []
    for r, is_control in _display_rows(records):
        cells = []
        for c in columns:
            text = html.escape(_cell(r, c))
            if c == "status":
                text = f'<b style="color:{STATUS_COLORS.get(r.get("status"), "#000")}">{text}</b>'
            cells.append(f"<td {pad}>{text}</td>")
        style = ' style="color:#57606a;font-size:0.95em"' if is_control else ""
        body.append(f"<tr{style}>" + "".join(cells) + "</tr>")
    return ('<table class="gdlab-claims" style="border-collapse:collapse;font-size:0.85em">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def status_of(record: dict) -> str:
    """A record's status (records written before statuses existed have only ``passed``)."""
    return record.get("status") or (PASS if record.get("passed") else FAIL)


def _cell(record: dict, column: str) -> str:
    if record.get("kind") == "heading":
        return record.get(column, "")
    if column == "status":
        return status_of(record)
    if column == "wall_time_s":
        value = record.get(column)
        return "-" if value is None else f"{value:.0f} s"
    value = record.get(column)
    text = value if isinstance(value, str) else fmt(value)
    if column == "measured" and record.get("details"):
        text += f" ({fmt(record['details'])})"
    return text
