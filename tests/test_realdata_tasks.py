"""Tasks on real-data files (``bench evaluate --data KIND=PATH``): spurious ← waterbirds,
hallucination ← pope, attribution ← masks.

The fixture files are written here from the world renderer (PNG images and masks with
Waterbirds-, POPE- and COCO-style annotations), so the zoo models do meaningful work on
them, and every run goes through the command line in-process, as a user's would.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before datasets is imported anywhere: no hub, ever
os.environ["HF_DATASETS_OFFLINE"] = "1"

import csv
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from bench.harness import runner
from bench.app.cli import main
from bench.records import RunRecord
from bench.harness.store import Store
from bench.kit.world import World, WorldConfig
from bench.kit.world.core import Scene
from bench.kit.world.hallucination import COOCCURRENCE_PAIRS
from bench.kit.world.spurious import GROUPS, spurious_scene
from tasks.attribution import AttributionTask
from tasks.hallucination import HallucinationTask
from tasks.spurious import SpuriousTask

QUIET = ["--jobs", "1", "--no-progress", "--no-table"]


# ------------------------------------------------------------------ fixtures
def _png(path: Path, arr: np.ndarray) -> str:
    """Write an RGB (H×W×3 uint8) image or a boolean mask (H×W) as PNG; the name relative to its folder."""
    Image.fromarray(arr.astype(np.uint8) * 255 if arr.dtype == bool else arr).save(path)
    return path.name


def digest_of(annotation: Path, files: list[Path]) -> str:
    """The data digest as documented (bench.task.DataSource): sha256 over the sha256 digests of the
    annotation file and of every referenced file in record order (written independently here)."""
    h = hashlib.sha256(hashlib.sha256(annotation.read_bytes()).digest())
    for f in files:
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def waterbirds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Waterbirds-style metadata.csv of zoo-clip-spurious scenes (label = shape, place =
    background): a biased train split (circles on water, squares on land, 1 in 8 against), a
    group-balanced val split and a group-balanced test split; 64 rows."""
    d = tmp_path_factory.mktemp("waterbirds")
    world = World(0)
    rows: list[list[str]] = []

    def add(split: str, group: tuple[str, str], index: int) -> None:
        s = spurious_scene(world, "test", index, None, group=group)
        rows.append([_png(d / f"{split}_{index}.png", s.image_HWC), group[0], group[1], split])

    for i in range(16):  # train: the shortcut holds in 14 of 16
        shape = ("circle", "square")[i % 2]
        agree = i not in (5, 10)
        place = {"circle": "water", "square": "land"}[shape] if agree else {"circle": "land", "square": "water"}[shape]
        add("train", (shape, place), 500 + i)
    for g, group in enumerate(GROUPS):
        for i in range(2):
            add("val", group, 700 + 10 * g + i)
        for i in range(10):
            add("test", group, 900 + 100 * g + i)
    path = d / "metadata.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_filename", "y", "place", "split"])
        w.writerows(rows)
    return path


def _one_partner_scenes(start: int, n: int) -> Iterator[tuple[Scene, tuple[tuple[str, str], tuple[str, str]]]]:
    """The first ``n`` test scenes from index ``start`` that hold one partner of a pair that
    co-occurs in zoo-vlm's training world and not the other, each with (present, absent)."""
    world = World(0)
    pairs = [p for pair in COOCCURRENCE_PAIRS for p in (pair, pair[::-1])]
    i = found = 0
    while found < n:
        s = world.scene("test", start + i)
        i += 1
        present = {(o.colour, o.shape) for o in s.objects}
        pair = next(((a, b) for a, b in pairs if a in present and b not in present), None)
        if pair is not None:
            found += 1
            yield s, pair


@pytest.fixture(scope="module")
def pope(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """POPE-style probes on 32 such scenes: "is there a <present partner>?" (yes) and "is there
    a <absent partner>?" (no, the adversarial probe zoo-vlm often answers yes to); 64 rows."""
    d = tmp_path_factory.mktemp("pope")
    rows: list[dict[str, Any]] = []
    for s, pair in _one_partner_scenes(0, 32):
        name = _png(d / f"scene_{s.index}.png", s.image_HWC)
        for (colour, shape), label in zip(pair, ("yes", "no")):
            rows.append({"image": name, "question": f"is there a {colour} {shape}?", "label": label,
                         "object": f"{colour} {shape}", "category": "adversarial"})
    path = d / "pope_adversarial.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def captions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CHAIR-style captions of 192 such scenes (zoo-vlm's captions name the absent partner in
    about one caption in fifteen: enough scenes for a few hallucinated mentions on the scored
    side): objects = "<colour> <shape>" of each object, caption = the world's canonical one (not
    used by the task)."""
    d = tmp_path_factory.mktemp("captions")
    rows = [{"image": _png(d / f"scene_{s.index}.png", s.image_HWC), "caption": s.captions[0],
             "objects": [f"{o.colour} {o.shape}" for o in s.objects]} for s, _ in _one_partner_scenes(20_000, 192)]
    path = d / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def masks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """COCO-style object masks (mask PNGs) of 32 two-to-three-object world scenes; the object is
    the one differing from the others in colour and shape, named by its shape (as the world
    path's targets)."""
    d = tmp_path_factory.mktemp("masks")
    world = World(0, WorldConfig(min_objects=2, max_objects=3))
    rows: list[dict[str, Any]] = []
    i = 0
    while len(rows) < 32:
        s = world.scene("test", 40_000 + i)
        i += 1
        ok = [k for k, o in enumerate(s.objects)
              if all(p.colour != o.colour and p.shape != o.shape for j, p in enumerate(s.objects) if j != k)]
        if not ok:
            continue
        k = ok[0]
        rows.append({"image": _png(d / f"scene_{s.index}.png", s.image_HWC),
                     "mask": _png(d / f"scene_{s.index}_mask{k}.png", s.masks_NHW[k]),
                     "object": s.objects[k].shape})
    path = d / "instances.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def evaluate(tmp_path: Path, *args: str, quick: bool = True) -> dict[str, RunRecord]:
    """Run ``bench evaluate ARGS`` in-process (a fresh store); the stored records by method."""
    store = tmp_path / f"results-{len(list(tmp_path.glob('results-*')))}.sqlite"
    assert main(["evaluate", *args, "--store", str(store), *QUIET, *(["--quick"] if quick else [])]) == 0
    return {r.key.method: r for r in Store(str(store)).records()}


def one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> str:
    assert main(["evaluate", *args, "--store", str(tmp_path / "errors.sqlite"), *QUIET]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # one error line, last; before it only the skipped cells' reasons
    assert lines[-1].startswith("error: ") and all(x.startswith("skipped ") for x in lines[:-1]), lines
    return lines[-1]


def check_data_provenance(rec: RunRecord, kind: str, version: str, annotation: Path, files: list[Path]) -> None:
    digest = digest_of(annotation, files)
    assert rec.status == "ok", rec.error
    assert rec.key.task_version == f"{version}+{kind}-{digest[:8]}"
    (src,) = rec.provenance["data"]
    assert src["kind"] == kind and src["path"] == str(annotation.resolve()) and src["digest"] == digest
    assert src["records"] > 0 and src["files"] == len(files)


# ---------------------------------------------------------------------- tasks
def test_spurious_on_waterbirds_file(tmp_path: Path, waterbirds: Path) -> None:
    recs = evaluate(tmp_path, "--task", "spurious", "--model", "zoo-clip-spurious", "--method", "leace",
                    "--data", f"waterbirds={waterbirds}")
    assert set(recs) == {"leace", "random", "oracle"}
    images = [waterbirds.parent / row["img_filename"] for row in csv.DictReader(open(waterbirds))]
    for rec in recs.values():
        check_data_provenance(rec, "waterbirds", SpuriousTask.spec.version, waterbirds, images)
    rnd, orc = recs["random"].metrics, recs["oracle"].metrics
    # group names come from the data: the four (label, place) pairs of the test split
    assert {k for k in orc if k.startswith("group_")} == {f"group_{c}_{p}" for c, p in GROUPS}
    assert orc["worst_group_accuracy"] == 1.0 and orc["average_accuracy"] == 1.0
    # the shortcut is real in the file too: the unmodified model fails a group it does well on average
    base = rnd["unmodified_worst_group_accuracy"]
    assert base < 0.7 * rnd["average_accuracy"]
    assert rnd["worst_group_accuracy"] < 0.7 and abs(rnd["worst_group_gain"]) < 0.15
    assert recs["leace"].metrics["components_touched"] == 1.0


def test_hallucination_on_pope_file(tmp_path: Path, pope: Path) -> None:
    # the full profile: the quick one would score half of the ~44 probes the fit side leaves
    recs = evaluate(tmp_path, "--task", "hallucination", "--model", "zoo-vlm", "--method", "entropy",
                    "--data", f"pope={pope}", quick=False)
    assert set(recs) == {"entropy", "random", "oracle"}
    rows = [json.loads(line) for line in pope.read_text().splitlines()]
    images = list(dict.fromkeys(pope.parent / r["image"] for r in rows))
    for rec in recs.values():
        check_data_provenance(rec, "pope", HallucinationTask.spec.version, pope, images)
        m = rec.metrics
        assert 0.0 <= m["auroc"] <= 1.0 and m["auroc"] == m["pope_auroc"]
        assert "caption_auroc" not in m and "chair_i" not in m  # no captions file
        assert 0.0 < m["positive_rate"] < 1.0 and 0.0 <= m["pope_accuracy"] <= 1.0
    assert recs["oracle"].metrics["auroc"] == 1.0
    assert abs(recs["random"].metrics["auroc"] - 0.5) < 0.3
    # the scored items are the same for every method: only the images the hash keeps off the fit side
    assert recs["entropy"].example_hashes == recs["random"].example_hashes
    assert 0 < len(recs["random"].example_hashes) < len(rows)


def test_hallucination_on_pope_and_captions_files(tmp_path: Path, pope: Path, captions: Path) -> None:
    recs = evaluate(tmp_path, "--task", "hallucination", "--model", "zoo-vlm", "--method", "entropy",
                    "--data", f"pope={pope}", "--data", f"captions={captions}", quick=False)
    for rec in recs.values():
        assert rec.status == "ok", rec.error
        assert [d["kind"] for d in rec.provenance["data"]] == ["captions", "pope"]
        tags = [f"{d['kind']}-{d['digest'][:8]}" for d in rec.provenance["data"]]
        assert rec.key.task_version == HallucinationTask.spec.version + "+" + "+".join(tags)
        m = rec.metrics
        assert 0.0 < m["chair_i"] <= m["chair_s"] < 1.0  # zoo-vlm names the absent partner now and then
        assert {"caption_auroc", "pope_auroc"} <= set(m)
    orc = recs["oracle"].metrics
    assert orc["caption_auroc"] == orc["pope_auroc"] == orc["auroc"] == 1.0
    # the model's own captions are the items: entropy ranks its hallucinated mentions high
    assert recs["entropy"].metrics["caption_auroc"] > 0.7


# zoo-vlm's three cells on the 32 rows take ~30 s of CPU: slow. The masks file's code path is the same for
# both models (zoo-clip below); attribution on zoo-vlm is in the default run on 4 examples
# (test_attribution_task::test_generative_target_is_the_colour_answer[zoo-vlm]).
@pytest.mark.parametrize("model", ["zoo-clip", pytest.param("zoo-vlm", marks=pytest.mark.slow)])
def test_attribution_on_masks_file(tmp_path: Path, masks: Path, model: str) -> None:
    recs = evaluate(tmp_path, "--task", "attribution", "--model", model, "--method", "saliency",
                    "--data", f"masks={masks}")
    assert set(recs) == {"saliency", "random", "oracle"}
    rows = [json.loads(line) for line in masks.read_text().splitlines()]
    files = [masks.parent / r[k] for r in rows for k in ("image", "mask")]
    for rec in recs.values():
        check_data_provenance(rec, "masks", AttributionTask.spec.version, masks, files)
        assert len(rec.example_hashes) == 32
    orc, rnd = recs["oracle"].metrics, recs["random"].metrics
    assert orc["pointing_game"] == 1.0 and orc["mass_in_mask"] == 1.0
    assert rnd["pointing_game"] < 0.5
    assert recs["saliency"].metrics["pointing_game"] > rnd["pointing_game"] + 0.1


# --------------------------------------------------------------------- errors
def test_data_flag_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, pope: Path) -> None:
    assert "--data expects KIND=PATH" in one_line_error(capsys, tmp_path, "--task", "hallucination", "--data", "pope")
    err = one_line_error(capsys, tmp_path, "--task", "hallucination", "--data", f"pop={pope}")
    assert "unknown data kind 'pop'" in err and "did you mean 'pope'" in err
    missing = tmp_path / "absent.jsonl"
    err = one_line_error(capsys, tmp_path, "--task", "hallucination", "--model", "zoo-vlm", "--data", f"pope={missing}")
    assert err == f"error: {missing}: file not found"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(pope.read_text().replace('"label": "no"', '"label": "maybe"', 1))
    for f in {json.loads(line)["image"] for line in pope.read_text().splitlines()}:  # rows before it load
        (tmp_path / f).write_bytes((pope.parent / f).read_bytes())
    err = one_line_error(capsys, tmp_path, "--task", "hallucination", "--model", "zoo-vlm", "--data", f"pope={bad}")
    assert err.startswith(f"error: {bad}: label must be yes/no, got 'maybe' in row ")
    assert "given twice" in one_line_error(capsys, tmp_path, "--task", "hallucination", "--data", f"pope={pope}",
                                           "--data", f"pope={pope}")
    err = one_line_error(capsys, tmp_path, "--task", "localization", "--model", "zoo-vlm", "--data", f"pope={pope}")
    assert "no compatible cells to run" in err
    assert "task 'localization' reads facts data, not pope" in err


def test_a_task_that_does_not_read_the_kind_is_skipped_with_the_reason(pope: Path, masks: Path) -> None:
    p = runner.plan(["spurious", "hallucination"], ["random"], ["zoo-clip-spurious", "zoo-vlm"], [0], quick=True,
                    data=[("pope", str(pope))])
    assert ("spurious/*/*", "task 'spurious' reads waterbirds data, not pope") in p.skipped
    assert p.cells and {c.task for c in p.cells} == {"hallucination"}
    p2 = runner.plan(["hallucination"], ["random"], ["zoo-vlm"], [0], quick=True,
                     data=[("pope", str(pope)), ("masks", str(masks))])
    assert (f"--data masks={masks.resolve()}", "no task of the grid reads masks data") in p2.skipped
    assert all(c.data == (("pope", str(pope.resolve())),) for c in p.cells)
    # diffusion models explain their own samples: no masks file for them
    p = runner.plan(["attribution"], ["random"], ["zoo-diffusion"], [0], quick=True, data=[("masks", str(masks))])
    assert not p.cells
    assert any("reads no data files for diffusion models" in reason for _, reason in p.skipped)


def test_waterbirds_codes_are_named_and_group_metrics_are_context(tmp_path: Path, waterbirds: Path) -> None:
    """Waterbirds' own metadata.csv codes (y 0/1, place 0/1) get its names; group metrics named
    after the data are context (direction none, not normalised) for the scorer, as the world's are."""
    from bench.registry import TASKS
    from tasks.spurious import data_groups

    coded = tmp_path / "metadata.csv"
    codes = {"circle": "1", "square": "0", "water": "1", "land": "0"}
    with open(waterbirds) as src, open(coded, "w", newline="") as dst:
        w = csv.writer(dst)
        for i, row in enumerate(csv.reader(src)):
            w.writerow(row if i == 0 else [str(waterbirds.parent / row[0]), codes[row[1]], codes[row[2]], row[3]])
    dg = data_groups(runner.make_task("spurious", [("waterbirds", str(coded))]).data["waterbirds"])
    assert dg.classes == ("landbird", "waterbird") and dg.places == ("land", "water")
    assert dg.groups == (("landbird", "land"), ("landbird", "water"), ("waterbird", "land"), ("waterbird", "water"))
    spec = TASKS.get("spurious").spec
    assert spec.metric("group_waterbird_land").direction == "none"
    assert not spec.metric("group_waterbird_land").normalise
    assert spec.metric("group_circle_water").description == "accuracy on circles on water"  # exact names first


def test_a_file_that_cannot_make_the_task_is_a_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                              waterbirds: Path) -> None:
    only_test = tmp_path / "test_only.csv"
    lines = waterbirds.read_text().splitlines()
    only_test.write_text("\n".join([lines[0]] + [
        ln.replace(ln.split(",")[0], str(waterbirds.parent / ln.split(",")[0]))
        for ln in lines[1:] if ln.endswith(",test")]) + "\n")
    err = one_line_error(capsys, tmp_path, "--task", "spurious", "--model", "zoo-clip-spurious",
                         "--data", f"waterbirds={only_test}")
    assert err == (f"error: {only_test}: task 'spurious' needs rows of split train/val (the fit split); "
                   "the file has none")
