"""The static HTML leaderboard: escaping, determinism, CLI, a real browser, and the gallery.

The browser test drives the system Chromium (``/usr/bin/chromium``, Debian package
``chromium``; ``MMI_CHROMIUM`` names another binary) through Playwright. When Playwright or
Chromium is missing it reports itself SKIPPED with the command that installs them
(``apt-get install -y chromium``) on a developer's machine, and FAILS in CI (``CI=true``,
which ``.ci/run`` exports after installing Chromium), so CI can never pass without it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.app.cli import main as bench_main
from bench.records import CellKey, RunRecord
from bench.harness.store import Store
from leaderboard.html import INDEX, JS, _cell_id, write_html
from leaderboard.scorer import score

CHROMIUM = os.environ.get("MMI_CHROMIUM", "/usr/bin/chromium")
INSTALL_CHROMIUM = "apt-get install -y chromium"  # Debian/Ubuntu package `chromium`
EVIL = "<script>alert('pwned')</script>"


def rec(method: str, seed: int, metrics: dict[str, float], *, task: str = "toy", model: str = "m",
        main: str = "acc") -> RunRecord:
    key = CellKey(task=task, task_version="1.0", method=method, method_config_hash="cfg0", model=model, seed=seed)
    return RunRecord(key=key, status="ok", metrics=dict(metrics), main_score=main)


def records() -> list[RunRecord]:
    """Two unregistered tasks (given specs by ``toy_specs``), a tie, a missing metric and a hostile name."""
    out = []
    for model in ("m", 'mo"del&<b>'):
        for m, base in (("random", 0.1), ("oracle", 1.0), ("zeta", 0.8), ("alpha", 0.3), ("mid", 0.55), (EVIL, 0.5)):
            for s in range(3):
                metrics = {"acc": base + 0.01 * s, "err": 1.0 - base + 0.02 * ((s * 7 + len(m)) % 3)}
                if m == "mid":
                    del metrics["err"]  # shows as missing; sorted last whichever way
                out.append(rec(m, s, metrics, model=model))
    out += [rec(m, s, {"f1": v + 0.05 * s}, task="other", main="f1")
            for m, v in (("random", 0.2), ("oracle", 0.9), ("zeta", 0.6)) for s in range(2)]
    return out


@pytest.fixture(autouse=True)
def toy_specs(monkeypatch):
    """The unregistered tasks "toy" and "other" get specs whose metrics are normalised (their oracle
    is declared a ceiling), as a registered task's would be."""
    from bench.task import MetricSpec, TaskSpec
    from leaderboard import html as html_mod
    from leaderboard import render as render_mod
    from leaderboard import scorer

    specs = {t: TaskSpec(t, "1.0", frozenset({"contrastive"}), "attribute", main,
                         (MetricSpec("acc", "higher", "accuracy"), MetricSpec("err", "higher", "error score"),
                          MetricSpec("f1", "higher", "F1")))
             for t, main in (("toy", "acc"), ("other", "f1"))}
    for mod in (scorer, render_mod, html_mod):
        monkeypatch.setattr(mod, "_task_spec", specs.get)


@pytest.fixture
def page_dir(tmp_path: Path) -> Path:
    write_html(score(records()), tmp_path / "site", gallery=False)
    return tmp_path / "site"


# -------------------------------------------------------------- static checks
def test_record_strings_are_escaped(page_dir: Path) -> None:
    text = (page_dir / INDEX).read_text()
    assert "<script>alert" not in text and "alert('pwned')</script>" not in text
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in text
    assert 'mo&quot;del&amp;&lt;b&gt;' in text and 'mo"del' not in text
    assert text.count("<script>") == 1  # the page's own sorting script, nothing else
    # file names made from record strings are safe, and every image the page references exists
    for name in os.listdir(page_dir):
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name), name
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) == 3 and all((page_dir / s).is_file() for s in srcs)


def test_page_is_self_contained_and_pins_its_script(page_dir: Path) -> None:
    text = (page_dir / INDEX).read_text()
    assert not re.search(r'(src|href)="(https?:)?//', text)  # no CDN, no remote font or script
    assert "@import" not in text and "url(" not in text
    digest = base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()
    assert f"script-src &#x27;sha256-{digest}&#x27;" in text
    # one sortable table per (task, version, model), the overview, the ties marked
    assert text.count('class="sortable cell-table"') == 3
    assert text.count('class="sortable overview"') == 3  # per task (2) and across tasks
    assert ">1=<" in text and "first in" in text
    assert "mean over 2 shared cells" in text  # task "toy": both models shared by all its methods


def test_same_rows_same_bytes(tmp_path: Path) -> None:
    rows = score(records())
    write_html(rows, tmp_path / "a", gallery=False)
    write_html(score(list(reversed(records()))), tmp_path / "b", gallery=False)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(os.listdir(tmp_path / "b"))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_empty_page(tmp_path: Path) -> None:
    index = write_html([], tmp_path / "empty")
    assert "no results in the store match the filters" in index.read_text()


def test_cli_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "s.sqlite")
    for r in records():
        store.put(r)
    store.close()
    out = tmp_path / "out"
    assert bench_main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--format", "html", "--out", str(out),
                       "--no-gallery"]) == 0
    assert (out / INDEX).is_file() and "wrote" in capsys.readouterr().err
    assert bench_main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--format", "html"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--out DIR" in err and len(err.splitlines()) == 1
    (tmp_path / "file").write_text("x")
    assert bench_main(["leaderboard", "--store", str(tmp_path / "s.sqlite"), "--format", "html", "--out",
                       str(tmp_path / "file"), "--no-gallery"]) == 2
    assert "not a folder" in capsys.readouterr().err


# -------------------------------------------------------------------- browser
def _sync_playwright():  # type: ignore[no-untyped-def]
    """Playwright's sync API and the system Chromium; without them a skip naming the install
    command, or a failure in CI (``CI=true``)."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed: pip install -e '.[dev]'"
    if problem is None and not Path(CHROMIUM).exists():
        problem = (f"no Chromium at {CHROMIUM}: install it with `{INSTALL_CHROMIUM}` "
                   "(Debian/Ubuntu package chromium), or set MMI_CHROMIUM to its path")
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem} (CI=true: the browser test must run in CI)")
        pytest.skip(f"browser test skipped outside CI: {problem}")
    return sync_playwright


def test_missing_chromium_skips_outside_ci_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without Chromium: SKIPPED with the install command on a developer's machine, FAILED in CI."""
    pytest.importorskip("playwright.sync_api")  # the Chromium branch is reached with Playwright present
    monkeypatch.setitem(globals(), "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=INSTALL_CHROMIUM):
        _sync_playwright()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=INSTALL_CHROMIUM):
        _sync_playwright()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=INSTALL_CHROMIUM):
        _sync_playwright()


def _column(table, index: int) -> list[str]:  # type: ignore[no-untyped-def]
    return table.locator("tbody tr").evaluate_all(
        f"rows => rows.map(r => r.cells[{index}].getAttribute('data-sort'))")


def test_browser_sorts_columns_and_renders(page_dir: Path, tmp_path: Path) -> None:
    sync_playwright = _sync_playwright()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
            page.goto((page_dir / INDEX).as_uri())
            page.wait_for_load_state("load")

            table = page.locator(f"#{_cell_id('toy', '1.0', 'm')} table.cell-table")
            heads = table.locator("thead th")
            assert heads.all_inner_texts()[:4] == ["method", "rank", "acc ↑", "err ↑"]
            methods = _column(table, 0)
            assert methods[:2] == ["random", "oracle"]  # references first, then best main score
            assert methods != sorted(methods)

            heads.nth(0).click()
            assert _column(table, 0) == sorted(methods)
            assert heads.nth(0).get_attribute("aria-sort") == "ascending"

            acc = heads.nth(2)
            acc.click()  # higher is better: best first
            values = [float(v) for v in _column(table, 2)]
            assert values == sorted(values, reverse=True) and acc.get_attribute("aria-sort") == "descending"
            acc.click()
            values = [float(v) for v in _column(table, 2)]
            assert values == sorted(values)

            err = heads.nth(3)
            for _ in range(2):  # descending, then ascending; "mid" lacks err and stays last
                err.click()
                col = _column(table, 3)
                assert col[-1] == "" and _column(table, 0)[-1] == "mid"
                nums = [float(v) for v in col[:-1]]
                direction = err.get_attribute("aria-sort")
                assert nums == sorted(nums, reverse=(direction == "descending"))

            # the hostile method name is shown as text and never ran
            assert page.locator("tr", has_text="alert('pwned')").count() >= 2
            widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
            assert len(widths) == 3 and all(w > 0 for w in widths)  # charts load from relative paths
            assert errors == []  # no CSP violation, no script error, no alert

            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 900 and pixels.std() > 10.0  # not a blank page
    assert len(np.unique(pixels)) > 50


# -------------------------------------------------------------------- gallery
def test_gallery_figures(tmp_path: Path) -> None:
    from leaderboard.gallery import GalleryConfig

    recs = [rec(m, 0, {"pointing_game": v}, task="attribution", model="zoo-clip", main="pointing_game")
            for m, v in (("random", 0.2), ("oracle", 1.0), ("saliency", 0.6), ("gradcam", 0.7), (EVIL, 0.5))]
    recs += [rec(m, 0, {"top1": v}, task="localization", model="zoo-vlm", main="top1")
             for m, v in (("random", 0.25), ("oracle", 1.0), ("causal_tracing", 0.9))]
    index = write_html(score(recs), tmp_path / "g", gallery_config=GalleryConfig(n_examples=2))
    text = index.read_text()
    assert "Attribution maps — zoo-clip" in text and "Causal tracing — zoo-vlm" in text
    assert "Not rendered" not in text
    for name in ("gallery-attribution-zoo-clip.png", "gallery-tracing-zoo-vlm.png"):
        assert f'src="{name}"' in text
        img = np.asarray(Image.open(tmp_path / "g" / name).convert("L"), dtype=np.float64)
        assert img.std() > 10.0, name


def test_position_sweep_matches_site_level_tracing() -> None:
    """The gallery's layer × position helper: restoring every position at once is site-level tracing."""
    import torch

    from bench.harness.runner import load_model, make_method, make_task

    model = load_model("zoo-vlm")
    task = make_task("localization")
    cands = task.candidates(model)
    ex = task.examples(model, 2, 0, "test")
    req = task.request(model, ex, cands)
    method = make_method("causal_tracing")
    length = int(req.evaluate("clean", read=cands[:1])[1][cands[0]].shape[1])
    whole = method.position_sweep(req, cands, [list(range(length))])
    assert torch.allclose(whole[..., 0], method.localize(model, req), atol=1e-4)
    last = method.position_sweep(req, cands[-1:], [length - 1, 0])
    assert last.shape == (2, 1, 2)
    assert torch.allclose(last[:, 0, 1], torch.zeros(2, dtype=torch.float64), atol=1e-4)  # <bos> carries nothing
