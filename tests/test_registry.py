import sys
import textwrap

import pytest

from bench.errors import BenchError, UnknownName
from bench.registry import METHODS, MODELS, TASKS, DuplicateName, PluginConflict, Registry


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
    assert r.entry("fancy").dist == "myplugin" and r.entry("fancy").dist_version == "0.1"
    assert r.entry("saliency").dist is None
    # a plugin may not shadow a built-in: refused for that name alone, with a warning
    r2 = Registry("method", "mmi_bench.test_methods")
    r2.register("fancy", "methods.saliency:Saliency")
    with pytest.warns(PluginConflict, match="myplugin"):
        assert r2.names() == ["fancy"]
    assert r2.entry("fancy").target == "methods.saliency:Saliency"


def _plugin(root, entries: str, version: str = "1.2.3"):  # type: ignore[no-untyped-def]
    """A tiny installed distribution ``shadowplug`` (a dist-info folder and a module) under ``root``."""
    (root / "shadowplug.py").write_text(textwrap.dedent("""
        from bench.method import Method
        class Shadow(Method):
            name = "saliency"
            capabilities = frozenset({"attribute"})
        class Extra(Method):
            name = "shadowplug_extra"
            capabilities = frozenset({"attribute"})
    """))
    dist = root / f"shadowplug-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: shadowplug\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(entries)


def test_plugin_shadowing_a_builtin_is_refused_for_that_name_alone(tmp_path, monkeypatch, capsys):
    """A real entry point in the real ``mmi_bench.methods`` group registers ``saliency`` (taken)
    and a new name: the first is refused with one warning naming the distribution, the second works,
    and so does everything else (``bench list methods``)."""
    import warnings

    from bench.app.cli import main
    from bench.registry import plugin_provenance

    _plugin(tmp_path, "[mmi_bench.methods]\nsaliency = shadowplug:Shadow\n"
                      "shadowplug_extra = shadowplug:Extra\nbroken = not-a-target\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # a fresh look at the entry points; the registry's entries and cache come back afterwards
    monkeypatch.setattr(METHODS, "_entries", {n: e for n, e in METHODS._entries.items() if not e.is_plugin})
    monkeypatch.setattr(METHODS, "_eps_loaded", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = METHODS.names()
        METHODS.names()  # read once per process: no second warning
    conflicts = [w for w in caught if issubclass(w.category, PluginConflict)]
    assert len(conflicts) == 2  # 'saliency' (taken) and 'broken' (malformed), once each
    msgs = sorted(str(w.message) for w in conflicts)
    assert "'broken'" in msgs[0] and "shadowplug 1.2.3" in msgs[0]
    assert "'saliency'" in msgs[1] and "shadowplug 1.2.3" in msgs[1] and "already registered" in msgs[1]
    assert "shadowplug_extra" in names and "broken" not in names and names.count("saliency") == 1
    assert METHODS.entry("saliency").target == "methods.saliency:Saliency"  # the built-in stays
    assert METHODS.get("shadowplug_extra").name == "shadowplug_extra"
    assert plugin_provenance("method", "shadowplug_extra") == {"distribution": "shadowplug", "version": "1.2.3"}
    assert plugin_provenance("methods", "saliency") is None
    assert plugin_provenance("task", "attribution") is None
    with pytest.raises(UnknownName):
        plugin_provenance("method", "no_such_method_xyz")

    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in out if line.strip()]
    assert "shadowplug_extra" in listed and "occlusion" in listed and listed.count("saliency") == 1


def test_builtin_registered_twice_in_code_stays_an_error():
    r = Registry("method", "mmi_bench.test_nothing")
    r.register("saliency", "methods.saliency:Saliency")
    with pytest.raises(DuplicateName, match="registered twice"):
        r.register("saliency", "methods.occlusion:Occlusion")
