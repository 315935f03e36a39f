"""The faithfulness-vs-planted-truth agreement (leaderboard/agreement.py) on hand-made localization rows."""

import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from bench.records import CellKey, RunRecord
from bench.samples import make_rows
from leaderboard.agreement import faithfulness_agreement, kendall_tau_b_rows, render_agreement
from tasks.localization import LocalizationTask


def test_tau_b_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 3, (5, 7)).astype(float), rng.integers(0, 4, (5, 7)).astype(float)
    got = kendall_tau_b_rows(x, y)
    for b in range(5):
        want = kendalltau(x[b], y[b]).statistic
        assert (math.isnan(want) and math.isnan(got[b])) or math.isclose(got[b], want)


def _record(method: str, quality: float, faith_gain: float, seed: int = 0, n: int = 12) -> RunRecord:
    """A localization record whose rows give top-1 = ``quality`` on average and a sufficiency curve
    whose middle point recovers ``faith_gain`` of the behaviour (ends 0 and 1)."""
    rng = np.random.default_rng([seed, n])
    top1 = (rng.random(n) < quality).astype(float)
    cols = {}
    for pre in ("suf", "nec", "suf_rand", "nec_rand", "suf_orac", "nec_orac"):
        mid = faith_gain + 0.05 * rng.standard_normal(n)
        # sufficiency: m rises from 0 to 1; necessity: m (after removal) falls from 1 to 0
        lo, hi = (0.0, 1.0) if pre.startswith("suf") else (1.0, 0.0)
        cols.update({f"{pre}@0.0000": np.full(n, lo), f"{pre}@0.5000": mid if pre.startswith("suf") else 1 - mid,
                     f"{pre}@1.0000": np.full(n, hi)})
    ids = [f"{i:04d}:h{i}" for i in range(n)]
    rows = make_rows(example=ids, hash=[f"h{i}" for i in range(n)], kind=["fact"] * n, relation=["home"] * n,
                     top1=top1, rr=top1, auroc=top1, med_tau=top1 * 2 - 1, med_top1=top1,
                     edit_top=np.full(n, np.nan), edit_planted=np.full(n, np.nan), **cols)
    task = LocalizationTask()
    rec = RunRecord(CellKey("localization", task.spec.version, method, "c", "zoo-x", seed, "quick"), "ok",
                    task.metrics_of(rows), main_score="top1")
    rec.rows = rows
    return rec


def test_agreeing_and_disagreeing_rankings():
    qualities = [0.1, 0.4, 0.7, 0.95]
    agree = [_record(f"m{i}", q, 0.2 + 0.2 * i) for i, q in enumerate(qualities)]
    rows = faithfulness_agreement(agree + [_record("oracle", 1.0, 0.0)], n_boot=200)
    by = {(r.truth, r.faith_metric): r for r in rows}
    assert by[("storage", "faith_suff")].tau == pytest.approx(1.0)
    assert by[("storage", "faith_cmd")].tau == pytest.approx(1.0)  # lower CMD is better: reversed
    assert by[("storage", "faith_suff")].n_methods == 4  # the oracle reference is left out
    assert by[("storage", "faith_suff")].verdict == "agrees"
    assert by[("storage", "faith_suff")].ci_low <= 1.0 <= by[("storage", "faith_suff")].ci_high + 1e-12
    reverse = [_record(f"m{i}", q, 0.8 - 0.2 * i) for i, q in enumerate(qualities)]
    r = {(r.truth, r.faith_metric): r for r in faithfulness_agreement(reverse, n_boot=200)}
    assert r[("mediation", "faith_suff")].tau == pytest.approx(-1.0) and r[("mediation", "faith_suff")].verdict == "disagrees"
    text = render_agreement(rows)
    assert "| zoo-x | storage (`top1`) | `faith_suff` | +1.00 |" in text


def test_leaderboard_prints_the_agreement_under_the_tables(tmp_path, capsys):
    from bench.app.cli import main
    from bench.harness.store import Store

    store = Store(tmp_path / "s.sqlite")
    for i, q in enumerate([0.1, 0.4, 0.7, 0.95]):
        store.put(_record(f"m{i}", q, 0.2 + 0.2 * i))
    store.close()
    assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--profile", "quick"]) == 0
    out = capsys.readouterr().out
    assert out.index("### localization") < out.index("## Localization: does ground-truth-free faithfulness agree")
    assert "| zoo-x | mediation (`mediation_tau`) | `faith_nec` | +1.00 |" in out


def test_list_tasks_says_the_ground_truth_on_the_zoo_and_on_a_real_checkpoint(capsys):
    from bench.app.cli import main

    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("localization"):out.index("spurious")]
    assert "ground truth on the zoo: planted storage site" in block
    assert "on a real checkpoint:    none: faithfulness curves on a facts file" in block and "facts" in block
    assert out.count("on a real checkpoint:") == 5 and "not declared" not in out


def test_html_leaderboard_shows_the_agreement_table(tmp_path, capsys):
    """`bench leaderboard --format html` has the agreement section the Markdown leaderboard prints: one row
    per (model, truth, faithfulness metric) of :func:`faithfulness_agreement`, the same τ and interval,
    linked from the page's navigation; a page without localization faithfulness has none."""
    import re

    from bench.app.cli import main
    from bench.harness.store import Store
    from leaderboard.html import AGREEMENT_ID, agreement_section

    recs = [_record(f"m{i}", q, 0.2 + 0.2 * i) for i, q in enumerate([0.1, 0.4, 0.7, 0.95])]
    store = Store(tmp_path / "s.sqlite")
    for r in recs:
        store.put(r)
    store.close()
    out = tmp_path / "site"
    assert main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--profile", "quick", "--format", "html",
                 "--out", str(out), "--no-gallery"]) == 0
    page = (out / "index.html").read_text()
    want = faithfulness_agreement(recs)  # the CLI's default bootstrap: the same figures
    section = page[page.index(f'<h2 id="{AGREEMENT_ID}">'):]
    assert f'href="#{AGREEMENT_ID}"' in page and page.index('id="results"') < page.index(f'id="{AGREEMENT_ID}"')
    body = section[section.index("<tbody>"):section.index("</tbody>")]
    assert body.count("<tr>") == len(want) == 6  # 2 truths x 3 faithfulness metrics, one model
    for r in want:
        tau, ci = re.escape(f"{r.tau:+.2f}</td>"), re.escape(f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]")
        assert re.search(rf"{r.truth_metric}</code>\)</td><td[^>]*><code>{r.faith_metric}</code></td><td[^>]*>{tau}"
                         rf"<td[^>]*>{ci}", body)
    assert agreement_section(want) in page
    assert agreement_section([]) == ""
