"""MMI-Bench. ``bench.evaluate(...)`` is the library API (:mod:`bench.app.api`).

The package's ``__init__`` runs before any of its modules is imported, the contracts
(``bench.sites``, ``bench.method``...) included, so it imports nothing itself: ``evaluate`` and
``Results`` are resolved on first use (PEP 562), keeping the core layer free of the harness. The
module is named as a string: a cell's fingerprint (:mod:`bench.harness.identity`) follows every module's
imports and parent packages, and the API is a dependency of no task, method or model.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["evaluate", "Results"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("bench.app.api"), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
