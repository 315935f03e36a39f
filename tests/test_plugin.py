"""A third-party method plugin installed through the entry-point machinery (issue 22, item 4): a
distribution ``mmi-demo-plugin`` (a ``.dist-info`` folder with ``entry_points.txt`` and its module, on
``sys.path`` as ``pip install`` would leave it) registers ``demo_gxi`` in ``mmi_bench.methods``.
The CLI lists, plans and runs it like a built-in; its records name its distribution; and the
suite's grid-shaped tests pass with it installed (their counts come from the planner)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = textwrap.dedent('''
    """Gradient times input (Shrikumar et al., 2016), as a third party would package it."""
    from dataclasses import dataclass

    import torch

    from bench.method import Method, MethodConfig


    @dataclass(frozen=True)
    class DemoConfig(MethodConfig):
        absolute: bool = False


    class DemoGxI(Method):
        """Gradient x input, summed over channels (Shrikumar et al., 2016)."""

        name = "demo_gxi"
        capabilities = frozenset({"attribute"})
        Config = DemoConfig

        def attribute(self, model, request):
            out = []
            for x, idx in request.chunks(requires_grad=True):
                (g,) = torch.autograd.grad(request.score(x, idx).sum(), x)
                m = (g * x).detach().sum(1)
                out.append(m.abs() if self.config.absolute else m)
            return torch.cat(out).float()
''')


def install_plugin(root: Path) -> Path:
    """Write the plugin's module and dist-info under ``root`` (a site-packages stand-in)."""
    (root / "mmi_demo_plugin.py").write_text(PLUGIN)
    dist = root / "mmi_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mmi-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mmi_bench.methods]\ndemo_gxi = mmi_demo_plugin:DemoGxI\n")
    return root


def bench_env(plugin_root: Path, tmp: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_root), str(ROOT)]), HF_HUB_OFFLINE="1",
               MMI_BENCH_CACHE=str(tmp / "cache"))
    return env


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = install_plugin(tmp_path_factory.mktemp("site"))
    return root, bench_env(root, tmp_path_factory.mktemp("env"))


@pytest.mark.slow  # fresh interpreters (~30 s); .ci/run runs this file's slow tests
def test_an_installed_plugin_is_listed_planned_run_and_recorded(plugin, tmp_path):
    _, env = plugin
    run = [sys.executable, "-m", "bench"]
    listed = subprocess.run([*run, "list", "methods"], env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "demo_gxi" in listed.stdout
    store = tmp_path / "s.sqlite"
    ev = subprocess.run([*run, "evaluate", "--task", "attribution", "--method", "demo_gxi", "--model", "zoo-clip",
                         "--quick", "--jobs", "1", "--no-progress", "--store", str(store)],
                        env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "demo_gxi" in ev.stdout and "3 cells ran" in ev.stderr  # with the two references
    (record,) = [json.loads(r) for (r,) in sqlite3.connect(store).execute(
        "select record from runs where method = 'demo_gxi'")]
    assert record["status"] == "ok"
    assert record["provenance"]["fingerprint"]["method_package"] == "mmi-demo-plugin==0.1"


@pytest.mark.slow
def test_the_grid_shaped_tests_pass_with_the_plugin_installed(plugin):
    """The tests that count cells, list methods, publish the default grid or check every registered
    method, run in a process where the plugin is installed."""
    _, env = plugin
    files = ["tests/test_reproduce.py", "tests/test_registry.py", "tests/test_method_coverage.py",
             "tests/test_cli_traps.py", "tests/test_runner_order.py"]
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "passed" in res.stdout
