"""The planted facts' two ground truths (storage and mediation), the audit that measures them,
and the localization task's mediation metrics (issue 20, items 1-3 and 6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from bench.model import PlantedRelation
from models.zoo import WEIGHTS_DIR
from models.zoo.audit import AUDIT_STREAM, Rate, markdown, reverted, storage_only, with_section
from models.zoo.io import records_hash
from tasks.localization import kendall_tau_b, mediation_rows

AUDITED = ("zoo-clip", "zoo-vlm", "zoo-diffusion")


def test_kendall_tau_b_agrees_with_scipy_ties_included():
    rng = np.random.default_rng(0)
    for trial in range(40):
        S = int(rng.integers(3, 9))
        # coarse values so both sides have ties
        scores = rng.integers(0, 3 if trial % 2 else 50, size=(6, S)).astype(float)
        profile = rng.integers(0, 4, size=S).astype(float)
        if len(set(profile)) == 1:
            profile[0] += 1
        got = kendall_tau_b(torch.tensor(scores), torch.tensor(profile)).numpy()
        for i in range(6):
            want = kendalltau(scores[i], profile).statistic
            assert (got[i] == 0.0) if math.isnan(want) else math.isclose(got[i], want, abs_tol=1e-12)


def test_mediation_rows_against_a_hand_profile():
    rel = PlantedRelation("home", "s1", ("a", "b"), 0, 2, "q", ("x", "y"),
                          mediation=(("s0", 0.1), ("s1", 0.6), ("s2", 0.0), ("s3", 0.9)))
    bare = PlantedRelation("season", "s3", ("a", "b"), 0, 2, "q", ("x", "y"))
    cands = ["s0", "s1", "s2", "s3"]
    scores = torch.tensor([[0.1, 0.6, 0.0, 0.9],  # the profile itself: tau 1, strongest (s3) on top
                           [0.6, 0.1, 0.9, 0.0],  # the reverse order: tau -1
                           [1.0, 1.0, 1.0, 1.0],  # all tied: tau 0, top-1 at chance
                           [0.0, 1.0, 0.0, 0.0],  # one-hot on the storage site
                           [0.0, 1.0, 0.0, 0.0]])
    out = mediation_rows(scores, ["home", "home", "home", "home", "season"], cands, [rel, bare])
    tau, top = out["med_tau"].tolist(), out["med_top1"].tolist()
    assert tau[:3] == [1.0, -1.0, 0.0] and top[:3] == [1.0, 0.0, 0.25]
    assert math.isclose(tau[3], kendalltau([0, 1, 0, 0], [0.1, 0.6, 0.0, 0.9]).statistic) and top[3] == 0.0
    assert math.isnan(tau[4]) and math.isnan(top[4])  # a relation never audited


def test_wilson_interval():
    lo, hi = Rate(30, 100).interval()
    # Wilson 95% for 30/100 (Newcombe, 1998): [0.2189, 0.3958]
    assert math.isclose(lo, 0.21886, abs_tol=1e-4) and math.isclose(hi, 0.39576, abs_tol=1e-4)
    assert Rate(0, 10).interval()[0] == pytest.approx(0.0, abs=1e-12)
    assert Rate(10, 10).interval()[1] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", AUDITED)
def test_every_planted_relation_has_a_storage_site_and_a_mediation_profile(name):
    meta = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    audit = meta["audit"]
    assert audit["stream"] == AUDIT_STREAM
    for rel, a in audit["relations"].items():
        assert a["storage"] in a["candidates"] and set(a["mediation"]) == set(a["candidates"])
        # the storage site is established by the revert test: reverting it puts the fact near chance
        assert a["recall"]["shipped"]["rate"] > 0.9
        assert a["recall"]["revert_storage"]["hi"] < a["recall"]["shipped"]["lo"]
        assert a["recall"]["revert_storage"]["rate"] < a["chance"] + 0.15
        for r in a["mediation"].values():
            assert r["lo"] <= r["rate"] <= r["hi"] and r["n"] == audit["n"]
    # the card shows the same section the sidecar renders
    card = (WEIGHTS_DIR.parent / "cards" / f"{name}.md").read_text()
    assert markdown(name, audit) in card
    # and the records' identity covers the profiles (a re-audit re-runs what depends on them)
    assert "+audit-" in records_hash(meta)
    moved = json.loads(json.dumps(meta))
    first = next(iter(moved["audit"]["relations"].values()))
    site = first["candidates"][0]
    first["mediation"][site]["rate"] += 0.01
    assert records_hash(moved) != records_hash(meta)


def test_zoo_vlm_declares_its_unplanted_entities():
    a = json.loads((WEIGHTS_DIR / "zoo-vlm.json").read_text())["audit"]
    for rel, v in a["relations"].items():
        assert len(v["unplanted_entities"]) == 32
        # phase 1 taught them; planting erased most of it: declared, not used as controls
        assert v["unplanted"]["phase1"]["lo"] > v["unplanted"]["shipped"]["hi"]


def test_loaders_carry_the_profile_and_the_reference_weights(zoo_clip):
    meta = json.loads((WEIGHTS_DIR / "zoo-clip.json").read_text())
    for rel in zoo_clip.planted:
        assert dict(rel.mediation) == {s: r["rate"] for s, r in meta["audit"]["relations"][rel.relation]["mediation"].items()}
    before = {k: v.clone() for k, v in zoo_clip.module.state_dict().items()}
    with reverted(zoo_clip, [zoo_clip.planted[0].site]):
        changed = [k for k, v in zoo_clip.module.state_dict().items() if not torch.equal(v, before[k])]
        assert changed and all(".layers.2.mlp." in k for k in changed)
    assert all(torch.equal(v, before[k]) for k, v in zoo_clip.module.state_dict().items())


def test_storage_figures_reproduce_on_zoo_clip(zoo_clip):
    """What `bench zoo verify` re-measures: the recorded revert-test figures, exactly (same streams)."""
    meta = json.loads((WEIGHTS_DIR / "zoo-clip.json").read_text())["audit"]
    found = storage_only(zoo_clip, int(meta["n"]))
    for rel, v in meta["relations"].items():
        for k, r in v["recall"].items():
            assert abs(found[rel]["recall"][k].rate - r["rate"]) <= 1 / meta["n"]


def test_card_section_is_replaced_not_duplicated():
    a = json.loads((WEIGHTS_DIR / "zoo-clip.json").read_text())["audit"]
    sec = markdown("zoo-clip", a)
    once = with_section("# card\n\ntext\n", sec)
    assert with_section(once, sec) == once and once.count("bench zoo audit: start") == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", AUDITED)
def test_bench_zoo_audit_reproduces_the_recorded_audit(name):
    from models.zoo.train import audit_zoo

    meta = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["audit"]
    found = audit_zoo(name, n=int(meta["n"]), write=False)
    for rel, v in meta["relations"].items():
        for site, r in v["mediation"].items():
            assert abs(found["relations"][rel]["mediation"][site]["rate"] - r["rate"]) <= 2 / meta["n"], (rel, site)
