"""The method library covers the benchmark: every task has at least five real methods on
every zoo model it supports, and every registered method loads, declares a citation and
a typed config."""

from __future__ import annotations

import dataclasses
from collections import Counter

from bench.method import Method, MethodConfig
from bench.registry import METHODS
from bench.harness.runner import plan


def test_every_registered_method_loads_with_a_citation_and_a_typed_config():
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert issubclass(cls, Method) and cls.name == name, name
        if cls.reference:
            continue
        assert cls.capabilities, f"{name} declares no capability"
        assert issubclass(cls.Config, MethodConfig) and dataclasses.is_dataclass(cls.Config), name
        assert cls.Config.__dataclass_params__.frozen, f"{name}'s config must be frozen (hashable, recorded)"
        for f in dataclasses.fields(cls.Config):
            assert f.type not in (None, "Any"), f"{name}.{f.name} is untyped"
        doc = (__import__(cls.__module__, fromlist=["_"]).__doc__ or "") + (cls.__doc__ or "")
        assert any(str(y) in doc for y in range(2010, 2027)), f"{name} cites no paper (no year in its docstrings)"


def test_every_task_has_five_real_methods_on_every_compatible_zoo_model():
    p = plan(None, None, None, [0], quick=True)
    counts = Counter((c.task, c.model) for c in p.cells if c.method not in ("random", "oracle"))
    pairs = {(c.task, c.model) for c in p.cells}
    assert len(pairs) >= 12, sorted(pairs)  # every task × compatible zoo model is planned
    thin = {pair: n for pair, n in counts.items() if n < 5}
    missing = sorted(pair for pair in pairs if pair not in counts)
    assert not thin and not missing, f"fewer than five methods: {thin or missing}"


def test_bench_list_shows_where_each_method_applies(capsys):
    from bench.app.cli import main

    main(["list", "methods"])
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip()}
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert all(c in lines[name] for c in cls.capabilities) and all(f in lines[name] for f in cls.families)
