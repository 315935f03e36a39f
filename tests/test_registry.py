import sys
import textwrap

import pytest

from bench.errors import BenchError, UnknownName
from bench.registry import METHODS, MODELS, TASKS, DuplicateName, Registry


def test_builtins_are_registered_lazily():
    assert "attribution" in TASKS and "integrated_gradients" in METHODS and "zoo-clip" in MODELS
    r = Registry("thing", "mmi_bench.test_nothing")
    r.register("lazy", "some_module_that_is_never_imported_xyz:Thing")
    assert "some_module_that_is_never_imported_xyz" not in sys.modules
    assert r.names() == ["lazy"]
    with pytest.raises(BenchError, match="could not be loaded"):
        r.get("lazy")


def test_duplicate_name_is_an_error():
    r = Registry("thing", "mmi_bench.test_nothing")
    r.register("a", "json:dumps")
    with pytest.raises(DuplicateName, match="registered twice"):
        r.register("a", "json:loads")


def test_unknown_name_did_you_mean():
    with pytest.raises(UnknownName, match="did you mean 'integrated_gradients'"):
        METHODS.entry("integrated_gradient")
    with pytest.raises(UnknownName, match="unknown task 'zzz'"):
        TASKS.entry("zzz")


def test_third_party_entry_points(tmp_path, monkeypatch):
    """A plugin distribution on sys.path registers through the entry-point group."""
    (tmp_path / "myplugin.py").write_text(textwrap.dedent("""
        from bench.method import Method
        class Fancy(Method):
            name = "fancy"
            capabilities = frozenset({"attribute"})
    """))
    dist = tmp_path / "myplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mmi_bench.test_methods]\nfancy = myplugin:Fancy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = Registry("method", "mmi_bench.test_methods")
    r.register("saliency", "methods.saliency:Saliency")
    assert r.names() == ["saliency", "fancy"]
    assert r.get("fancy").name == "fancy"
    assert "myplugin" in r.entry("fancy").source
    # a plugin may not shadow a built-in
    r2 = Registry("method", "mmi_bench.test_methods")
    r2.register("fancy", "methods.saliency:Saliency")
    with pytest.raises(DuplicateName):
        r2.names()
