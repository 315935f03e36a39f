"""A cell's identity (:mod:`bench.harness.identity`): a stored cell is reused only while everything it
depends on is unchanged. One cheap cell run into a store, then each ingredient changed in turn
(a method's code, an ``hf:`` folder's weights, a package version, the task's code): the cell
re-runs with the reason said; nothing changed, nothing re-runs. And the task-code guard table."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest

from bench.harness import identity, runner
from bench.app.cli import main
from bench.registry import METHODS
from bench.harness.store import Store


def _run(cells, store):
    return runner.run_grid(cells, store, progress=False)


def test_nothing_reruns_when_nothing_changed_and_each_ingredient_reruns(tmp_path, monkeypatch):
    # the cheapest zoo cell (it runs six times): identity is the runner's, whatever the cell
    cells = runner.plan(["spurious"], ["random"], ["zoo-clip-spurious"], [0], quick=True).cells
    assert len(cells) == 1
    store = Store(tmp_path / "s.sqlite")
    first = _run(cells, store)
    assert len(first.ran) == 1 and first.ran[0].status == "ok"
    fp = first.ran[0].provenance["fingerprint"]
    assert set(fp) == {"task_code", "method_code", "model_weights", "model_code", "packages"}
    assert fp["model_weights"] == first.ran[0].model_hash  # zoo: the shipped weights hash
    (stored,) = store.records()
    assert stored.provenance["fingerprint"] == fp

    again = _run(cells, store)
    assert (len(again.ran), len(again.already), again.rerun) == (0, 1, {})

    with monkeypatch.context() as m:  # another torch
        m.setattr(identity, "package_versions", lambda: fp["packages"].replace("torch==", "torch==0.0+"))
        res = _run(cells, store)
        assert len(res.ran) == 1 and not res.already
        (reasons,) = res.rerun.values()
        assert len(reasons) == 1 and reasons[0].startswith("package versions changed since the stored record (torch ")
        assert res.rerun_lines() == [f"spurious/zoo-clip-spurious/random (1 cell): {reasons[0]}"]
        assert (len(_run(cells, store).already)) == 1  # the replacement carries the new fingerprint
    res = _run(cells, store)  # back to the real torch: stale again, and only for that
    assert [r for rs in res.rerun.values() for r in rs][0].startswith("package versions changed")

    with monkeypatch.context() as m:  # the task's code
        m.setattr(identity, "task_code", lambda task: "0123456789abcdef")
        res = _run(cells, store)
        assert list(res.rerun.values()) == [["task code changed since the stored record"]]
        assert store.records().__next__().provenance["fingerprint"]["task_code"] == "0123456789abcdef"
    assert list(_run(cells, store).rerun.values()) == [["task code changed since the stored record"]]

    # a record from before fingerprints keeps today's rule (weights hash only): not re-run for the
    # packages, and a fingerprint lacking an ingredient is compared on the ingredients it has
    con = sqlite3.connect(store.path)
    with con:
        con.execute("UPDATE runs SET record=json_remove(record, '$.provenance.fingerprint.packages')")
    with monkeypatch.context() as m:
        m.setattr(identity, "package_versions", lambda: "torch==0.0 transformers==0.0 diffusers==0.0")
        assert len(_run(cells, store).already) == 1
        with con:
            con.execute("UPDATE runs SET record=json_remove(record, '$.provenance.fingerprint')")
        assert len(_run(cells, store).already) == 1
    con.close()
    assert len(_run(cells, store).already) == 1  # an old record is never re-run for lacking a fingerprint


PLUGIN = '''"""A plugin-style method kept outside the project's packages."""
import torch

from bench.method import Method

SCALE = {scale}  # the map's constant


class Plug(Method):
    name = "plug"
    capabilities = frozenset({{"attribute"}})

    def attribute(self, model, request):
        return SCALE * torch.ones(request.n, *request.grid)
'''


def test_a_plugin_methods_code_change_reruns_its_cells(tmp_path, monkeypatch, capsys):
    mod = f"mmi_plug_{uuid.uuid4().hex[:8]}"
    name = f"plug_{uuid.uuid4().hex[:8]}"
    src = tmp_path / f"{mod}.py"
    src.write_text(PLUGIN.format(scale="1.0"))
    monkeypatch.syspath_prepend(str(tmp_path))
    METHODS.register(name, f"{mod}:Plug")
    try:
        store = str(tmp_path / "s.sqlite")
        args = ["evaluate", "--task", "attribution", "--model", "zoo-clip", "--method", name, "--no-references",
                "--quick", "--store", store, "--jobs", "1", "--no-table", "--no-progress"]
        assert main(args) == 0
        (rec,) = Store(store).records()
        assert rec.provenance["fingerprint"]["method_package"] == "unpackaged"  # found on sys.path only
        capsys.readouterr()
        src.write_text(PLUGIN.format(scale="1.0").replace("# the map's constant", "# edited: only a comment"))
        assert main(args) == 0
        assert "0 cells ran, 1 already stored" in capsys.readouterr().err  # comments are not code
        src.write_text(PLUGIN.format(scale="2.5"))
        assert main(args) == 0
        err = capsys.readouterr().err
        assert (f"re-run attribution/zoo-clip/{name} (1 cell): method code changed since the stored record"
                in err.splitlines())
        assert "1 cells ran (1 re-run: stale, reasons above), 0 already stored" in err
    finally:
        METHODS._entries.pop(name)


def test_hf_weights_resaved_rerun_and_two_folders_named_clip_are_two_models(tmp_path, monkeypatch):
    from models.tiny_hf import save_tiny_clip

    folder = save_tiny_clip(tmp_path / "a" / "clip", seed=0)
    cells = runner.plan(["attribution"], ["random"], [f"hf:{folder}"], [0], quick=True).cells
    store = Store(tmp_path / "s.sqlite")
    first = _run(cells, store)
    assert first.ran[0].status == "ok", first.ran[0].error
    assert len(_run(cells, store).already) == 1
    save_tiny_clip(folder, seed=1)  # the same folder re-saved with other weights
    res = _run(cells, store)
    assert list(res.rerun.values()) == [["model weights changed since the stored record"]]
    assert res.ran[0].status == "ok" and res.ran[0].model_hash != first.ran[0].model_hash  # really reloaded
    assert len(_run(cells, store).already) == 1

    other = save_tiny_clip(tmp_path / "b" / "clip", seed=0)
    keys = []
    for parent in (folder.parent, other.parent):
        monkeypatch.chdir(parent)
        (cell,) = runner.plan(["attribution"], ["random"], ["hf:clip"], [0], quick=True).cells
        keys.append(runner.cell_key(cell))
    assert keys[0].model == f"hf:{folder.resolve()}" and keys[1].model == f"hf:{other.resolve()}"
    assert keys[0].id != keys[1].id


def test_source_normalisation_ignores_comments_and_docstrings_only():
    src = '"""Doc ×."""\nimport os  # why\n\n\ndef f():\n    """Doc."""\n    return "# kept"  \n'
    from bench.kit.digests import normalised_source as n
    assert n(src) == 'import os\ndef f():\n    return "# kept"'
    assert n(src.replace("# why", "# because")) == n(src) == n(src.replace("Doc.", "Other doc."))
    assert n(src.replace('"# kept"', '"# moved"')) != n(src)


def test_task_code_guard_table_is_current():
    """Fails when a task's code changed while its version did not: bump the version, then
    `python -m bench.harness.identity --update` (published figures are keyed by the version)."""
    problems = identity.table_problems(identity.read_table(), identity.current_table())
    assert not problems, "\n".join(problems)


def test_guard_names_the_fix_and_update_refuses_an_unbumped_change(tmp_path, monkeypatch):
    now = identity.current_table()
    task = sorted(now)[0]
    moved = {**now, task: {**now[task], "code": "0" * 16}}
    (problem,) = identity.table_problems(moved, now)
    assert "bump the task's version" in problem and "python -m bench.harness.identity --update" in problem
    bumped = {**now, task: {"version": "0.0", "code": "0" * 16}}
    assert "python -m bench.harness.identity --update" in identity.table_problems(bumped, now)[0]

    table = tmp_path / "CODE_HASHES.json"
    monkeypatch.setattr(identity, "TABLE", table)
    table.write_text(json.dumps(moved))
    assert identity.main([]) == 1
    assert identity.main(["--update"]) == 1 and json.loads(table.read_text()) == moved  # refused, unchanged
    table.write_text(json.dumps(bumped))
    assert identity.main(["--update"]) == 0 and json.loads(table.read_text()) == now
    assert identity.main([]) == 0


def test_rerun_reasons_are_grouped_not_listed_cell_by_cell():
    task = "task code changed since the stored record"
    rerun = {f"attribution/zoo-clip/m{i}/seed={s}": [task] for i in range(30) for s in (0, 1)}
    rerun["editing/hf:/x/clip/saliency/seed=0"] = ["method code changed since the stored record"]
    rerun["editing/hf:/x/clip/saliency/seed=1"] = ["method code changed since the stored record"]
    assert identity.summary_lines(rerun) == [
        f"60 cells in 30 task/model/method groups (attribution/zoo-clip/m0, attribution/zoo-clip/m1, "
        f"attribution/zoo-clip/m2, ...): {task}",
        "editing/hf:/x/clip/saliency (2 cells): method code changed since the stored record"]
