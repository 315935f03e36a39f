"""The CLI's small traps (issue 19): stores left behind or written by reads, profile hints and
headers, config variants labelled by what differs, scoped ``--config``, ``bench describe``,
``--jobs`` checked and capped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bench.app import cli
from bench.harness import runner
from bench.app.cli import main
from bench.errors import BenchError
from bench.records import CellKey, RunRecord, config_hash
from bench.harness.store import Store
from leaderboard.render import render
from leaderboard.scorer import score, variant_label


def rec(method: str, seed: int, acc: float, *, profile: str = "full", config: dict | None = None,
        task: str = "toy") -> RunRecord:
    config = dict(config or {})
    key = CellKey(task=task, task_version="1.0", method=method, method_config_hash=config_hash(config),
                  model="m", seed=seed, profile=profile)
    return RunRecord(key=key, status="ok", metrics={"acc": acc}, main_score="acc", method_config=config,
                     created_at=1000.0 + seed)


def make_store(path: Path, records: list[RunRecord]) -> Path:
    store = Store(path)
    for r in records:
        store.put(r)
    store.close()
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ stores
@pytest.mark.parametrize("argv", [["--task", "nosuch"], ["--jobs", "0"], ["--method", "salency"],
                                  ["--method", "saliency", "--method", "gradcam", "--config", "n_steps=8"],
                                  ["--config", "saliency.nosuch=1", "--method", "saliency", "--task", "nosuch"]])
def test_a_refused_evaluate_leaves_no_store_file(tmp_path, capsys, argv):
    store = tmp_path / "x.sqlite"
    assert main(["evaluate", *argv, "--store", str(store), "--no-progress"]) == 2
    err_line(capsys)
    assert not store.exists() and not list(tmp_path.iterdir())


def test_reading_commands_never_change_the_store(tmp_path, capsys):
    path = make_store(tmp_path / "s.sqlite", [rec(m, s, 0.1 * s + i / 10, profile="quick")
                                              for i, m in enumerate(("random", "oracle", "a", "b")) for s in (0, 1)])
    before, files = sha(path), sorted(p.name for p in tmp_path.iterdir())
    for fmt in ("md", "json", "csv"):
        assert main(["leaderboard", "--store", str(path), "--profile", "quick", "--format", fmt]) == 0
    assert main(["leaderboard", "--store", str(path)]) == 0  # the full profile: nothing matches
    main(["samples", "--store", str(path), "--task", "toy", "--model", "m"])  # (stored without rows)
    main(["power", "--store", str(path), "--task", "toy", "--model", "m", "--profile", "quick"])
    assert sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no -wal / -shm beside it


# ------------------------------------------------------------ profile hints
def test_a_filter_matching_only_the_other_profile_says_so(tmp_path, capsys):
    path = make_store(tmp_path / "s.sqlite", [rec("a", 0, 0.5, profile="quick")])
    assert main(["leaderboard", "--store", str(path)]) == 0
    out = capsys.readouterr()
    assert ("no full-profile results match; the store holds quick-profile results: add --profile quick"
            in out.out)
    assert main(["leaderboard", "--store", str(path), "--format", "json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == [] and "add --profile quick" in out.err
    assert main(["leaderboard", "--store", str(path), "--profile", "quick", "--method", "nosuch"]) == 0
    assert "add --profile" not in capsys.readouterr().out  # nothing in the other profile either


def test_table_headers_name_the_profile(tmp_path):
    rows = score([rec(m, 0, v, profile="quick") for m, v in (("random", 0.1), ("oracle", 0.9), ("a", 0.5))])
    assert {r.profile for r in rows} == {"quick"}
    assert "### toy v1.0 — m (quick profile)" in render(rows, "md")
    assert "\\paragraph{toy v1.0 — m (quick profile)}" in render(rows, "latex")
    from leaderboard.html import page

    html = page(rows, {})
    assert "<h3>toy v1.0 — m (quick profile)</h3>" in html


# ------------------------------------------------------------ variant labels
def test_config_variants_are_labelled_by_what_differs():
    defaults = runner.make_method("integrated_gradients").config_dict()
    sweep = {**defaults, "n_steps": 8}
    both = {**defaults, "n_steps": 4, "baseline": "blur"}
    records = [rec("integrated_gradients", 0, 0.4, config=defaults),
               rec("integrated_gradients", 0, 0.3, config=sweep),
               rec("integrated_gradients", 0, 0.2, config=both),
               rec("saliency", 0, 0.1)]
    rows = score(records)
    labels = {r.method for r in rows}
    assert labels == {"integrated_gradients", "integrated_gradients[n_steps=8]",
                      "integrated_gradients[baseline=blur, n_steps=4]", "saliency"}
    md = render(rows, "md")
    assert "| integrated_gradients[n_steps=8] " in md
    assert "integrated_gradients[n_steps=8]" in {r["method"] for r in json.loads(render(rows, "json"))}
    # not registered, or no option differs (the hashes do): the hash
    assert variant_label("nosuch", {"k": 1}, "abcdef123") == "nosuch@abcdef"
    rows = score([rec("nosuch", 0, 0.1, config={"k": 1}), rec("nosuch", 0, 0.2, config={"k": 2})])
    assert {r.method for r in rows} == {f"nosuch@{config_hash({'k': 1})[:6]}", f"nosuch@{config_hash({'k': 2})[:6]}"}


# ------------------------------------------------------------ scoped --config
def test_scoped_config_reaches_one_method_only():
    assert cli.scoped_overrides(["integrated_gradients.n_steps=8"], ["saliency", "integrated_gradients"]) == \
        {"integrated_gradients": {"n_steps": 8}}
    # unscoped with one non-reference method named: today's meaning
    assert cli.scoped_overrides(["n_steps=8", "baseline=blur"], ["integrated_gradients", "random"]) == \
        {"integrated_gradients": {"n_steps": 8, "baseline": "blur"}}
    with pytest.raises(BenchError, match=r"saliency, integrated_gradients\).*METHOD.n_steps=8"):
        cli.scoped_overrides(["n_steps=8"], ["saliency", "integrated_gradients"])
    with pytest.raises(BenchError, match="grid runs every method"):
        cli.scoped_overrides(["n_steps=8"], None)
    p = runner.plan(["attribution"], ["saliency", "integrated_gradients", "random"], ["zoo-clip"], [0], quick=True,
                    overrides_by_method={"integrated_gradients": {"n_steps": 8}})
    by = {c.method: c for c in p.cells}
    assert by["integrated_gradients"].method_overrides == (("n_steps", 8),)
    assert by["saliency"].method_overrides == () and by["random"].method_overrides == ()
    assert runner.cell_key(by["integrated_gradients"]).method_config_hash != \
        runner.cell_key(runner.Cell("attribution", "integrated_gradients", "zoo-clip", 0, True)).method_config_hash
    with pytest.raises(BenchError, match="has no config option 'n_step'"):
        runner.plan(["attribution"], ["integrated_gradients"], ["zoo-clip"], [0], quick=True,
                    overrides_by_method={"integrated_gradients": {"n_step": 8}})
    with pytest.raises(BenchError, match="not in the grid"):
        runner.plan(["attribution"], ["saliency"], ["zoo-clip"], [0], quick=True,
                    overrides_by_method={"integrated_gradients": {"n_steps": 8}})


# ------------------------------------------------------------------ describe
def test_describe_prints_options_types_defaults_and_definition(capsys):
    assert main(["describe", "method", "integrated_gradients"]) == 0
    out = capsys.readouterr().out
    assert "Integrated gradients (Sundararajan et al., 2017)" in out
    assert any(l.split()[:4] == ["n_steps", "int", "default", "32"] for l in out.splitlines())
    assert "--config integrated_gradients.OPTION=VALUE" in out and "capabilities: attribute" in out
    assert main(["describe", "task", "attribution"]) == 0
    out = capsys.readouterr().out
    assert "attribution: task v" in out and "pointing_game" in out
    assert any(l.split()[:4] == ["n_examples", "int", "default", "64"] for l in out.splitlines())
    assert main(["describe", "model", "zoo-clip"]) == 0
    assert "family: contrastive" in capsys.readouterr().out
    assert main(["describe", "method", "salency"]) == 2
    assert "did you mean 'saliency'" in err_line(capsys)


# ---------------------------------------------------------------------- jobs
def test_jobs_checked_and_capped(tmp_path, monkeypatch, capsys):
    for bad in ("0", "-5"):
        assert main(["evaluate", "--jobs", bad, "--store", str(tmp_path / "x.sqlite")]) == 2
        assert "--jobs must be a positive integer" in err_line(capsys)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    assert cli.check_jobs(1000) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: --jobs 1000 is more than the 2 cores of this machine; using 2"]
    assert cli.check_jobs(2) == 2 and capsys.readouterr().err == ""


def test_never_more_workers_than_cells_to_run(tmp_path, monkeypatch):
    started = []

    def fake_executor(n):
        started.append(n)
        return None

    monkeypatch.setattr(runner, "default_executor", fake_executor)
    cells = runner.plan(["attribution"], ["random"], ["zoo-clip"], [0], quick=True).cells
    store = Store(tmp_path / "s.sqlite", lazy=True)
    runner.run_grid(cells, store, jobs=16, progress=False)  # one cell: in this process
    assert started == [] and len(store) == 1
    runner.run_grid(cells, store, jobs=16, progress=False)  # all stored: no worker at all
    assert started == []


# ------------------------------------------------------- quick answers (item 5)
def test_registry_metadata_agrees_with_the_classes():
    """Listing reads a built-in's capabilities, families (and a task's spec fields, its version
    from the module's source) without importing it: they must say what the classes say."""
    from bench.registry import METHODS, MODELS, TASKS
    from models.hf_loader import FAMILIES

    for name in TASKS.names():
        entry = TASKS.entry(name)
        if entry.is_plugin or entry.is_object:
            continue
        cls, meta = entry.load(), cli.task_meta(name)
        fix = f"task {name!r}: write its spec's fields as literals (they are read without importing it)"
        assert cls.__module__ == entry.target.partition(":")[0], fix
        assert meta["version"] == cls.spec.version, "the task's spec must give version=\"...\" literally"
        assert sorted(meta["families"]) == sorted(cls.spec.families), fix
        assert (meta["capability"], meta["main_score"]) == (cls.spec.capability, cls.spec.main_score), fix
        assert tuple(meta["data_kinds"]) == tuple(cls.data_kinds), fix
    for name in METHODS.names():
        entry = METHODS.entry(name)
        if entry.is_plugin or entry.is_object:
            continue
        cls, meta = entry.load(), cli.method_meta(name)
        fix = f"method {name!r}: declare name, capabilities, families and reference as literals in its class"
        assert cls.__module__ == entry.target.partition(":")[0], fix
        assert sorted(meta["capabilities"]) == sorted(cls.capabilities), fix
        assert sorted(meta["families"]) == sorted(cls.families), fix
        assert meta["reference"] == bool(cls.reference), fix
    for name in MODELS.names():
        assert MODELS.entry(name).meta.get("family") in ("contrastive", "generative", "diffusion")
    assert cli.hf_families() == dict(FAMILIES)


def test_every_builtin_class_is_discovered():
    """Every concrete Method / Task subclass with a name defined in ``methods/`` / ``tasks/`` is
    registered under that name from its own module, with nothing else to edit (issue 22)."""
    import importlib
    import inspect

    from bench.method import Method
    from bench.registry import METHODS, PROJECT_ROOT, TASKS
    from bench.task import Task

    for package, base, reg in (("methods", Method, METHODS), ("tasks", Task, TASKS)):
        for path in sorted((PROJECT_ROOT / package).glob("*.py")):
            if path.name.startswith("_"):
                continue
            module = importlib.import_module(f"{package}.{path.stem}")
            for cls in vars(module).values():
                if not (inspect.isclass(cls) and issubclass(cls, base) and cls.__module__ == module.__name__
                        and not inspect.isabstract(cls)):
                    continue
                name = cls.name if base is Method else cls.spec.name
                assert name in reg, f"{cls.__qualname__} in {path.name} is not discovered"
                assert reg.entry(name).target == f"{module.__name__}:{cls.__qualname__}"


def test_a_new_method_file_is_registered_with_nothing_else(tmp_path, monkeypatch):
    """Discovery reads a module's declarations from its source: a new file in methods/ is a new
    method (here: the declarations of a copy of saliency.py under another name)."""
    from bench.registry import PROJECT_ROOT, declared

    src = (PROJECT_ROOT / "methods" / "saliency.py").read_text().replace('name = "saliency"', 'name = "my_saliency"')
    ((name, target, meta),) = declared(src, "methods.my_saliency", "method")
    assert (name, target) == ("my_saliency", "methods.my_saliency:Saliency")
    assert meta == {"capabilities": ("attribute",), "families": ("contrastive", "diffusion", "generative"),
                    "reference": False}
    # the folder scan: the new file is found beside the others (answers off: no kept discovery)
    import bench.registry as registry

    (tmp_path / "methods").mkdir()
    for f in ("saliency.py", "occlusion.py"):
        (tmp_path / "methods" / f).write_text((PROJECT_ROOT / "methods" / f).read_text())
    (tmp_path / "methods" / "my_saliency.py").write_text(src)
    monkeypatch.setenv("MMI_BENCH_CACHE", "off")
    monkeypatch.setattr(registry, "PROJECT_ROOT", tmp_path)
    assert [n for n, _, _ in registry.discover("methods", "method")] == ["my_saliency", "occlusion", "saliency"]
    assert declared("class X:\n    name = f'{y}'\n    capabilities = frozenset({'attribute'})\n",
                    "methods.x", "method") == []  # not a literal: not a declaration


def test_kept_answers_follow_the_stamp(tmp_path, monkeypatch):
    from bench import answers

    monkeypatch.setenv("MMI_BENCH_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"a": (1, 2)}

    assert answers.remember("t", ["k"], compute) == {"a": [1, 2]}  # as JSON holds it, first time too
    assert answers.remember("t", ["k"], compute) == {"a": [1, 2]} and len(calls) == 1
    assert answers.remember("t", ["other"], compute) and len(calls) == 2
    monkeypatch.setattr(answers, "stamp", lambda: "another code")
    assert answers.remember("t", ["k"], compute) and len(calls) == 3
    monkeypatch.setenv("MMI_BENCH_CACHE", "off")
    answers.remember("t", ["k"], compute)
    answers.remember("t", ["k"], compute)
    assert len(calls) == 5


NO_TORCH = """
import sys, time
t0 = time.perf_counter()
from bench.app.cli import main
rc = main(sys.argv[1:])
assert "torch" not in sys.modules, "torch was imported"
print(f"rc={rc} seconds={time.perf_counter() - t0:.2f}", file=sys.stderr)
"""


def test_quick_questions_import_no_torch_and_load_no_model(tmp_path, monkeypatch, capsys):
    """Listing, and once a grid is stored: evaluating it again and its leaderboard, import no
    torch (so no model is loaded either): they answer in well under 2 s on a 2-core machine."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMI_BENCH_CACHE": str(tmp_path / "cache")}
    store = str(tmp_path / "s.sqlite")
    grid = ["evaluate", "--task", "attribution", "--model", "zoo-clip", "--method", "random", "--no-references",
            "--quick", "--jobs", "1", "--no-progress", "--store", store]

    def run(*argv):
        return subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True,
                              env=env, timeout=300)

    # the grid is stored in-process (this process has torch and zoo-clip loaded already); what is
    # measured, the answers from the store, each run in a fresh interpreter
    monkeypatch.setenv("MMI_BENCH_CACHE", env["MMI_BENCH_CACHE"])
    capsys.readouterr()
    rc = main(grid)
    first = capsys.readouterr()
    assert rc == 0, first.err
    from bench.registry import METHODS, MODELS, TASKS

    # a plugin's facts come from its class (importing it, and torch): listing its kind is exempt
    plugged = {kind for kind, reg in (("tasks", TASKS), ("methods", METHODS), ("models", MODELS))
               if any(reg.entry(n).is_plugin for n in reg.names())}
    for argv in ([["list", k] for k in ("tasks", "methods", "models") if k not in plugged]
                 + [grid, ["leaderboard", "--store", store, "--profile", "quick"]]):
        cp = run(*argv)
        assert cp.returncode == 0 and "rc=0" in cp.stderr, (argv, cp.stderr)
    cp = run(*grid)
    assert "0 cells ran, 1 already stored" in cp.stderr
    assert cp.stdout == first.out  # the same table, kept
