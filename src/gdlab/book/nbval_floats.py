"""A pytest plugin for ``gdlab run --validate``: nbval compares the numbers inside JSON outputs
(the claims record, ``application/vnd.gdlab.claims+json``) to 10 significant digits, and numbers
below 1e-12 in size as zero.

nbval compares a non-text output exactly, and its sanitizing patterns apply to text only. Some
LAPACK calls (MKL's least squares on a 2 x 2 system in Chapter 2's Soudry asymptotics) return
results that differ in the last bit from one process to the next on identical inputs, so an exact
comparison fails a re-run that reproduced every number a claim uses. Ten significant digits is
far finer than any claim's tolerance (the tightest is 1e-9 of an O(1) value) and far coarser than
last-bit noise (1e-16), so a real change still fails validation. Near zero the noise is absolute
(a residual of 3e-17 on one run is 5e-17 on the next), so sizes below :data:`TINY` compare as 0;
the tightest identity bound is 1e-9. Text outputs are compared as before, after the patterns of
:data:`gdlab.book.run.NBVAL_SANITIZE`.
"""
from __future__ import annotations

__all__ = ["DIGITS", "TINY", "round_floats", "pytest_configure"]

#: Significant digits kept of every float in a JSON output before nbval compares it.
DIGITS = 10
#: Floats smaller than this in size compare as 0.
TINY = 1e-12


def round_floats(value, digits: int = DIGITS):
    """``value`` (JSON: dicts, lists, numbers, strings) with every float rounded to ``digits``
    significant digits, and those below :data:`TINY` in size set to 0; everything else unchanged."""
    if isinstance(value, float):
        return 0.0 if abs(value) < TINY else float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [round_floats(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    return value


def pytest_configure(config) -> None:  # pragma: no cover - runs inside nbval's pytest process
    from nbval.plugin import IPyNbCell

    if getattr(IPyNbCell.sanitize, "_gdlab", False):
        return
    text_sanitize = IPyNbCell.sanitize

    def sanitize(self, s):
        return text_sanitize(self, s) if isinstance(s, str) else round_floats(s)

    sanitize._gdlab = True
    IPyNbCell.sanitize = sanitize
