"""ROME, MEMIT and UCE/TIME: the closed forms on hand-made tensors, and real edits of zoo models."""

from __future__ import annotations

import pytest
import torch

from bench.capabilities import EditRequest
from bench.kit.editing import ParameterSnapshot
from bench.errors import BenchError
from bench.kit.readout import value_logits
from bench.registry import METHODS
from methods.rome import key_second_moment, least_squares_update, out_projection, rank_one_update
from methods.uce import closed_form


# ----------------------------------------------------------------------------- closed forms
def test_rank_one_update_inserts_the_pair_and_spares_C_orthogonal_keys() -> None:
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(50, 6, generator=g, dtype=torch.float64)
    C = key_second_moment(keys, ridge=0.0)
    W = torch.randn(3, 6, generator=g, dtype=torch.float64)
    k, r = keys[0], torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    W2 = W + rank_one_update(C, k, r)
    assert torch.allclose(W2 @ k, W @ k + r)
    # a key with k_otherᵀ C⁻¹ k = 0 keeps its value exactly
    u = torch.linalg.solve(C, k)
    other = keys[1] - (keys[1] @ u) / (k @ u) * k
    assert torch.allclose(W2 @ other, W @ other)


def test_least_squares_update_fits_all_keys_and_matches_rome_for_one() -> None:
    g = torch.Generator().manual_seed(1)
    C = key_second_moment(torch.randn(40, 5, generator=g, dtype=torch.float64), ridge=0.1)
    K = torch.randn(5, 3, generator=g, dtype=torch.float64)
    R = torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(least_squares_update(C, K, R, 1e-9) @ K, R, atol=1e-6)
    # one key, weight λ: ROME's update shrunk by s / (λ + s), s = kᵀ C⁻¹ k (Sherman–Morrison)
    k, r = K[:, :1], R[:, :1]
    s = float(k[:, 0] @ torch.linalg.solve(C, k[:, 0]))
    assert torch.allclose(least_squares_update(C, k, r, 2.0), rank_one_update(C, k[:, 0], r[:, 0]) * s / (2.0 + s))


def test_uce_closed_form_maps_edits_preserves_and_time_ridge() -> None:
    g = torch.Generator().manual_seed(2)
    W0 = torch.randn(4, 6, generator=g, dtype=torch.float64)
    c = torch.randn(2, 6, generator=g, dtype=torch.float64)
    v = torch.randn(2, 4, generator=g, dtype=torch.float64)
    p = torch.randn(3, 6, generator=g, dtype=torch.float64)
    W = closed_form(W0, c, v, p, lamb=1e-6, preserve_scale=1.0)
    assert torch.allclose(c @ W.T, v, atol=1e-4)  # edited tokens reach their targets
    assert torch.allclose(p @ W.T, p @ W0.T, atol=1e-4)  # preserved tokens keep their outputs
    time_W = closed_form(W0, c, v, None, lamb=1e6, preserve_scale=0.0)
    assert torch.allclose(time_W, W0, atol=1e-4)  # a huge ridge keeps the old weights
    # no edits: the closed form is the identity on W
    assert torch.allclose(closed_form(W0, c[:0], v[:0], p, 0.1, 1.0), W0)


# ----------------------------------------------------------------------------- config and support
def test_bad_configs_and_unsupported_models_are_clear_errors(zoo_clip) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BenchError, match="positions"):
        METHODS.get("rome")(positions="everywhere")
    with pytest.raises(BenchError, match="steps"):
        METHODS.get("memit")(steps=0)
    with pytest.raises(BenchError, match="variant"):
        METHODS.get("uce")(variant="ucee")
    with pytest.raises(BenchError, match="no config option"):
        METHODS.get("uce")(lambda_=1.0)
    assert METHODS.get("uce")().supports(zoo_clip) is not None
    assert METHODS.get("rome")().supports(zoo_clip) is None
    rel = zoo_clip.planted[0]
    req = _request(zoo_clip, rel, 0, site="vision.blocks.1.cross.v")
    with pytest.raises(BenchError, match="did you mean|unknown site"):
        METHODS.get("rome")().edit(zoo_clip, req)


# ----------------------------------------------------------------------------- zoo models
@pytest.fixture(scope="module")
def zoo_clip():  # type: ignore[no-untyped-def]
    from models.zoo_models import load_zoo_clip_model

    return load_zoo_clip_model()


@pytest.fixture(scope="module")
def zoo_vlm():  # type: ignore[no-untyped-def]
    from models.zoo_models import load_zoo_vlm_model

    return load_zoo_vlm_model()


@pytest.fixture(scope="module")
def zoo_diffusion():  # type: ignore[no-untyped-def]
    from models.zoo_models import load_zoo_diffusion_model

    return load_zoo_diffusion_model()


def _case(model, k: int):  # type: ignore[no-untyped-def]
    from tasks.editing import EditingConfig, build_cases  # test helper only: methods never import tasks

    return build_cases(model, k + 1, EditingConfig(), seed=0)[k]


def _request(model, rel, k: int, site: str | None = None) -> EditRequest:  # type: ignore[no-untyped-def]
    c = _case(model, k)
    return EditRequest(c.edit_pixels_RCHW[None], [c.relation.question], [c.old], [c.new], site=site,
                       values=[c.relation.values])


def _answers(model, case, pixels):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return [case.relation.values[i] for i in value_logits(model, case.relation)(pixels).argmax(-1).tolist()]


@pytest.mark.parametrize("method", ["rome", "memit"])
def test_clip_edit_flips_the_fact_touches_only_output_projections_and_is_deterministic(zoo_clip, method: str) -> None:  # type: ignore[no-untyped-def]
    c = _case(zoo_clip, 0)
    assert _answers(zoo_clip, c, c.edit_pixels_RCHW).count(c.new) < len(c.edit_pixels_RCHW)
    req = EditRequest(c.edit_pixels_RCHW[None], [c.relation.question], [c.old], [c.new], site=c.relation.site,
                      values=[c.relation.values])
    snap = ParameterSnapshot(zoo_clip.module)
    try:
        m = METHODS.get(method)()
        m.edit(zoo_clip, req)
        assert _answers(zoo_clip, c, c.edit_pixels_RCHW) == [c.new] * len(c.edit_pixels_RCHW)
        edited = {n for n, p in zoo_clip.module.named_parameters() if not torch.equal(p, snap.saved[n])}
        allowed = {f"{zoo_clip.site_specs[s].module}.fc2.weight" for s in
                   ([c.relation.site] if method == "rome" else m.layers(zoo_clip, req))}
        assert edited and edited <= allowed
        first = {n: p.detach().clone() for n, p in zoo_clip.module.named_parameters() if n in edited}
        snap.restore()
        METHODS.get(method)().edit(zoo_clip, req)
        assert all(torch.equal(p, first[n]) for n, p in zoo_clip.module.named_parameters() if n in edited)
    finally:
        snap.restore()


def test_memit_batch_edits_several_facts_at_once(zoo_clip) -> None:  # type: ignore[no-untyped-def]
    cases = [_case(zoo_clip, k) for k in (0, 2)]  # both on the first relation (cases cycle relations)
    assert cases[0].relation.relation == cases[1].relation.relation
    req = EditRequest(torch.stack([c.edit_pixels_RCHW for c in cases]), [c.relation.question for c in cases],
                      [c.old for c in cases], [c.new for c in cases], site=cases[0].relation.site,
                      values=[c.relation.values for c in cases])
    snap = ParameterSnapshot(zoo_clip.module)
    try:
        m = METHODS.get("memit")()
        assert m.layers(zoo_clip, req) == ["vision.blocks.0.mlp", "vision.blocks.1.mlp", "vision.blocks.2.mlp"]
        m.edit(zoo_clip, req)
        for c in cases:
            assert _answers(zoo_clip, c, c.edit_pixels_RCHW).count(c.new) >= 3
        assert m.diagnostics["target_reached"] > 0.5
    finally:
        snap.restore()


def test_rome_edits_the_vlm_answer_at_the_readout_position(zoo_vlm) -> None:  # type: ignore[no-untyped-def]
    c = _case(zoo_vlm, 0)
    req = EditRequest(c.edit_pixels_RCHW[None], [c.relation.question], [c.old], [c.new], site=c.relation.site,
                      values=[c.relation.values])
    assert out_projection(zoo_vlm, c.relation.site).in_features == 512  # down_proj
    snap = ParameterSnapshot(zoo_vlm.module)
    try:
        assert _answers(zoo_vlm, c, c.edit_pixels_RCHW).count(c.new) == 0
        m = METHODS.get("rome")()
        m.edit(zoo_vlm, req)
        assert _answers(zoo_vlm, c, c.edit_pixels_RCHW) == [c.new] * len(c.edit_pixels_RCHW)
        assert m.diagnostics["loss_edited"] < 0.5 * m.diagnostics["loss_before"]
    finally:
        snap.restore()


def test_rome_subject_positions_cannot_act_from_the_last_layer(zoo_clip) -> None:  # type: ignore[no-untyped-def]
    """The measured reason ``positions="readout"`` is the default: at the tower's last MLP, the image
    tokens have no path to the CLS embedding, so the v* optimisation cannot move the answer."""
    c = _case(zoo_clip, 1)  # the relation planted in the last vision MLP
    assert c.relation.site == "vision.blocks.3.mlp"
    req = EditRequest(c.edit_pixels_RCHW[None], [c.relation.question], [c.old], [c.new], site=c.relation.site,
                      values=[c.relation.values])
    snap = ParameterSnapshot(zoo_clip.module)
    try:
        m = METHODS.get("rome")(positions="subject", steps=5)
        m.edit(zoo_clip, req)
        assert m.diagnostics["delta_norm"] == 0.0
        assert m.diagnostics["loss_target"] == pytest.approx(m.diagnostics["loss_before"])
    finally:
        snap.restore()


def _cross_values(model, prompts: list[str], site: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad(), model.trace(read=[site]) as t:
        model.noise_pred(torch.zeros(len(prompts), *model.sample_shape), 10, prompts)
    return t[site]


@pytest.mark.parametrize("variant", ["uce", "time"])
def test_uce_concept_replacement_moves_values_toward_the_new_word(zoo_diffusion, variant: str) -> None:  # type: ignore[no-untyped-def]
    model = zoo_diffusion
    prompts = ["a red circle", "a green circle", "a blue circle"]
    req = EditRequest(torch.rand(3, 2, 3, 32, 32), prompts, ["circle"] * 3, ["square"] * 3,
                      values=[("circle", "square", "triangle", "cross")] * 3)
    site = model.layer_sites("unet", "cross_v")[0]
    probe = ["a red circle", "a red square", "a red triangle"]
    pos = model.prompt_token_positions(probe[:1], "circle")[0][0]
    before = _cross_values(model, probe, site)
    snap = ParameterSnapshot(model.module)
    try:
        METHODS.get("uce")(variant=variant).edit(model, req)
        after = _cross_values(model, probe, site)
        edited = {n for n, p in model.module.named_parameters() if not torch.equal(p, snap.saved[n])}
        assert edited and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in edited)
    finally:
        snap.restore()
    # the edited "circle" value now lies much nearer the unedited "square" value
    assert (after[0, pos] - before[1, pos]).norm() < 0.1 * (before[0, pos] - before[1, pos]).norm()
    triangle_shift = float((after[2, pos] - before[2, pos]).norm() / before[2, pos].norm())
    if variant == "uce":  # preserved concepts keep their values; TIME has no preservation set
        assert triangle_shift < 0.05
    else:
        assert triangle_shift > 0.05


def test_uce_fact_rewrite_lowers_the_denoising_error_of_the_renders(zoo_diffusion) -> None:  # type: ignore[no-untyped-def]
    from methods.rome import edit_batch

    model = zoo_diffusion
    c = _case(model, 0)
    req = EditRequest(c.edit_pixels_RCHW[None], [c.relation.question.format(entity=c.entity)], [c.old], [c.new],
                      values=[c.relation.values])
    batch = edit_batch(model, req, "subject", draws=2, seed=5)
    with torch.no_grad():
        before = float(batch.loss_K().sum())
    snap = ParameterSnapshot(model.module)
    try:
        m = METHODS.get("uce")(steps=10, draws=2)
        m.edit(model, req)
        assert m.diagnostics["fact_rewrites"] == 1.0 and m.diagnostics["loss_target"] < m.diagnostics["loss_before"]
        with torch.no_grad():
            after = float(batch.loss_K().sum())  # other (timestep, noise) draws than the edit saw
        edited = {n for n, p in model.module.named_parameters() if not torch.equal(p, snap.saved[n])}
        assert edited and all(n.endswith("attn2.to_v.weight") for n in edited)  # fact rewrites: values only
    finally:
        snap.restore()
    assert after < before


def test_rome_on_diffusion_edits_the_text_encoder_mlp_of_the_entity_word(zoo_diffusion) -> None:  # type: ignore[no-untyped-def]
    from methods.rome import edit_batch

    model = zoo_diffusion
    c = _case(model, 0)
    req = EditRequest(c.edit_pixels_RCHW[None], [c.relation.question.format(entity=c.entity)], [c.old], [c.new],
                      site=c.relation.site, values=[c.relation.values])
    batch = edit_batch(model, req, "readout", draws=2, seed=5)
    assert batch.subject_BL.sum(1).tolist() == [1] * batch.subject_BL.shape[0]  # the entity is one word token
    with torch.no_grad():
        before = float(batch.loss_K().sum())
    snap = ParameterSnapshot(model.module)
    try:
        m = METHODS.get("rome")(steps=10, draws=2)
        m.edit(model, req)
        assert m.diagnostics["delta_norm"] > 0 and m.diagnostics["loss_target"] < m.diagnostics["loss_before"]
        with torch.no_grad():
            after = float(batch.loss_K().sum())  # other (timestep, noise) draws than the edit saw
        edited = {n for n, p in model.module.named_parameters() if not torch.equal(p, snap.saved[n])}
        assert edited == {f"{model.site_specs[c.relation.site].module}.fc2.weight"}
    finally:
        snap.restore()
    assert after < before
