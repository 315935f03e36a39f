"""The direction primitive (bench.kit.steering) on hand-made tensors, and the steering method on zoo models."""

from __future__ import annotations

import pytest
import torch

from bench.kit import steering
from bench.capabilities import EditRequest, HallucinationRequest, ScoredOutputs
from bench.errors import BenchError
from bench.registry import METHODS


# ------------------------------------------------------------------ primitive
def test_add_then_project_out_gives_back_the_input() -> None:
    g = torch.Generator().manual_seed(0)
    v = steering.Direction("s", torch.randn(16, generator=g))
    x = steering.project_out(v)(torch.randn(5, 7, 16, generator=g))  # no component along v
    back = steering.project_out(v)(steering.add(v, 3.5)(x))
    assert torch.allclose(back, x, atol=1e-5)
    assert not torch.allclose(steering.add(v, 3.5)(x), x)


def test_project_out_about_a_centre_is_invariant_to_shifts_along_the_direction() -> None:
    g = torch.Generator().manual_seed(1)
    v = steering.Direction("s", torch.randn(8, generator=g))
    c = torch.randn(8, generator=g)
    x = torch.randn(10, 8, generator=g)
    edit = steering.project_out(v, center_D=c)
    assert torch.allclose(edit(x), edit(steering.add(v, -2.0)(x)), atol=1e-5)
    # every row ends with the centre's coordinate along v
    assert torch.allclose(steering.score(edit(x), v), steering.score(c[None], v).expand(10), atol=1e-5)


def test_diff_of_means_recovers_the_mean_shift_of_two_gaussian_blobs() -> None:
    g = torch.Generator().manual_seed(2)
    shift = torch.tensor([3.0, -1.0, 0.0, 2.0, 0.5, 0.0])
    a = torch.randn(4000, 6, generator=g) + shift
    b = torch.randn(4000, 6, generator=g)
    d = steering.diff_of_means(a, b, "s", "a-b")
    assert (d.vector_D - shift).abs().max() < 0.1
    assert torch.allclose(d.offset_D, shift / 2, atol=0.1)
    # centred score separates the blobs at the midpoint
    assert (steering.score(a, d, centered=True) > 0).float().mean() > 0.95
    assert (steering.score(b, d, centered=True) < 0).float().mean() > 0.95


def test_probe_direction_is_deterministic_and_separates_blobs() -> None:
    g = torch.Generator().manual_seed(3)
    shift = torch.tensor([0.0, 4.0, 0.0, 0.0])
    x = torch.cat([torch.randn(200, 4, generator=g) + shift, torch.randn(200, 4, generator=g)])
    y = torch.cat([torch.ones(200), torch.zeros(200)]).long()
    d1 = steering.probe_direction(x, y, "s", seed=0)
    d2 = steering.probe_direction(x, y, "s", seed=0)
    assert torch.equal(d1.vector_D, d2.vector_D)
    assert float(d1.unit() @ (shift / shift.norm())) > 0.95
    acc = ((steering.score(x, d1, unit=False, centered=True) > 0).long() == y).float().mean()
    assert acc > 0.95
    with pytest.raises(BenchError):
        steering.probe_direction(x, torch.zeros(400).long())


def test_project_out_several_directions_orthonormalises_and_drops_dependent_ones() -> None:
    g = torch.Generator().manual_seed(4)
    u, w = torch.randn(12, generator=g), torch.randn(12, generator=g)
    dirs = steering.from_vectors(torch.stack([u, w, 2 * u - w]), "s")
    Q = steering.orthonormal_basis(dirs)
    assert Q.shape == (12, 2)
    assert torch.allclose(Q.T @ Q, torch.eye(2), atol=1e-5)
    out = steering.project_out(dirs)(torch.randn(9, 12, generator=g))
    assert (out @ u).abs().max() < 1e-4 and (out @ w).abs().max() < 1e-4


def test_add_at_positions_and_per_row_alpha() -> None:
    v = steering.Direction("s", torch.ones(4))
    x = torch.zeros(3, 5, 4)
    y = steering.add(v, 2.0, positions=[-1])(x)
    assert torch.equal(y[:, :-1], x[:, :-1]) and torch.equal(y[:, -1], torch.full((3, 4), 2.0))
    z = steering.add(v, torch.tensor([0.0, 1.0, 3.0]))(x)
    assert torch.equal(z[:, 2, 0], torch.tensor([0.0, 1.0, 3.0]))
    with pytest.raises(BenchError):
        steering.add(v, torch.tensor([1.0, 2.0]))(x)  # two coefficients for three rows
    with pytest.raises(BenchError):
        steering.add(steering.Direction("s", torch.ones(3)), 1.0)(x)  # wrong width


def test_from_vectors_and_bad_shapes() -> None:
    dirs = steering.from_vectors(torch.eye(3), "sae", ["f0", "f1", "f2"])
    assert [d.label for d in dirs] == ["f0", "f1", "f2"] and dirs[1].site == "sae"
    with pytest.raises(BenchError):
        steering.from_vectors(torch.eye(3), "sae", ["only one"])
    with pytest.raises(BenchError):
        steering.Direction("s", torch.ones(2, 2))
    with pytest.raises(BenchError):
        steering.diff_of_means(torch.ones(3, 2), torch.ones(3, 5))


# ------------------------------------------------------------------ the method
def test_bad_config_is_a_bench_error(zoo_clip) -> None:
    with pytest.raises(BenchError):
        METHODS.get("steering")(no_such_option=1)
    bad = METHODS.get("steering")(positions="middle")
    req = EditRequest(torch.zeros(1, 1, 3, 32, 32), ["the home of the glyph is {value}"], ["north"], ["west"],
                      values=[("north", "south", "east", "west")])
    with pytest.raises(BenchError):
        bad.edit(zoo_clip, req)
    assert "no site" in METHODS.get("steering")(site="vision.blocks.9.mlp").supports(zoo_clip)


def _glyph_request(model, k: int = 1):
    from tasks.editing import EditingConfig, build_cases

    cases = build_cases(model, k, EditingConfig(), seed=0)
    c = cases[0]
    return c, EditRequest(c.edit_pixels_RCHW[None], [c.relation.question], [c.old], [c.new], site=None,
                          values=[c.relation.values])


def test_contrastive_edit_flips_the_shown_renders_and_leaves_weights_alone(zoo_clip) -> None:
    from bench.kit.editing import ParameterSnapshot, applied_edit
    from bench.kit.readout import value_logits

    case, req = _glyph_request(zoo_clip)
    snap = ParameterSnapshot(zoo_clip.module)
    method = METHODS.get("steering")()
    iv = method.edit(zoo_clip, req)
    assert snap.unchanged() and list(iv.writes) == ["vision.proj"] and iv.components == 1
    read = value_logits(zoo_clip, case.relation)
    vals = case.relation.values
    with torch.no_grad():
        before = [vals[i] for i in read(case.edit_pixels_RCHW).argmax(-1).tolist()]
        with applied_edit(zoo_clip, iv):
            after = [vals[i] for i in read(case.edit_pixels_RCHW).argmax(-1).tolist()]
    assert before.count(case.old) >= len(before) // 2  # the model knew the old fact
    assert after == [case.new] * len(after)  # calibration flips every shown render
    # same request, same vector and coefficient (deterministic)
    again = METHODS.get("steering")()
    again.edit(zoo_clip, req)
    assert again.fitted == method.fitted and again.diagnostics["steering_alpha"] == method.diagnostics["steering_alpha"]


def test_debias_removes_the_spurious_mean_difference_at_the_site() -> None:
    from models.zoo_models import load_zoo_clip_model
    from tasks.spurious import SPURIOUS_VALUES, _scenes
    from bench.kit.world import World

    model = load_zoo_clip_model("zoo-clip-spurious")
    fit = _scenes(World(0), "fit", 16, 0)
    from bench.capabilities import DebiasRequest

    req = DebiasRequest(fit.pixels_BCHW, fit.labels_B, fit.spurious_B, ["a circle", "a square"],
                        [f"a photo on {v}" for v in SPURIOUS_VALUES])
    iv = METHODS.get("steering")().debias(model, req)
    assert iv.components == 1 and list(iv.writes) == ["vision.proj"]
    with torch.no_grad():
        with model.trace(read=["vision.proj"]) as t:
            model.encode_image(fit.pixels_BCHW)
        with model.trace(read=["vision.proj"], write=iv.writes) as t2:
            model.encode_image(fit.pixels_BCHW)
    x, xe = t["vision.proj"], t2["vision.proj"]
    gap = x[fit.spurious_B == 0].mean(0) - x[fit.spurious_B == 1].mean(0)
    gap_e = xe[fit.spurious_B == 0].mean(0) - xe[fit.spurious_B == 1].mean(0)
    assert gap.norm() > 1.0 and gap_e.norm() < 1e-4 * gap.norm() + 1e-5


def test_mass_mean_probe_ranks_by_what_the_fit_labels_mark() -> None:
    from models.zoo_models import load_zoo_vlm_model
    from bench.kit.world import World

    model = load_zoo_vlm_model()
    from bench.kit.readout import pixels_of

    # one image for every row: only the mentioned object differs, so the fit labels alone set the sign
    pix = pixels_of([next(iter(World(0).scenes("fit", 1, 0))).image_HWC] * 6)
    spans = ["red circle", "blue square"] * 3

    def outputs(p: torch.Tensor) -> ScoredOutputs:
        return ScoredOutputs(p, ["describe the image"] * len(spans), ["a"] * len(spans), spans, ["caption"] * len(spans))

    labels = torch.tensor([1, 0] * 3)  # "hallucinated" = mentions a red circle, by construction
    req = HallucinationRequest(outputs(pix), outputs(pix), labels)
    scores = METHODS.get("steering")().detect_hallucination(model, req)
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    assert scores[labels == 1].min() > 0 > scores[labels == 0].max()  # centred on the midpoint
    flipped = METHODS.get("steering")().detect_hallucination(model, HallucinationRequest(outputs(pix), outputs(pix),
                                                                                       1 - labels))
    assert torch.allclose(flipped, -scores)
    with pytest.raises(BenchError):
        METHODS.get("steering")().detect_hallucination(model, HallucinationRequest(outputs(pix), outputs(pix),
                                                                                    torch.zeros(6).long()))
