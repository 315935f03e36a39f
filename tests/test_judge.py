"""``--judge hf:FOLDER``: a contrastive checkpoint the user names reads an ``hf:`` diffusion model's samples
(editing's concept edits from a ``concept_edit`` file), carried to the cell like a second model; its
identity is in the cell's key and record, so a stored result is reused only with the same judge.
Tiny checkpoints built from config classes (:mod:`models.tiny_hf`): the figures are meaningless, the
path is what is proven."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.app.cli import main
from bench.harness.store import Store
from bench.kit import realdata

QUIET = ["--jobs", "1", "--no-progress", "--no-table", "--quick"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from models.tiny_hf import save_tiny_clip, save_tiny_llava, save_tiny_sd

    root = tmp_path_factory.mktemp("judge")
    return {"sd": save_tiny_sd(root / "sd"), "clip": save_tiny_clip(root / "clip"),
            "llava": save_tiny_llava(root / "llava"),
            "ce": realdata.write_template("concept_edit", root / "ce")}


def test_contrastive_judge_reads_the_world_and_an_open_vocabulary(folders: dict[str, Path]) -> None:
    """Each attribute is one word of its vocabulary per image; an open-vocabulary read is one of the
    labels or "" (none), and the same images read the same way twice (deterministic)."""
    from bench.harness.runner import load_judge
    from bench.kit.judge import ATTRIBUTES

    judge = load_judge(f"hf:{folders['clip'].resolve()}", "cpu")
    pixels = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))  # not the judge's size
    read = judge(pixels)
    assert set(read) == set(ATTRIBUTES)
    for attr, (_, words) in ATTRIBUTES.items():
        assert len(read[attr]) == len(pixels) and set(read[attr]) <= set(words)
    labels = ("dog", "cat")
    got = judge.read_concepts(pixels, labels)
    assert len(got) == len(pixels) and set(got) <= {*labels, ""}
    assert judge.read_concepts(pixels, labels) == got
    assert judge.identity.startswith(f"hf:{folders['clip'].resolve()}@")


@pytest.mark.parametrize("judge, message", [
    ("zoo-clip", "--judge expects hf:FOLDER"),
    ("hf:{root}/missing", "--judge: hf: "),
    ("hf:{llava}", "this one is generative"),
    ("hf:{sd}", "this one is diffusion"),
])
def test_a_bad_judge_is_one_line(folders: dict[str, Path], judge: str, message: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    judge = judge.format(root=folders["sd"].parent, llava=folders["llava"], sd=folders["sd"])
    rc = main(["evaluate", "--task", "editing", "--model", f"hf:{folders['sd']}", "--data",
               f"concept_edit={folders['ce']}", "--judge", judge, "--method", "uce",
               "--store", str(tmp_path / "r.sqlite"), *QUIET])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "r.sqlite").exists()


def test_a_judge_that_reads_nothing_in_the_grid_is_said(folders: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Zoo models keep zoo-oracle: --judge on a zoo-only grid reaches no cell, and says so."""
    from bench.harness import runner

    p = runner.plan(["editing"], ["random"], ["zoo-diffusion"], [0], quick=True,
                    judge=f"hf:{folders['clip']}")
    assert p.cells and all(c.judge == "" for c in p.cells)
    assert any(label.startswith("--judge ") and "zoo-oracle" in reason for label, reason in p.skipped)


@pytest.mark.slow
def test_concept_edits_on_a_real_diffusion_checkpoint_are_read_by_the_named_judge(
        folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI: a tiny Stable Diffusion folder (no sidecar, so no judge of its own) edited from
    the ``concept_edit`` template, its samples read by a tiny CLIP. The records name the judge (name and
    weights hash) and their task version carries its digest; the same command reuses them; a re-saved
    judge (other weights) runs the cells again under another version, both kept."""
    from models.hf_source import folder_digest
    from models.tiny_hf import save_tiny_clip

    store = tmp_path / "r.sqlite"
    clip = tmp_path / "clip"
    save_tiny_clip(clip)
    args = ["evaluate", "--task", "editing", "--model", f"hf:{folders['sd']}", "--data",
            f"concept_edit={folders['ce']}", "--judge", f"hf:{clip}", "--method", "uce", "--store", str(store), *QUIET]
    assert main(args) == 0
    first = folder_digest(clip)
    with Store(store, readonly=True) as s:
        recs = {r.key.method: r for r in s.records()}
    assert set(recs) == {"uce", "random", "oracle"} and all(r.status == "ok" for r in recs.values())
    for r in recs.values():
        assert r.provenance["judge"] == {"name": f"hf:{clip.resolve()}", "weights_hash": first}
        assert r.key.task_version.endswith(f"+judge-{first[:8]}") and "+concept_edit-" in r.key.task_version
    assert recs["oracle"].metrics["concept_score"] == 1.0
    n_edits = len(realdata.load_data("concept_edit", folders["ce"]).records)
    assert len({h for h in recs["uce"].example_hashes}) == n_edits
    for k in ("concept_efficacy", "concept_specificity"):
        assert 0.0 <= recs["uce"].metrics[k] <= 1.0
    capsys.readouterr()
    assert main(args) == 0
    assert "0 cells ran, 3 already stored" in capsys.readouterr().err
    save_tiny_clip(clip, seed=1)  # the judge re-saved with other weights: not the judge the records name
    assert folder_digest(clip) != first
    assert main(args) == 0
    assert "3 cells ran" in capsys.readouterr().err
    with Store(store, readonly=True) as s:
        versions = {r.key.task_version for r in s.records()}
    assert sorted(v.rsplit("+judge-", 1)[1] for v in versions) == sorted([first[:8], folder_digest(clip)[:8]])


def test_a_diffusion_folder_without_a_judge_is_pointed_to_judge(folders: dict[str, Path]) -> None:
    """The tiny SD folder declares no judge: without --judge its concept-edit cells are skipped with the
    option named; with it, every cell carries the judge's canonical name and its key the judge's digest."""
    from bench.harness import runner
    from models.hf_source import folder_digest

    data = [("concept_edit", str(folders["ce"]))]
    p = runner.plan(["editing"], ["random"], [f"hf:{folders['sd']}"], [0], quick=True, data=data)
    assert not p.cells and any("--judge hf:FOLDER" in why for _, why in p.skipped)
    p = runner.plan(["editing"], ["random"], [f"hf:{folders['sd']}"], [0], quick=True, data=data,
                    judge=f"hf:{folders['clip']}")
    assert p.cells and {c.judge for c in p.cells} == {f"hf:{folders['clip'].resolve()}"}
    assert runner.cell_key(p.cells[0]).task_version.endswith(f"+judge-{folder_digest(folders['clip'])[:8]}")
