"""User-facing errors: the CLI prints these as one line and exits non-zero."""

from __future__ import annotations

import difflib
from typing import Iterable


class BenchError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class UnknownName(BenchError):
    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint} (known: {', '.join(known) or 'none'})")
        self.name = name
        self.suggestions = close


class Incompatible(BenchError):
    """A (task, method, model) combination that cannot run, with the reason."""
