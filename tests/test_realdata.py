"""Real-data loaders (bench/kit/realdata.py) on small fixture files written here: every kind
loads, and malformed files fail with one line that names the file and the problem."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before datasets is imported anywhere: no hub, ever
os.environ["HF_DATASETS_OFFLINE"] = "1"

import csv
import json
import socket
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from bench.kit import realdata as rd
from bench.app.cli import main
from bench.errors import BenchError


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a real-data loader tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ------------------------------------------------------------------ fixtures
def png(path: Path, w: int = 8, h: int = 6, value: int = 128, *, mask: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask is not None:
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    else:
        arr = np.zeros((h, w, 3), np.uint8)
        arr[..., 0] = value
        arr[0, 0] = (255, 255, 255)
        Image.fromarray(arr).save(path)
    return path


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, header: list[str], rows: list[list[Any]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def error_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(BenchError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def assert_error(fn: Callable[[], Any], path: Path, *fragments: str) -> str:
    msg = error_of(fn)
    assert msg.startswith(str(path) + ":"), msg  # names the file first
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    png(tmp_path / "imgs" / "a.png", value=10)
    png(tmp_path / "imgs" / "b.png", value=200)
    return tmp_path


# ----------------------------------------------------------------------- pope
def pope_rows() -> list[dict[str, Any]]:
    return [{"question_id": 1, "image": "imgs/a.png", "text": "Is there a dog in the image?", "label": "yes"},
            {"question_id": 2, "image": "imgs/a.png", "text": "Is there an apple in the image?", "label": "No"},
            {"question_id": 3, "image": "imgs/b.png", "text": "Is there a traffic light in the image?",
             "label": "no"}]


def test_pope_loads_popes_own_layout(imgs: Path) -> None:
    # POPE ships JSON Lines under a .json name, with the category in the file name
    path = imgs / "coco_pope_adversarial.json"
    path.write_text("\n".join(json.dumps(r) for r in pope_rows()[:2]) + "\n\n" + json.dumps(pope_rows()[2]) + "\n")
    before = sorted(p.name for p in imgs.rglob("*"))
    recs = rd.load("pope", path)
    assert sorted(p.name for p in imgs.rglob("*")) == before  # nothing written next to the data
    assert [type(r) for r in recs] == [rd.PopeProbe] * 3
    assert [r.id for r in recs] == ["1", "2", "3"]
    assert [r.label for r in recs] == ["yes", "no", "no"] and [r.is_yes for r in recs] == [True, False, False]
    assert [r.object for r in recs] == ["dog", "apple", "traffic light"]
    assert {r.category for r in recs} == {"adversarial"}
    assert recs[0].image.path == (imgs / "imgs" / "a.png").resolve()
    assert (recs[0].image.width, recs[0].image.height) == (8, 6)
    x = recs[2].image.tensor()
    assert x.shape == (3, 6, 8) and x.dtype == torch.float32
    assert x[0, 1, 1].item() == pytest.approx(200 / 255) and x[0, 0, 0].item() == 1.0 and x.min() >= 0
    assert recs[0].image.tensor(4).shape == (3, 4, 4) and recs[0].image.tensor((2, 5)).shape == (3, 2, 5)
    batch = rd.stack_images([r.image for r in recs], 16)
    assert batch.shape == (3, 3, 16, 16) and 0 <= batch.min() <= batch.max() <= 1
    with pytest.raises(FrozenInstanceError):
        recs[0].label = "no"  # type: ignore[misc]


def test_pope_csv_with_category_column_and_image_root(tmp_path: Path) -> None:
    root = tmp_path / "images"
    png(root / "x.png")
    ann = tmp_path / "ann" / "probes.csv"
    ann.parent.mkdir()
    write_csv(ann, ["image", "question", "label", "category", "object"],
              [["x.png", "Is there a cat?", "YES", "popular", "cat"], ["x.png", "is there a cow?", "no", "Random", ""]])
    recs = rd.load_pope(ann, image_root=root)
    assert [(r.id, r.label, r.category, r.object) for r in recs] == [
        ("1", "yes", "popular", "cat"), ("2", "no", "random", None)]  # no object given, none parseable


@pytest.mark.parametrize("case", ["bad_label", "missing_column", "no_image", "bad_json", "bad_category",
                                  "empty", "no_file", "mixed_types", "not_object"])
def test_pope_malformed(imgs: Path, case: str) -> None:
    path = imgs / "pope.jsonl"
    rows = pope_rows()
    if case == "bad_label":
        rows[2]["label"] = "maybe"
        jsonl(path, rows)
        assert_error(lambda: rd.load("pope", path), path, "label must be yes/no, got 'maybe' in row 3")
    elif case == "missing_column":
        jsonl(path, [{k: v for k, v in r.items() if k != "label"} for r in rows])
        assert_error(lambda: rd.load("pope", path), path, "missing required column 'label'", "columns are:")
    elif case == "no_image":
        rows[1]["image"] = "imgs/nope.png"
        jsonl(path, rows)
        assert_error(lambda: rd.load("pope", path), path, "image file not found: 'imgs/nope.png'", "row 2")
    elif case == "bad_json":
        path.write_text(json.dumps(rows[0]) + "\n" + '{"image": "imgs/a.png", "text": "x" "label": "yes"}\n')
        assert_error(lambda: rd.load("pope", path), path, "invalid JSON on line 2")
    elif case == "bad_category":
        rows[0]["category"] = "hard"
        jsonl(path, rows)
        assert_error(lambda: rd.load("pope", path), path,
                     "category must be random/popular/adversarial, got 'hard' in row 1")
    elif case == "empty":
        path.write_text("\n  \n")
        assert_error(lambda: rd.load("pope", path), path, "file is empty")
    elif case == "no_file":
        assert_error(lambda: rd.load("pope", imgs / "none.jsonl"), imgs / "none.jsonl", "file not found")
    elif case == "mixed_types":
        rows[2]["label"] = 1
        jsonl(path, rows)
        assert_error(lambda: rd.load("pope", path), path, "label must be yes/no, got 1 in row 3")
        # with a blank line datasets cannot read mixed types at all (its pre-scan gives up): we say why
        path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[2]) + "\n")
        msg = assert_error(lambda: rd.load("pope", path), path, "label")
        assert "mixes value types: text on line 1, number on line 3" in msg or "got 1 in row 2 (line 3)" in msg, msg
    elif case == "not_object":
        path.write_text(json.dumps(rows[0]) + "\n[1, 2]\n")
        assert_error(lambda: rd.load("pope", path), path, "line 2 is not a JSON object")


def test_row_numbers_name_the_line_when_blank_lines_shift_it(imgs: Path) -> None:
    path = imgs / "pope.jsonl"
    rows = pope_rows()
    rows[1]["label"] = "maybe"
    path.write_text(json.dumps(rows[0]) + "\n\n\n" + json.dumps(rows[1]) + "\n")
    assert_error(lambda: rd.load("pope", path), path, "got 'maybe' in row 2 (line 4)")


# ------------------------------------------------------------------- captions
def test_captions_csv_and_jsonl(imgs: Path) -> None:
    path = write_csv(imgs / "caps.csv", ["image_id", "image", "caption", "objects"], [
        ["11", "imgs/a.png", "a dog next to a cat", '["dog", "cat"]'],
        ["12", "imgs/b.png", "an empty room", ""],
        ["13", "imgs/b.png", "a man on a bench", "person; bench"]])
    recs = rd.load("captions", path)
    assert [(r.id, r.caption, r.objects) for r in recs] == [
        ("11", "a dog next to a cat", ("dog", "cat")), ("12", "an empty room", ()),
        ("13", "a man on a bench", ("person", "bench"))]
    assert recs[1].image.path.name == "b.png"
    j = jsonl(imgs / "caps.jsonl", [{"image": "imgs/a.png", "text": "a dog", "gt_objects": ["dog"]}])
    (rec,) = rd.load_captions(j)
    assert (rec.id, rec.caption, rec.objects) == ("1", "a dog", ("dog",))


@pytest.mark.parametrize("case", ["objects_not_list", "missing_caption", "header_only", "ragged_csv",
                                  "missing_objects_column", "bad_json_list", "wrong_suffix"])
def test_captions_malformed(imgs: Path, case: str) -> None:
    path = imgs / "caps.csv"
    header = ["image", "caption", "objects"]
    if case == "objects_not_list":
        p = jsonl(imgs / "caps.jsonl", [{"image": "imgs/a.png", "caption": "a", "objects": ["dog"]},
                                        {"image": "imgs/a.png", "caption": "b", "objects": [3]}])
        assert_error(lambda: rd.load("captions", p), p, "'objects' must be a list of text", "row 2")
    elif case == "missing_caption":
        write_csv(path, header, [["imgs/a.png", "a dog", "dog"], ["imgs/b.png", "", "cat"]])
        assert_error(lambda: rd.load("captions", path), path, "'caption' is missing in row 2 (line 3)")
    elif case == "header_only":
        write_csv(path, header, [])
        assert_error(lambda: rd.load("captions", path), path, "has a header but no rows")
    elif case == "ragged_csv":
        path.write_text("image,caption,objects\nimgs/a.png,a dog,dog\nimgs/a.png,a,b,c,d\n")
        assert_error(lambda: rd.load("captions", path), path, "malformed CSV", "line 3")
    elif case == "missing_objects_column":
        write_csv(path, ["image", "caption"], [["imgs/a.png", "a dog"]])
        assert_error(lambda: rd.load("captions", path), path,
                     "missing required column 'objects' (or 'gt_objects', 'objects_present')")
    elif case == "bad_json_list":
        write_csv(path, header, [["imgs/a.png", "a dog", '["dog", ']])
        assert_error(lambda: rd.load("captions", path), path, "'objects' is not a JSON list", "row 1")
    elif case == "wrong_suffix":
        p = imgs / "caps.txt"
        p.write_text("x")
        assert_error(lambda: rd.load("captions", p), p, "unsupported file type '.txt'")


# ----------------------------------------------------------------- waterbirds
def test_waterbirds_metadata_csv_and_named_groups(imgs: Path) -> None:
    # the layout of Waterbirds' own metadata.csv: split 0/1/2, y and place as numbers
    meta = write_csv(imgs / "metadata.csv", ["img_id", "img_filename", "y", "split", "place", "place_filename"], [
        [1, "imgs/a.png", 1, 0, 1, "/o/ocean/1.jpg"], [2, "imgs/b.png", 0, 0, 0, "/f/forest/2.jpg"],
        [3, "imgs/a.png", 1, 1, 0, "/f/forest/3.jpg"], [4, "imgs/b.png", 0, 2, 1, "/o/ocean/4.jpg"]])
    recs = rd.load("waterbirds", meta)
    assert [(r.id, r.label, r.place, r.group, r.split) for r in recs] == [
        ("1", "1", "1", "1/1", "train"), ("2", "0", "0", "0/0", "train"),
        ("3", "1", "0", "1/0", "val"), ("4", "0", "1", "0/1", "test")]
    named = jsonl(imgs / "wb.jsonl", [
        {"image": "imgs/a.png", "label": "waterbird", "background": "water", "split": "validation"},
        {"image": "imgs/b.png", "label": "landbird", "group": "g3"}])
    recs = rd.load_waterbirds(named)
    assert [(r.label, r.place, r.group, r.split) for r in recs] == [
        ("waterbird", "water", "waterbird/water", "val"), ("landbird", None, "g3", "test")]


@pytest.mark.parametrize("case", ["bad_split", "no_place_or_group", "unreadable_image", "missing_label"])
def test_waterbirds_malformed(imgs: Path, case: str) -> None:
    path = imgs / "wb.csv"
    if case == "bad_split":
        write_csv(path, ["image", "label", "place", "split"],
                  [["imgs/a.png", "a", "land", "train"], ["imgs/b.png", "b", "water", "holdout"]])
        assert_error(lambda: rd.load("waterbirds", path), path, "split must be train/val/test, got 'holdout' in row 2")
    elif case == "no_place_or_group":
        write_csv(path, ["image", "label", "split"], [["imgs/a.png", "a", "train"]])
        assert_error(lambda: rd.load("waterbirds", path), path, "needs a 'place'", "or a 'group' column")
    elif case == "unreadable_image":
        (imgs / "imgs" / "junk.png").write_bytes(b"not a png at all")
        write_csv(path, ["image", "label", "place"], [["imgs/a.png", "a", "land"], ["imgs/junk.png", "a", "land"]])
        assert_error(lambda: rd.load("waterbirds", path), path, "cannot read image 'junk.png'", "row 2")
    elif case == "missing_label":
        write_csv(path, ["image", "label", "place"], [["imgs/a.png", "", "land"]])
        assert_error(lambda: rd.load("waterbirds", path), path, "'label' is missing in row 1")


# ---------------------------------------------------------------- counterfact
def test_counterfact_flat_with_image_and_nested_original(imgs: Path) -> None:
    flat = jsonl(imgs / "edits.jsonl", [
        {"case_id": 7, "image": "imgs/a.png", "prompt": "The home of {} is", "subject": "Zorbo",
         "target_true": "the north", "target_new": "the south", "paraphrases": ["Zorbo lives in"],
         "neighbourhood_prompts": ["The home of Quax is", "The home of Bim is"]},
        {"prompt": "Paris is the capital of", "subject": "Paris", "target_true": "France", "target_new": "Italy"}])
    a, b = rd.load("counterfact", flat)
    assert (a.id, a.prompt, a.text, a.target_true, a.target_new) == (
        "7", "The home of {} is", "The home of Zorbo is", "the north", "the south")
    assert a.paraphrases == ("Zorbo lives in",) and len(a.neighbourhood) == 2
    assert a.image is not None and a.image.path.name == "a.png"
    assert (b.prompt, b.text, b.paraphrases, b.neighbourhood, b.image) == (
        "{} is the capital of", "Paris is the capital of", (), (), None)
    # CounterFact's own layout (counterfact.json): nested request, {"str": ...} targets, pretty-printed array
    original = imgs / "counterfact.json"
    original.write_text(json.dumps([{
        "case_id": 0, "pararel_idx": 2796,
        "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                              "target_new": {"str": "English", "id": "Q1860"},
                              "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
        "paraphrase_prompts": ["Shayna does this and Danielle Darrieux is a"],
        "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
        "attribute_prompts": ["J.R.R. Tolkien is a native speaker of"],
        "generation_prompts": ["Danielle Darrieux's mother tongue is"]}], indent=2))
    (c,) = rd.load_counterfact(original)
    assert (c.id, c.subject, c.target_true, c.target_new, c.text) == (
        "0", "Danielle Darrieux", "French", "English", "The mother tongue of Danielle Darrieux is")
    assert c.neighbourhood == ("The mother tongue of Léon Blum is",)


@pytest.mark.parametrize("case", ["same_targets", "subject_not_in_prompt", "missing_subject_column",
                                  "bad_json_array"])
def test_counterfact_malformed(imgs: Path, case: str) -> None:
    path = imgs / "edits.jsonl"
    good = {"prompt": "The home of {} is", "subject": "Zorbo", "target_true": "north", "target_new": "south"}
    if case == "same_targets":
        jsonl(path, [good, {**good, "target_new": "north"}])
        assert_error(lambda: rd.load("counterfact", path), path, "target_new equals target_true ('north') in row 2")
    elif case == "subject_not_in_prompt":
        jsonl(path, [{**good, "prompt": "The home of Quax is"}])
        assert_error(lambda: rd.load("counterfact", path), path,
                     "prompt has no '{}' and does not contain the subject 'Zorbo' in row 1")
    elif case == "missing_subject_column":
        jsonl(path, [{k: v for k, v in good.items() if k != "subject"}])
        assert_error(lambda: rd.load("counterfact", path), path, "missing required column 'subject'")
    elif case == "bad_json_array":
        p = imgs / "edits.json"
        p.write_text('[\n  {"prompt": "a {}",\n   "subject": "x",,\n  }\n]\n')
        assert_error(lambda: rd.load("counterfact", p), p, "invalid JSON at line 3")


# --------------------------------------------------------------- concept_edit
def test_concept_edit_replace_and_erase(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "timed.csv", ["old", "new", "positives", "negatives"], [
        ["roses", "blue roses", "a photo of roses; a vase of roses", '["a photo of tulips"]'],
        ["Van Gogh", "", "a painting by Van Gogh", ""]])
    a, b = rd.load("concept_edit", path)
    assert (a.source, a.destination, a.mode, a.positives, a.negatives) == (
        "roses", "blue roses", "replace", ("a photo of roses", "a vase of roses"), ("a photo of tulips",))
    assert (b.source, b.destination, b.mode, b.negatives) == ("Van Gogh", "", "erase", ())
    j = jsonl(tmp_path / "uce.jsonl", [{"source": "cat", "destination": "dog", "positive_prompts": ["a cat"],
                                        "negative_prompts": ["a bird"], "id": "e1"}])
    (c,) = rd.load_concept_edit(j)
    assert (c.id, c.positives, c.negatives) == ("e1", ("a cat",), ("a bird",))


@pytest.mark.parametrize("case", ["no_positives", "same_concept", "missing_positives_column", "positives_not_text"])
def test_concept_edit_malformed(tmp_path: Path, case: str) -> None:
    path = tmp_path / "ce.jsonl"
    good = {"source": "cat", "destination": "dog", "positives": ["a cat"]}
    if case == "no_positives":
        jsonl(path, [good, {**good, "positives": []}])
        assert_error(lambda: rd.load("concept_edit", path), path, "'positives' is empty", "row 2")
    elif case == "same_concept":
        jsonl(path, [{**good, "destination": "cat"}])
        assert_error(lambda: rd.load("concept_edit", path), path, "destination equals source ('cat') in row 1")
    elif case == "missing_positives_column":
        jsonl(path, [{"source": "cat", "destination": "dog"}])
        assert_error(lambda: rd.load("concept_edit", path), path,
                     "missing required column 'positives' (or 'positive_prompts')")
    elif case == "positives_not_text":
        jsonl(path, [{**good, "positives": {"a": 1}}])
        assert_error(lambda: rd.load("concept_edit", path), path, "'positives' must be a list of text")


# ---------------------------------------------------------------------- masks
def test_masks_png_polygon_bbox(imgs: Path) -> None:
    m = np.zeros((6, 8), bool)
    m[1:4, 2:6] = True
    png(imgs / "masks" / "a_dog.png", mask=m)
    path = jsonl(imgs / "masks.jsonl", [
        {"image": "imgs/a.png", "object": "dog", "mask": "masks/a_dog.png"},
        {"image": "imgs/a.png", "category": "kite", "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
        {"image": "imgs/b.png", "name": "box", "bbox": [1, 2, 3, 2]},
        {"image": "imgs/b.png", "object": "tri", "polygon": [2, 0, 4, 2, 2, 4], "bbox": [2, 0, 2, 4]}])
    recs = rd.load("masks", path)
    assert [(r.id, r.object, r.mask.source) for r in recs] == [
        ("1", "dog", "png"), ("2", "kite", "polygon"), ("3", "box", "bbox"), ("4", "tri", "polygon")]
    assert np.array_equal(recs[0].mask.array(), m)
    kite = recs[1].mask.array()
    assert kite.shape == (6, 8) and kite[:5, :5].all() and kite.sum() == 25  # PIL fills the closed polygon
    box = recs[2].mask.array()
    expect = np.zeros((6, 8), bool)
    expect[2:4, 1:4] = True
    assert np.array_equal(box, expect) and recs[2].bbox == (1.0, 2.0, 3.0, 2.0)
    assert recs[3].mask.array()[2, 2] and not recs[3].mask.array()[5, 7]
    t = recs[0].mask.tensor(12)
    assert t.dtype == torch.bool and t.shape == (12, 12)
    assert recs[0].mask.tensor().shape == (6, 8)


def test_masks_coco_instances_json(imgs: Path) -> None:
    coco = {"info": {}, "images": [{"id": 5, "file_name": "a.png", "width": 8, "height": 6}],
            "categories": [{"id": 18, "name": "dog", "supercategory": "animal"}],
            "annotations": [
                {"id": 101, "image_id": 5, "category_id": 18, "iscrowd": 0, "bbox": [1, 1, 3, 3],
                 "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]], "area": 9},
                {"id": 102, "image_id": 5, "category_id": 18, "iscrowd": 1, "bbox": [0, 0, 8, 6],
                 "segmentation": {"counts": [0, 48], "size": [6, 8]}, "area": 48}]}
    path = imgs / "instances_val.json"
    path.write_text(json.dumps(coco, indent=2))
    (rec,) = rd.load("masks", path, image_root=imgs / "imgs")  # the crowd (RLE) annotation is skipped
    assert (rec.id, rec.object, rec.bbox, rec.mask.source) == ("101", "dog", (1.0, 1.0, 3.0, 3.0), "polygon")
    assert rec.mask.array()[1:5, 1:5].all() and rec.mask.array().sum() == 16


@pytest.mark.parametrize("case", ["mask_size", "polygon_outside", "no_mask_columns", "odd_polygon",
                                  "mask_not_found", "rle_row", "coco_bad_category"])
def test_masks_malformed(imgs: Path, case: str) -> None:
    path = imgs / "masks.jsonl"
    if case == "mask_size":
        png(imgs / "m.png", mask=np.ones((5, 8), bool))
        jsonl(path, [{"image": "imgs/a.png", "object": "dog", "mask": "m.png"}])
        assert_error(lambda: rd.load("masks", path), path, "mask 'm.png' is 8x5 but image 'a.png' is 8x6 in row 1")
    elif case == "polygon_outside":
        jsonl(path, [{"image": "imgs/a.png", "object": "dog", "polygon": [[0, 0, 20, 0, 20, 3]]}])
        assert_error(lambda: rd.load("masks", path), path, "polygon lies outside the 8x6 image in row 1")
    elif case == "no_mask_columns":
        jsonl(path, [{"image": "imgs/a.png", "object": "dog"}])
        assert_error(lambda: rd.load("masks", path), path, "missing a mask column", "'mask'", "'polygon'", "'bbox'")
    elif case == "odd_polygon":
        jsonl(path, [{"image": "imgs/a.png", "object": "dog", "polygon": [1, 1, 2, 2, 3]}])
        assert_error(lambda: rd.load("masks", path), path, "even count of at least 6 coordinates, got 5")
    elif case == "mask_not_found":
        jsonl(path, [{"image": "imgs/a.png", "object": "dog", "mask": "masks/none.png"}])
        assert_error(lambda: rd.load("masks", path), path, "mask file not found: 'masks/none.png'")
    elif case == "rle_row":
        jsonl(path, [{"image": "imgs/a.png", "object": "dog", "polygon": {"counts": "abc", "size": [6, 8]}}])
        assert_error(lambda: rd.load("masks", path), path, "RLE mask", "row 1")
    elif case == "coco_bad_category":
        p = imgs / "instances.json"
        p.write_text(json.dumps({"images": [{"id": 1, "file_name": "imgs/a.png"}], "categories": [],
                                 "annotations": [{"id": 1, "image_id": 1, "category_id": 9,
                                                  "segmentation": [[0, 0, 1, 0, 1, 1]]}]}))
        assert_error(lambda: rd.load("masks", p), p, "annotation 1 refers to category_id 9")


# ---------------------------------------------------------------------- check
def test_check_decodes_images_and_masks(imgs: Path) -> None:
    png(imgs / "empty.png", mask=np.zeros((6, 8), bool))
    path = jsonl(imgs / "masks.jsonl", [{"image": "imgs/a.png", "object": "dog", "bbox": [0, 0, 2, 2]},
                                        {"image": "imgs/b.png", "object": "cat", "mask": "empty.png"}])
    assert len(rd.load("masks", path)) == 2  # loading reads headers only
    assert_error(lambda: rd.check("masks", path), path, "mask of record '2' ('cat') is empty")
    # a truncated PNG has a readable header, so it loads, but it does not decode
    good = (imgs / "imgs" / "a.png").read_bytes()
    (imgs / "imgs" / "cut.png").write_bytes(good[: len(good) - 30])
    cut = jsonl(imgs / "pope.jsonl", [{"image": "imgs/cut.png", "question": "Is there a dog?", "label": "yes"}])
    assert len(rd.load("pope", cut)) == 1
    msg = error_of(lambda: rd.check("pope", cut))
    assert "cut.png" in msg and "cannot decode image" in msg


def test_unknown_kind_suggests() -> None:
    assert "did you mean 'waterbirds'" in error_of(lambda: rd.load("waterbird", "x.csv"))


def test_every_kind_documents_its_paper_and_fields() -> None:
    papers = {"pope": "Li et al., 2023", "captions": "Rohrbach et al., 2018", "waterbirds": "Sagawa et al., 2020",
              "counterfact": "Meng et al., 2022", "concept_edit": "Gandikota et al., 2024", "masks": "Lin et al., 2014",
              "facts": "Huang et al., 2024"}
    assert set(rd.KINDS) == set(papers)
    for name, paper in papers.items():
        k = rd.KINDS[name]
        doc = " ".join((k.loader.__doc__ or "").split())
        assert paper in doc and paper in k.reference, name
        for f in k.fields:
            assert f"``{f.name}``" in doc, (name, f.name)
    assert "Orgad et al., 2023" in (rd.load_concept_edit.__doc__ or "")


# ------------------------------------------------------------------------ CLI
def test_cli_data_check_and_kinds(imgs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = jsonl(imgs / "pope.jsonl", pope_rows())
    assert main(["data", "check", "pope", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 probes on 2 images" in out and "yes 1 (33.3%), no 2 (66.7%)" in out and "all 2 images decode" in out
    wb = write_csv(imgs / "wb.csv", ["image", "label", "place", "split"], [
        ["imgs/a.png", "water", "water", "train"], ["imgs/b.png", "land", "water", "train"],
        ["imgs/a.png", "land", "land", "test"]])
    assert main(["data", "check", "waterbirds", str(wb)]) == 0
    out = capsys.readouterr().out
    assert "3 images in 3 groups" in out and "land/water" in out and "train: smallest group 0" in out
    assert main(["data", "kinds"]) == 0
    out = capsys.readouterr().out
    for name in rd.KINDS:
        assert f"{name}:" in out
    assert "target_new" in out and "positives" in out and "polygon" in out

    bad = jsonl(imgs / "bad.jsonl", [{**pope_rows()[0], "label": "maybe"}])
    assert main(["data", "check", "pope", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: label must be yes/no, got 'maybe' in row 1"


def test_cli_malformed_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "caps.csv"
    bad.write_text("image,caption\nx.png,a dog\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cp = subprocess.run([sys.executable, "-m", "bench", "data", "check", "captions", str(bad)],
                        capture_output=True, text=True, timeout=120, env=env)
    assert cp.returncode == 2, cp.stderr
    assert "Traceback" not in cp.stderr and cp.stdout == ""
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: missing required column 'objects'"), cp.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps.csv"]  # no cache next to the data


# ------------------------------------------------- size and format before loading
def sparse(path: Path, mb: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(mb * 2**20)  # a hole: no disk used, nothing to read but zeros
    return path


class ReachedDatasets(BaseException):
    """Raised where ``datasets`` would start reading (a BaseException: no loader turns it into an error)."""


def no_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ReachedDatasets("the file reached datasets")

    monkeypatch.setattr(rd, "_load_with_datasets", refuse)


def test_huge_file_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import time

    no_datasets(monkeypatch)
    monkeypatch.delenv(rd.MAX_MB_ENV, raising=False)
    big = sparse(tmp_path / "pope.jsonl", 600)
    t0 = time.perf_counter()
    msg = assert_error(lambda: rd.load("pope", big), big, "file is 600 MB", "over the 512 MB limit",
                       rd.MAX_MB_ENV)
    assert main(["data", "check", "pope", str(big)]) == 2
    assert time.perf_counter() - t0 < 1.0, msg
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "over the 512 MB limit for pope annotation files" in err
    # masks (COCO instances files are big) have a higher limit; then the sniff refuses the zeros
    assert_error(lambda: rd.load("masks", big.rename(tmp_path / "masks.json")), tmp_path / "masks.json",
                 "not a text file")
    # the environment variable moves the limit, both ways
    monkeypatch.setenv(rd.MAX_MB_ENV, "1000")
    t0 = time.perf_counter()
    assert_error(lambda: rd.load("pope", tmp_path / "masks.json"), tmp_path / "masks.json", "not a text file")
    assert time.perf_counter() - t0 < 1.0
    small = jsonl(tmp_path / "small.jsonl", pope_rows())
    monkeypatch.setenv(rd.MAX_MB_ENV, "0.0001")
    assert_error(lambda: rd.load("pope", small), small, "over the 0.0001 MB limit")
    monkeypatch.setenv(rd.MAX_MB_ENV, "lots")
    assert "must be a positive number" in error_of(lambda: rd.load("pope", small))


@pytest.mark.parametrize("case", ["garbage", "garbage_csv", "latin1", "not_json", "bom_ok"])
def test_format_is_sniffed_before_datasets_sees_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         case: str) -> None:
    no_datasets(monkeypatch)
    rng = np.random.default_rng(0)
    if case == "garbage":
        p = tmp_path / "pope.jsonl"
        p.write_bytes(rng.bytes(200_000))
        msg = assert_error(lambda: rd.load("pope", p), p)
        assert "not a text file" in msg or "not UTF-8 text" in msg, msg
    elif case == "garbage_csv":
        p = tmp_path / "meta.csv"
        p.write_bytes(b"img_filename,y,place\n" + bytes(range(1, 32)) * 3000)
        assert_error(lambda: rd.load("waterbirds", p), p, "not a text file", "control characters")
    elif case == "latin1":
        p = tmp_path / "caps.csv"
        raw = "image,caption,objects\nx.png,caf\u00e9,dog\n".encode("latin-1")
        p.write_bytes(raw)
        assert_error(lambda: rd.load("captions", p), p, f"not UTF-8 text (byte {raw.index(0xE9)})")
    elif case == "not_json":
        p = tmp_path / "pope.json"
        p.write_text("image,label\nx.png,yes\n")
        assert_error(lambda: rd.load("pope", p), p, "does not look like JSON", "'image,label")
    else:  # a byte-order mark and leading blank lines are fine: the file goes on to datasets
        p = tmp_path / "pope.jsonl"
        p.write_bytes(b"\xef\xbb\xbf\n\n" + json.dumps(pope_rows()[0]).encode() + b"\n")
        with pytest.raises(ReachedDatasets):
            rd.load("pope", p)


def test_temporary_cache_folders_are_removed_on_every_exit(imgs: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    import datasets

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def left() -> list[str]:
        return sorted(p.name for p in tmp.iterdir() if p.name.startswith("mmi-bench-data-"))

    good = jsonl(imgs / "pope.jsonl", pope_rows())
    assert len(rd.load("pope", good)) == 3 and left() == []
    mixed = imgs / "mixed.jsonl"  # datasets itself fails on it
    mixed.write_text(json.dumps(pope_rows()[0]) + "\n\n" + json.dumps({**pope_rows()[2], "label": 1}) + "\n")
    error_of(lambda: rd.load("pope", mixed))
    assert left() == []
    real = datasets.load_dataset
    seen: list[str] = []

    def interrupted(*args: Any, **kwargs: Any) -> None:
        seen.append(kwargs["cache_dir"])
        assert Path(kwargs["cache_dir"]).is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "load_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rd.load("pope", good)
    assert seen and not Path(seen[0]).exists() and left() == []
    monkeypatch.setattr(datasets, "load_dataset", real)

    # a folder left by a process killed outright (its pid is gone) is swept by the next load;
    # one of a live process, or a fresh one, is not
    dead = tmp / "mmi-bench-data-999999999-abc"  # above Linux's pid_max: never alive
    live = tmp / f"mmi-bench-data-{os.getppid()}-def"
    fresh = tmp / "mmi-bench-data-999999998-ghi"
    for d in (dead, live, fresh):
        (d / "sub").mkdir(parents=True)
    for d in (dead, live):
        os.utime(d, (1e9, 1e9))
    assert len(rd.load("pope", good)) == 3
    assert left() == sorted([live.name, fresh.name])
