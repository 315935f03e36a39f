"""Editing on real data reads the whole answer: :func:`bench.kit.readout.sequence_objective` (teacher-forced
log-probability summed over the answer's tokens), set by the editing task on data files whose answers span
several tokens. On a tiny LLaVA built from config classes (:mod:`models.tiny_hf`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.capabilities import EditRequest, ObjectiveOptions
from bench.kit.readout import answer_token_counts, sequence_objective

Q = ["what is the home of the glyph?", "what colour is it?"]


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from bench.harness.runner import load_model
    from models.tiny_hf import save_tiny_llava

    return load_model(f"hf:{save_tiny_llava(tmp_path_factory.mktemp('seq') / 'llava')}")


def _answer_logp(model, pixels, prompt: str, answer: str) -> float:  # type: ignore[no-untyped-def]
    """log p(answer | image, prompt) summed over the answer's tokens, one row at a time (no padding)."""
    enc = model.encode_spans([prompt], [""], [answer])
    with torch.no_grad():
        lp = torch.log_softmax(model.forward_tokens(pixels[None], enc.ids_BL, enc.mask_BL)[0].float(), -1)
    pos = enc.span_BL[0].nonzero().squeeze(1)
    return float(lp[pos - 1, enc.ids_BL[0, pos]].sum())


def test_single_token_answers_read_as_the_family_read_out(llava) -> None:  # type: ignore[no-untyped-def]
    """One token: the whole-answer read-out is the first-token one (loss, margin, preferred value, subject)."""
    px = torch.rand(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    req = EditRequest(px, Q, ["north", "red"], ["west", "blue"], values=[("north", "west"), ("red", "blue")])
    assert set(answer_token_counts(llava, Q * 2, ["north", "red", "west", "blue"])) == {1}
    fam, seq = llava.edit_objective(req, ObjectiveOptions()), sequence_objective(llava, req, ObjectiveOptions())
    with torch.no_grad():
        assert torch.allclose(fam.loss_B(None), seq.loss_B(None), atol=1e-5)
        assert torch.allclose(fam.margin_B(None), seq.margin_B(None), atol=1e-5)
    assert torch.equal(fam.prefers_new_B(None), seq.prefers_new_B(None))
    assert torch.equal(fam.subject_BL("readout"), seq.subject_BL("readout")[:, : fam.subject_BL("readout").shape[1]])


def test_multi_token_answers_are_scored_whole(llava) -> None:  # type: ignore[no-untyped-def]
    """Several tokens: ``loss = −log p(new)`` and ``margin = log p(new) − log p(old)``, each answer scored
    alone without padding; rows picked by index read the same; the preferred value is the higher log p."""
    px = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    old, new = ["north", "red"], ["north west", "blue green circle"]
    assert answer_token_counts(llava, Q, new) == [2, 3]
    req = EditRequest(px, Q, old, new, values=[(o, n) for o, n in zip(old, new)])
    obj = sequence_objective(llava, req, ObjectiveOptions())
    assert obj.B == 6 and obj.valid_BL.shape == obj.subject_BL("readout").shape
    flat = px.flatten(0, 1)
    want_new = torch.tensor([_answer_logp(llava, flat[b], Q[b // 3], new[b // 3]) for b in range(6)])
    want_old = torch.tensor([_answer_logp(llava, flat[b], Q[b // 3], old[b // 3]) for b in range(6)])
    with torch.no_grad():
        assert torch.allclose(obj.loss_B(None), -want_new, atol=1e-4)
        assert torch.allclose(obj.margin_B(None), want_new - want_old, atol=1e-4)
        idx = torch.tensor([5, 0, 3])
        assert torch.allclose(obj.loss_B(idx), -want_new[idx], atol=1e-4)
    assert torch.equal(obj.prefers_new_B(None), want_new > want_old)
    assert obj.loss_B(None).requires_grad  # an editor optimises it


@pytest.mark.slow
def test_editing_a_facts_file_with_multi_token_answers_through_the_cli(llava, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A facts file whose answers span several tokens edits end to end (fine-tuning on the whole answer)."""
    from bench.app.cli import main
    from bench.harness.store import Store
    from PIL import Image
    import numpy as np

    rows = []
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "question": Q[0], "answer": "north west", "counterfactual": "south east",
                     "rephrase": "what is the home of this glyph?", "locality_question": Q[1],
                     "locality_answer": "red"})
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = tmp_path / "r.sqlite"
    model = str(llava.name)
    assert main(["evaluate", "--task", "editing", "--model", model, "--data", f"facts={path}", "--method", "finetune",
                 "--store", str(store), "--jobs", "1", "--no-progress", "--no-table", "--quick"]) == 0
    with Store(store, readonly=True) as s:
        got = {r.key.method: r for r in s.records()}
    assert all(r.status == "ok" for r in got.values()) and got["oracle"].metrics["efficacy"] == 1.0
    assert 0.0 <= got["finetune"].metrics["efficacy"] <= 1.0


def test_zoo_answers_are_single_tokens() -> None:
    """The zoo's figures never meet the whole-answer read-out: every value of zoo-vlm's planted relations
    (and the visible-attribute answers of its quality probe) is one token, so the editing task keeps the
    family's first-token read-out there (and the zoo path never sets a read-out at all)."""
    from bench.harness.runner import load_model
    from bench.kit.world import COLOURS, SHAPES

    model = load_model("zoo-vlm")  # (the process's copy: shared with the other tests that load it)
    for rel in model.planted:
        assert set(answer_token_counts(model, [rel.question] * len(rel.values), list(rel.values))) == {1}
    words = [*COLOURS, *SHAPES]
    assert set(answer_token_counts(model, ["what is it?"] * len(words), words)) == {1}
