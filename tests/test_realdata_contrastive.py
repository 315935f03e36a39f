"""Localization on a contrastive checkpoint from a facts file: each row's question is a caption template
with a ``{value}`` slot, the behaviour is the image's similarity to the caption filled with the answer minus
that filled with the counterfactual, and the candidates are the image tower's per-layer MLPs. Run on zoo-clip
exported as an ``hf:`` folder (a trained CLIP with facts in its image tower)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.app.cli import main
from bench.harness.store import Store

QUIET = ["--jobs", "1", "--no-progress", "--no-table", "--quick"]


def _caption_facts(d: Path, template: str = "the home of the glyph is {value}") -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_realdata_facts import write_facts

    path = write_facts(d, n=8)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:  # the language-side probes of the generative format mean nothing to a CLIP
        r["question"] = template
        for k in ("rephrase", "image_rephrase", "locality_question", "locality_answer", "portability_question",
                  "portability_answer"):
            r.pop(k, None)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_localization_faithfulness_on_a_contrastive_checkpoint_from_a_facts_file(tmp_path: Path) -> None:
    """Every method gets finite faithfulness areas within the bounds the cell measures: no method's
    sufficiency area exceeds the best kept set's (exhaustive here: 2^S subsets of the image tower's MLPs),
    nor its necessity area the best removed set's. A question without a {value} slot is refused per
    cell with the row named."""
    from models.zoo.export import export_zoo

    clip = export_zoo("zoo-clip", tmp_path / "clip")
    facts = _caption_facts(tmp_path)
    store = tmp_path / "r.sqlite"
    assert main(["evaluate", "--task", "localization", "--model", f"hf:{clip}", "--data", f"facts={facts}",
                 "--method", "activation_patching", "--method", "grad_x_activation", "--store", str(store),
                 *QUIET]) == 0
    with Store(store, readonly=True) as s:
        recs = {r.key.method: r for r in s.records()}
    assert set(recs) == {"activation_patching", "grad_x_activation", "random", "oracle"}
    for r in recs.values():
        m = r.metrics
        assert r.status == "ok" and r.key.task_version.startswith("1.3+facts-")
        assert all(math.isfinite(m[k]) for k in ("faith_suff", "faith_nec", "faith_cmd"))
        assert m["faith_suff"] <= m["faith_suff_oracle"] + 1e-9 and m["faith_nec"] <= m["faith_nec_oracle"] + 1e-9
        assert math.isnan(m["top1"])  # no planted site on real data
    (tmp_path / "bad").mkdir()
    bad = _caption_facts(tmp_path / "bad", template="what is the home of the glyph?")
    from bench.harness import runner

    p = runner.plan(["localization"], ["random"], [f"hf:{clip}"], [0], quick=True, data=[("facts", str(bad))])
    assert not p.cells and any("caption template with a {value} slot" in why and "row 1 " in why
                               for _, why in p.skipped)
