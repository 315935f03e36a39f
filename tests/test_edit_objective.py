"""The edit request's read-out (``EditRequest.objective``), one implementation per family.

Every family is checked on its zoo model with a request built as the editing task builds it:
row subsets read the same as the whole batch, per-rewrite figures are means over the rewrite's
rows, the preferred value agrees with the margin where a relation has two candidates in play,
diffusion draws are fixed or redrawn as asked, and a task's own read-out replaces the family's.
"""

from __future__ import annotations

import pytest
import torch

from bench.capabilities import EditObjective, EditRequest, ObjectiveOptions
from bench.errors import BenchError
from bench.harness.runner import load_model
from bench.model import DiffusionModel, Model
from tasks.editing import EditingConfig, build_cases


def _request(model: Model, k: int) -> EditRequest:
    cases = build_cases(model, k, EditingConfig(), seed=0)
    diffusion = isinstance(model, DiffusionModel)
    return EditRequest(torch.stack([c.edit_pixels_RCHW for c in cases]),
                       [c.relation.question.format(entity=c.entity) if diffusion else c.relation.question
                        for c in cases],
                       [c.old for c in cases], [c.new for c in cases], batch_size=8,
                       values=[c.relation.values for c in cases])


@pytest.fixture(scope="module", params=["zoo-clip", "zoo-vlm", "zoo-diffusion"])
def model(request: pytest.FixtureRequest) -> Model:
    return load_model(request.param)


@torch.no_grad()
def test_rows_subsets_and_per_rewrite_means(model: Model) -> None:
    req = _request(model, 2)
    obj = req.objective(model, ObjectiveOptions(draws=2, seed=3))
    K, R = req.K, req.pixels_KRCHW.shape[1]
    assert (obj.K, obj.R) == (K, R) and obj.B == K * R * obj.draws
    assert obj.draws == (2 if isinstance(model, DiffusionModel) else 1)
    loss_B = obj.loss_B(None)
    assert loss_B.shape == (obj.B,) and bool(torch.isfinite(loss_B).all())
    idx = torch.tensor([obj.B - 1, 0, 1])  # any rows, any order
    torch.testing.assert_close(obj.loss_B(idx), loss_B[idx], rtol=1e-4, atol=1e-5)
    per_K = torch.stack([loss_B[obj.request_B == k].mean() for k in range(K)])
    torch.testing.assert_close(obj.loss_K(), per_K, rtol=1e-5, atol=1e-6)
    # rows are draw-major: row d·K·R + k·R + r belongs to rewrite k
    assert obj.request_B.tolist() == [k for _ in range(obj.draws) for k in range(K) for _ in range(R)]
    for positions in ("readout", "subject"):
        subject = obj.subject_BL(positions)
        assert subject.shape == obj.valid_BL.shape and bool(subject.any(1).all())
        assert not bool((subject & ~obj.valid_BL).any()), "a subject position outside the real tokens"


@torch.no_grad()
def test_margin_and_preferred_value_agree(model: Model) -> None:
    req = _request(model, 2)
    obj = req.objective(model)
    margin_B = obj.margin_B(None)
    if isinstance(model, DiffusionModel):
        torch.testing.assert_close(margin_B, -obj.loss_B(None))  # minus the denoising error
        with pytest.raises(BenchError, match="judge"):
            obj.prefers_new_B(None)
        return
    prefers = obj.prefers_new_B(None)
    assert prefers.dtype == torch.bool and prefers.shape == (obj.B,)
    # preferring the new answer over every value means preferring it over the old one
    assert bool((margin_B[prefers] > 0).all())
    # a cross-entropy: positive, and lower on rows that prefer the new answer than on the others
    loss_B = obj.loss_B(None)
    assert bool((loss_B > 0).all())
    if prefers.any() and (~prefers).any():
        assert float(loss_B[prefers].mean()) < float(loss_B[~prefers].mean())


@torch.no_grad()
def test_diffusion_draws_fixed_or_redrawn() -> None:
    model = load_model("zoo-diffusion")
    req = _request(model, 1)
    fixed = req.objective(model, ObjectiveOptions(draws=1, seed=0))
    assert torch.equal(fixed.loss_B(None), fixed.loss_B(None))
    fresh = req.objective(model, ObjectiveOptions(draws=1, seed=0, resample=True))
    first, second = fresh.loss_B(None), fresh.loss_B(None)
    assert not torch.equal(first, second)  # a fine-tuning loop sees new (timestep, noise) draws
    again = req.objective(model, ObjectiveOptions(draws=1, seed=0, resample=True))
    assert torch.equal(again.loss_B(None), first)  # ... from a seeded generator
    # one prompt per rewrite or per row: the denoiser's output is the same, the text stream is not
    per_rewrite = req.objective(model, ObjectiveOptions(draws=2, seed=1, prompt_rows="rewrite"))
    per_row = req.objective(model, ObjectiveOptions(draws=2, seed=1))
    torch.testing.assert_close(per_rewrite.loss_B(None), per_row.loss_B(None))
    assert per_rewrite.valid_BL.shape[0] == req.K and per_row.valid_BL.shape[0] == per_row.B
    with pytest.raises(BenchError, match="draws"):
        req.objective(model, ObjectiveOptions(draws=2, resample=True))


def test_a_tasks_own_readout_replaces_the_familys_and_survives_select(zoo_clip) -> None:  # type: ignore[no-untyped-def]
    seen: list[int] = []

    def readout(model: Model, request: EditRequest, options: ObjectiveOptions) -> EditObjective:
        seen.append(request.K)
        return model.edit_objective(request, options)

    req = _request(zoo_clip, 2)
    req.readout = readout
    sub = req.select([1])
    assert sub.K == 1 and sub.new == [req.new[1]] and sub.readout is readout
    sub.objective(zoo_clip)
    req.objective(zoo_clip)
    assert seen == [1, 2]


def test_bad_requests_are_one_line_errors(zoo_clip) -> None:  # type: ignore[no-untyped-def]
    req = _request(zoo_clip, 1)
    with pytest.raises(BenchError, match="values"):
        EditRequest(req.pixels_KRCHW, req.prompts, req.old, req.new).objective(zoo_clip)
    with pytest.raises(BenchError, match="subjects"):
        EditRequest(req.pixels_KRCHW, req.prompts * 2, req.old, req.new, values=req.values).objective(zoo_clip)
