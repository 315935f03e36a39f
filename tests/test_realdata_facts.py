"""Real-data localization and editing (``--data facts=PATH`` / ``counterfact=PATH``) on a tiny saved
``hf:`` LLaVA, through the command line as a user's run; the ``facts`` loader's one-line errors and
``bench data template KIND`` for every kind."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before datasets is imported anywhere: no hub, ever
os.environ["HF_DATASETS_OFFLINE"] = "1"

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.app.cli import main
from bench.errors import BenchError
from bench.harness.store import Store
from bench.kit import realdata
from bench.kit.world import World, WorldConfig
from bench.kit.world.facts import glyph_scene

QUIET = ["--jobs", "1", "--no-progress", "--no-table", "--quick"]


def write_facts(d: Path, n: int = 8) -> Path:
    """``n`` VLKEB-shaped facts about world glyphs (zoo-vlm's planted "home"): each with a counterfactual
    image (another glyph whose home differs), a rephrased question, another render, a locality probe
    (the glyph's season, unrelated to the edit) and, on even rows, a portability probe."""
    world = World(0, WorldConfig(n_entities=64))
    ents = world.entities[:n]
    rows = []
    for i, e in enumerate(ents):
        other = next(o for o in world.entities if o.facts["home"] != e.facts["home"])

        def png(name: str, k: int) -> str:
            s = glyph_scene(world, name, np.random.default_rng([i, k]), "test")
            Image.fromarray(s.image_HWC).save(d / f"{name}_{i}_{k}.png")
            return f"{name}_{i}_{k}.png"

        row = {"image": png(e.name, 0), "question": "what is the home of the glyph?", "answer": e.facts["home"],
               "counterfactual": other.facts["home"], "counterfactual_image": png(other.name, 1),
               "rephrase": "what is the home of this glyph?", "image_rephrase": png(e.name, 2),
               "locality_question": "what is the season of the glyph?", "locality_answer": e.facts["season"]}
        if i % 2 == 0:
            row |= {"portability_question": "what is the home of the glyph?", "portability_answer": other.facts["home"]}
        rows.append(row)
    path = d / "facts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.tiny_hf import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_facts(tmp_path_factory.mktemp("facts"))


def test_facts_load_with_vlkeb_spellings(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "b.png")
    (tmp_path / "f.jsonl").write_text(json.dumps({"image": "a.png", "src": "what is it?", "gt": "cat", "alt": "dog",
                                                  "m_loc": "b.png", "m_loc_q": "colour?", "m_loc_a": "red",
                                                  "port_q": "sound?", "port_a": "bark"}) + "\n")
    [f] = realdata.load("facts", tmp_path / "f.jsonl")
    assert (f.question, f.answer, f.counterfactual) == ("what is it?", "cat", "dog")
    assert f.locality_image is not None and f.locality_image.path.name == "b.png"
    assert (f.portability_question, f.portability_answer) == ("sound?", "bark")
    # no counterfactual image, and no other row answering "dog": localization cannot pair it
    with pytest.raises(BenchError, match=r"row 1 \(id '1'\) has no counterfactual_image"):
        realdata.counterfactual_inputs([f], "f.jsonl")


@pytest.mark.parametrize("row, problem", [
    ({"answer": "cat", "counterfactual": "Cat"}, "counterfactual equals answer ('cat') in row 1"),
    ({"locality_question": "q?"}, "locality_question and locality_answer go together; only locality_question"),
    ({"image": "missing.png"}, "image file not found: 'missing.png'"),
])
def test_facts_malformed_is_one_line(tmp_path: Path, row: dict, problem: str) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    base = {"image": "a.png", "question": "what is it?", "answer": "cat", "counterfactual": "dog"}
    (tmp_path / "f.jsonl").write_text(json.dumps(base | row) + "\n")
    with pytest.raises(BenchError) as e:
        realdata.load("facts", tmp_path / "f.jsonl")
    assert problem in str(e.value) and "\n" not in str(e.value) and str(tmp_path / "f.jsonl") in str(e.value)


@pytest.mark.parametrize("kind", sorted(realdata.KINDS))
def test_template_of_every_kind_loads(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "template", kind, "--out", str(tmp_path)]) == 0
    path = tmp_path / f"{kind}.jsonl"
    assert realdata.load(kind, path)
    assert f"wrote {path}" in capsys.readouterr().out
    with pytest.raises(BenchError, match="already exists"):
        realdata.write_template(kind, tmp_path)


def _records(store: Path, task: str) -> dict[str, dict[str, float]]:
    with Store(store, readonly=True) as s:
        return {r.key.method: r.metrics for r in s.records(rows=True) if r.key.task == task and r.status == "ok"}


@pytest.mark.slow
def test_localization_faithfulness_on_hf_llava_from_a_facts_file(llava_dir: Path, facts: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "r.sqlite"
    assert main(["evaluate", "--task", "localization", "--model", f"hf:{llava_dir}", "--data", f"facts={facts}",
                 "--method", "causal_tracing", "--store", str(store), *QUIET]) == 0
    got = _records(store, "localization")
    assert set(got) == {"random", "oracle", "causal_tracing"}
    for m in got.values():  # faithfulness only: no planted truth on a real checkpoint
        assert math.isnan(m["top1"]) and math.isfinite(m["faith_suff"]) and math.isfinite(m["faith_nec_oracle"])
    # the oracle bound is an upper bound of the method's sufficiency (exhaustive: 2 LM MLPs)
    assert got["causal_tracing"]["faith_suff"] <= got["causal_tracing"]["faith_suff_oracle"] + 1e-9
    capsys.readouterr()
    assert main(["leaderboard", "--store", str(store), "--profile", "quick", "--task", "localization"]) == 0
    table = capsys.readouterr().out
    assert "localization v1.3+facts-" in table and "faith_suff" in table
    line = next(ln for ln in table.splitlines() if ln.startswith("| causal_tracing"))
    assert line.count("[") >= 3  # intervals over examples


@pytest.mark.slow
def test_editing_on_hf_llava_from_facts_and_counterfact(llava_dir: Path, facts: Path, tmp_path: Path) -> None:
    cf = realdata.write_template("counterfact", tmp_path / "cf")
    store = tmp_path / "r.sqlite"
    assert main(["evaluate", "--task", "editing", "--model", f"hf:{llava_dir}", "--data", f"facts={facts}",
                 "--method", "finetune", "--store", str(store), *QUIET]) == 0
    got = _records(store, "editing")
    assert got["oracle"]["score"] == 1.0 and got["oracle"]["portability"] == 1.0
    assert got["random"]["specificity"] == 1.0  # the unedited model keeps every locality token
    ft = got["finetune"]
    assert all(0.0 <= ft[k] <= 1.0 for k in ("efficacy", "generalization", "specificity", "portability"))
    assert main(["evaluate", "--task", "editing", "--model", f"hf:{llava_dir}", "--data", f"counterfact={cf}",
                 "--method", "rome", "--store", str(store), *QUIET]) == 0
    with Store(store, readonly=True) as s:
        versions = {r.key.task_version for r in s.records() if r.key.method == "rome"}
    from tasks.editing import EditingTask

    assert len(versions) == 1 and next(iter(versions)).startswith(f"{EditingTask.spec.version}+counterfact-")


@pytest.mark.slow
def test_concept_edit_file_on_zoo_diffusion_is_judged(tmp_path: Path) -> None:
    """A TIME / UCE-style prompt set on zoo-diffusion, scored by its judge (zoo-oracle): the oracle is a
    perfect edit; a concept the judge cannot read is a one-line error naming the row."""
    path = realdata.write_template("concept_edit", tmp_path / "ce")
    store = tmp_path / "r.sqlite"
    assert main(["evaluate", "--task", "editing", "--model", "zoo-diffusion", "--data", f"concept_edit={path}",
                 "--method", "uce", "--store", str(store), *QUIET]) == 0
    got = _records(store, "editing")
    assert got["oracle"]["concept_score"] == 1.0
    assert all(0.0 <= got["uce"][k] <= 1.0 for k in ("concept_efficacy", "concept_specificity"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"source": "dog", "destination": "cat", "positives": ["a dog"], "negatives": ["a cat"]}))
    from bench.kit.realdata import load_data
    from models.zoo_models import load_zoo_diffusion_model
    from tasks.editing import EditingConfig, concept_cases_from_file

    with pytest.raises(BenchError, match=r"row 1 \(id '1'\): the judge of 'zoo-diffusion' reads shapes"):
        concept_cases_from_file(load_zoo_diffusion_model(), load_data("concept_edit", bad), EditingConfig(), 0, None)


@pytest.mark.slow
def test_answers_sharing_their_first_token_are_a_one_line_error(tmp_path: Path) -> None:
    """Localization reads the first answer token's logit difference: a row whose two answers begin with
    the same token would measure nothing, so it is refused naming the row (on the zoo-vlm tokenizer)."""
    from bench.registry import MODELS
    from bench.kit.realdata import load_data
    from tasks.localization import LocalizationTask

    path = write_facts(tmp_path, n=8)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r["counterfactual"] = r["answer"] + " south"  # same first word: same first token
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = LocalizationTask().with_data({"facts": load_data("facts", path)})
    from bench.registry import METHODS

    _, test = task.data_split()  # type: ignore[attr-defined]
    with pytest.raises(BenchError, match=r"answer and counterfactual begin with the same token") as e:
        task.run(MODELS.get("zoo-vlm")(), METHODS.get("random")(), 0, quick=True)
    assert f"row(s) {test[0] + 1}, " in str(e.value) and "\n" not in str(e.value)
