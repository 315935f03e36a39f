"""The library API (issue 22, item 2): ``bench.evaluate`` on an unregistered Method object and on
registered names, returning records, leaderboard rows and a DataFrame with the references'
normalisation, exactly as the CLI would compute them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import bench
from bench.errors import BenchError
from bench.method import Method
from bench.registry import METHODS


ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    """The README's ``bench.evaluate`` example, verbatim."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if "bench.evaluate(" in b]
    return block


@pytest.fixture(scope="module")
def results():
    """The README's example, run as written (a notebook's unregistered method, beside saliency)."""
    scope: dict = {"__name__": "readme_example"}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    return scope["res"]


class GradTimesInput(Method):
    name = "my_gxi"
    capabilities = frozenset({"attribute"})


def test_unregistered_method_object_on_a_zoo_model(results):
    assert sorted(r.key.method for r in results.records) == ["my_gxi", "oracle", "random", "saliency"]
    assert not results.failed
    mine = next(r for r in results.records if r.key.method == "my_gxi")
    assert mine.provenance["unregistered"] == {"method": "readme_example:GradTimesInput"}
    assert "unregistered" not in next(r for r in results.records if r.key.method == "saliency").provenance
    assert mine.provenance["fingerprint"]["method_code"].startswith("object-")
    assert len(mine.rows["example"]) == len(mine.example_hashes) > 0

    df = results.to_dataframe()
    main = df[(df.metric == "pointing_game") & (df.method == "my_gxi")].iloc[0]
    assert main.ci_low <= main["mean"] <= main.ci_high and main.ci_high > main.ci_low
    # normalised against the references, as the CLI's table: (score - random) / (oracle - random)
    ref = {m: df[(df.metric == "pointing_game") & (df.method == m)].iloc[0]["mean"] for m in ("random", "oracle")}
    assert main.normalised == pytest.approx((main["mean"] - ref["random"]) / (ref["oracle"] - ref["random"]))
    assert "my_gxi" in results.table()


def test_the_api_and_the_cli_give_the_same_leaderboard(results, tmp_path, capsys):
    """A registered method through the API and through ``bench evaluate``: the same figures."""
    from bench.app.cli import main

    store = tmp_path / "cli.sqlite"
    api = bench.evaluate(tasks="spurious", methods="leace", models="zoo-clip-spurious", seeds=[0], store=store)
    assert api.store == str(store) and {r.key.method for r in api.records} == {"leace", "random", "oracle"}
    code = main(["evaluate", "--task", "spurious", "--method", "leace", "--model", "zoo-clip-spurious",
                 "--quick", "--store", str(store), "--no-progress", "--jobs", "1"])
    out = capsys.readouterr()
    assert code == 0 and "0 cells ran" in out.err and "3 already stored" in out.err  # the API's cells, reused
    assert api.table() in out.out


def test_an_instance_of_a_registered_class_is_that_method_with_its_config(tmp_path):
    from methods.integrated_gradients import IntegratedGradients

    res = bench.evaluate(tasks="attribution", methods=IntegratedGradients(n_steps=4), models="zoo-clip",
                         seeds=[0], references=False, store=tmp_path / "s.sqlite")
    (rec,) = res.records
    assert rec.key.method == "integrated_gradients" and rec.method_config["n_steps"] == 4
    assert "unregistered" not in rec.provenance and not METHODS.entry("integrated_gradients").is_object


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(BenchError, match="unknown profile"):
        bench.evaluate(tasks="attribution", methods="saliency", models="zoo-clip", profile="fast")
    with pytest.raises(BenchError, match="Method instances"):
        bench.evaluate(tasks="attribution", methods=[object()], models="zoo-clip")
    with pytest.raises(BenchError, match="did you mean"):
        bench.evaluate(tasks="atribution", methods="saliency", models="zoo-clip")

    class Clash(GradTimesInput):
        name = "saliency"

    with pytest.raises(BenchError, match="already registered"):
        bench.evaluate(tasks="attribution", methods=[Clash()], models="zoo-clip")
