"""Reproduction manifests: the TOML writer, the document round trip, `bench export-manifest`
and `bench reproduce` on one cheap cell, one-line errors for malformed manifests, and the
published files' consistency."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

import pytest

from bench.app.cli import main
from bench.errors import BenchError
from leaderboard import manifest
from leaderboard.manifest import Figure, GridCell, RecordedCell, RecordedGrid, Tolerance, ToleranceTable
from leaderboard.publish import default_plan
from tasks.localization import LocalizationTask

V = LocalizationTask.spec.version

ROOT = Path(__file__).resolve().parent.parent
CELL = ["--task", "localization", "--model", "zoo-clip", "--method", "decomposition", "--no-references",
        "--seed", "0", "--quick"]


# ------------------------------------------------------------------ TOML writer
@pytest.mark.parametrize("text", ['plain', 'quote " and \\ backslash', "new\nline\ttab\rcr", "bell\x07 del\x7f",
                                  "unicode é — ✓ 𝔘", "", "'single'", '"""', "#not a comment", "\\u0041"])
def test_toml_strings_round_trip(text):
    doc = f"{manifest.toml_key(text) if text else manifest.toml_string(text)} = {manifest.toml_string(text)}\n"
    assert tomllib.loads(doc) == {text: text}


def test_toml_values_round_trip():
    values = {"f": 0.1, "tiny": 1e-300, "big": 1.5e300, "neg0": -0.0, "inf": math.inf, "ninf": -math.inf,
              "i": -7, "b": True, "list": [1, 2.5, "x", [True]], "table": {"a.b": 1, "c": "d"}, "empty": {},
              "key with space": "v", "third": 1 / 3}
    doc = "\n".join(f"{manifest.toml_key(k)} = {manifest.toml_value(v)}" for k, v in values.items())
    back = tomllib.loads(doc)
    assert back == values
    assert all(repr(back[k]) == repr(v) for k, v in values.items() if isinstance(v, float))
    assert math.isnan(tomllib.loads(f"x = {manifest.toml_value(math.nan)}")["x"])
    with pytest.raises(BenchError, match="TOML has no null"):
        manifest.toml_value(None, "option x")


def _grid() -> RecordedGrid:
    cells = [RecordedCell(GridCell("attribution", "zoo-clip", "integrated_gradients", (("n_steps", 8),), "abc"),
                          {"pointing_game": Figure(0.1 + 0.2, 0.25, 0.35, 2), "odd.metric name": Figure(-1e-9, -2e-9, 0.0, 1)}),
             RecordedCell(GridCell("attribution", "zoo-clip", "uce", (("preserve_prompts", ("a \"b\"", "c\\d")),)),
                          {"x": Figure(1.0, 1.0, 1.0, 2)})]
    return RecordedGrid("quick", (0, 3), cells, {"attribution": "1.1"}, {"zoo-clip": "ff" * 32},
                        {"torch": "2.13.0+cpu"}, {"git_commit": "abc", "git_dirty": True, "command": 'say "hi"'},
                        ToleranceTable(Tolerance(abs=0.01), {"attribution.x": Tolerance(abs=0.5)}), "a \"title\"\n")


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_document_round_trips_exactly(tmp_path, suffix):
    grid = _grid()
    path = manifest.save(grid, tmp_path / f"m{suffix}")
    back = manifest.load(path)
    assert back.to_dict() == grid.to_dict()
    assert back.cells[0].expected["pointing_game"].mean == 0.1 + 0.2  # bit for bit
    assert back.cells[1].cell.config == (("preserve_prompts", ("a \"b\"", "c\\d")),)  # lists back to tuples
    assert back.tolerance.lookup("attribution", "x").abs == 0.5


# ------------------------------------------------------------ export + reproduce
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """A store holding one cheap cell (decomposition on zoo-clip localization, seed 0)."""
    store = tmp_path_factory.mktemp("store") / "s.sqlite"
    assert main(["evaluate", *CELL, "--jobs", "1", "--no-table", "--no-progress", "--store", str(store)]) == 0
    return store


@pytest.fixture(scope="module")
def tiny_manifest(tiny_store, tmp_path_factory) -> Path:
    store = tiny_store
    out = tmp_path_factory.mktemp("manifest") / "tiny.toml"
    assert main(["export-manifest", "--store", str(store), "--out", str(out), "--title", "tiny",
                 "--command", "bench evaluate " + " ".join(CELL)]) == 0
    return out


def reproduce(path: Path, *extra: str) -> int:
    return main(["reproduce", str(path), "--jobs", "1", "--no-progress", *extra])


def test_exported_manifest_lists_grid_versions_and_figures(tiny_manifest):
    d = tomllib.loads(tiny_manifest.read_text())
    assert d["grid"] == {"profile": "quick", "seeds": [0]}
    assert d["versions"]["tasks"] == {"localization": V} and set(d["versions"]["models"]) == {"zoo-clip"}
    assert d["versions"]["packages"]["torch"] and d["source"]["command"].startswith("bench evaluate")
    assert d["tolerance"] == {"abs": 1e-3, "rel": 1e-3, "ci_k": 0.0}
    (cell,) = d["cells"]
    assert (cell["task"], cell["model"], cell["method"], cell["config"]) == ("localization", "zoo-clip",
                                                                            "decomposition", {})
    assert {"top1", "mrr", "auroc"} <= set(cell["expected"])
    assert set(cell["expected"]["top1"]) == {"mean", "ci_low", "ci_high", "n"}


def test_reproduce_prints_expected_and_obtained_side_by_side(tiny_manifest, capsys):
    assert reproduce(tiny_manifest) == 0
    out, err = capsys.readouterr()
    row = next(l for l in out.splitlines() if "| top1" in l)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "localization/zoo-clip/decomposition" and cells[2] == cells[3]  # expected == obtained
    assert cells[-1] == "same" and "0 out of tolerance or missing" in err


def test_reproduce_fails_on_a_mismatch_naming_the_figure(tiny_manifest, tmp_path, capsys):
    text = tiny_manifest.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(re.sub(r"(expected\.mrr = \{ mean = )([0-9.e-]+)", lambda m: m[1] + "0.01", text))
    assert reproduce(bad) == 1
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("mismatch:")]
    assert len(lines) == 1 and "localization/zoo-clip/decomposition mrr: expected 0.01" in lines[0]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("[grid]", "[grid"), "is not valid TOML"),
    (lambda t: t.replace('profile = "quick"', 'profile = "fast"'), "profile must be one of quick, full"),
    (lambda t: t.replace('task = "localization"', 'task = "localisation"'), "has no version in [versions.tasks]"),
    (lambda t: t.replace("[versions.tasks]\nlocalization", "[versions.tasks]\nlocalisation")
     .replace('task = "localization"', 'task = "localisation"'), "did you mean 'localization'"),
    (lambda t: t.replace(f'localization = "{V}"', 'localization = "0.1"'), f"task localization is v{V} now (recorded v0.1)"),
    (lambda t: re.sub(r"\[\[cells\]\][\s\S]*", "", t), "missing 'cells'"),
    (lambda t: t.replace("expected.top1 = {", "expected.top1 = { spread = 1,"), "unknown key 'spread'"),
])
def test_malformed_manifest_is_a_one_line_error_naming_the_file(tiny_manifest, tmp_path, capsys, edit, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(edit(tiny_manifest.read_text()))
    assert reproduce(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: manifest") and str(bad) in err[0] and message in err[0], err


def test_export_errors_are_one_line(tmp_path, capsys):
    from bench.harness.store import Store

    Store(tmp_path / "empty.sqlite").close()
    assert main(["export-manifest", "--store", str(tmp_path / "empty.sqlite"), "--out", str(tmp_path / "m.toml")]) == 2
    assert "no successful records match" in capsys.readouterr().err
    assert main(["export-manifest", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "m.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["reproduce", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------- published files
def test_published_manifest_and_baseline_agree():
    """The default manifest holds the whole default grid (every built-in cell the planner finds, at
    seeds 0 and 1); the baseline is a subset of it with bit-identical figures (both come from one
    store through `bench publish`)."""

    default = manifest.load(ROOT / "leaderboard" / "manifests" / "default.toml")
    baseline = manifest.load(ROOT / "leaderboard" / "baseline.json")
    assert default.profile == "quick" and default.seeds == (0, 1)
    assert len(default.cells) * len(default.seeds) == len(default_plan())
    assert set(default.model_hashes) == {"zoo-clip", "zoo-clip-spurious", "zoo-vlm", "zoo-diffusion"}
    whole = {c.cell: c.expected for c in default.cells}
    for c in baseline.cells:
        assert whole[c.cell] == c.expected, c.cell.label
        assert baseline.task_versions[c.cell.task] == default.task_versions[c.cell.task]
        assert baseline.model_hashes[c.cell.model] == default.model_hashes[c.cell.model]
    readme = (ROOT / "leaderboard" / "README.md").read_text()
    assert "bench publish --store" in readme and "### attribution" in readme


def test_publish_refuses_a_partial_or_stale_store(tiny_store, tmp_path, capsys):
    import sqlite3

    from bench.harness.store import Store

    out = tmp_path / "lb"
    out.mkdir()
    assert main(["publish", "--store", str(tiny_store), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    n = len(default_plan())  # the grid's size comes from the planner: a plugin or a new method moves it
    assert len(err) == 1 and f"lacks {n - 1} of the {n} cells" in err[0] and "--allow-partial" in err[0]
    assert main(["publish", "--store", str(tiny_store), "--out", str(out), "--allow-partial"]) == 0
    assert "wrote" in capsys.readouterr().err
    assert f"**Partial:** {n - 1} cells" in (out / "README.md").read_text()
    assert manifest.load(out / "manifests" / "default.toml").cells[0].cell.method == "decomposition"
    assert manifest.load(out / "baseline.json").cells[0].cell.method == "decomposition"

    stale = tmp_path / "stale.sqlite"
    # SQLite's backup, not a file copy: the store is in WAL mode, and rows still in its -wal file
    # (not yet checkpointed) would be missing from a copy of the main file
    src, dst = sqlite3.connect(tiny_store), sqlite3.connect(stale)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    with Store(stale) as s:
        (rec,) = list(s.records())
        rec.model_hash = "0" * 64
        s.put(rec, force=True)
    assert main(["publish", "--store", str(stale), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is stale: zoo-clip weights are {_clip_hash()[:12]} now (the store has 000000000000)" in err[0]


def _clip_hash() -> str:
    """The shipped zoo-clip's sha256 (the stale-record messages name it)."""
    from models.zoo import WEIGHTS_DIR

    return json.loads((WEIGHTS_DIR / "zoo-clip.json").read_text())["sha256"]
