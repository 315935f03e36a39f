"""``bench publish``: the published default leaderboard, regenerated from one results store.

From a store holding exactly the default run (``bench evaluate --quick --seed 0 --seed 1``:
every task × every compatible method × the zoo models, two seeds, quick profile) it writes,
into the output folder (``leaderboard/``):

- ``README.md``: the Markdown tables (``bench leaderboard --profile quick``), provenance and
  the one command that regenerates everything;
- ``default.json``: the same rows as ``bench leaderboard --profile quick --format json``;
- ``manifests/default.toml``: the reproduction manifest of the whole run
  (``bench reproduce leaderboard/manifests/default.toml``);
- ``baseline.json``: the regression baseline, the :data:`BASELINE_CELLS` subset of the
  same run (``bench regress``, which CI runs).

Output is deterministic: the same store gives byte-identical files. The store is refused
(one-line error) when it is stale — a task version or zoo weights hash differs from the
current code's — or does not hold exactly the default grid (``--allow-partial`` publishes
what it holds of it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from bench.errors import BenchError
from bench.records import RunRecord

DEFAULT_SEEDS = (0, 1)
DEFAULT_COMMAND = "bench evaluate --quick --seed 0 --seed 1"
STORE_NAME = "default-quick.sqlite"
REGENERATE = (f"{DEFAULT_COMMAND} --store {STORE_NAME} && "
              f"bench publish --store {STORE_NAME} --out leaderboard")

# The regression baseline: cheap cells on the two zoo CLIPs, every task they support, the
# references and the methods that run in seconds (no zoo-vlm: greedy generation turns a
# last-bit difference into another token; no zoo-diffusion: minutes per cell). Re-running it
# takes about 1 min on an idle 2-core CPU with 2 workers, about 2 min on a loaded one.
BASELINE_CELLS: dict[tuple[str, str], tuple[str, ...]] = {
    ("attribution", "zoo-clip"): ("random", "oracle", "saliency", "input_x_gradient", "gradcam",
                                  "attention_rollout", "relevance"),
    ("localization", "zoo-clip"): ("random", "oracle", "causal_tracing", "activation_patching",
                                   "grad_x_activation", "decomposition", "attention_knockout"),
    ("editing", "zoo-clip"): ("random", "oracle", "finetune", "rome", "memit", "steering", "sae"),
    ("spurious", "zoo-clip-spurious"): ("random", "oracle", "leace", "dfr", "steering", "sae"),
}


def in_baseline(record: RunRecord) -> bool:
    return record.key.method in BASELINE_CELLS.get((record.key.task, record.key.model), ())


def default_plan() -> list[Any]:
    """The published grid: every built-in task × method × model (plugins and objects left out, so
    an installed plugin never changes what the project publishes), quick profile, seeds 0 and 1."""
    from bench.registry import METHODS, MODELS, TASKS
    from bench.harness.runner import plan

    return plan(TASKS.builtin_names(), METHODS.builtin_names(), MODELS.builtin_names(), list(DEFAULT_SEEDS),
                quick=True).cells


def _default_plan_ids() -> set[str]:
    from bench.harness.runner import cell_key

    return {cell_key(c).id for c in default_plan()}


def stale(records: Sequence[RunRecord]) -> list[str]:
    """What in ``records`` differs from the current code: task versions, zoo weights hashes."""
    from bench.harness.runner import make_task
    from leaderboard.regress import current_model_hash

    out = []
    for t, v in sorted({(r.key.task, r.key.task_version) for r in records}):
        now = make_task(t).spec.version
        if now != v:
            out.append(f"task {t} is v{now} now (the store has v{v})")
    for m, h in sorted({(r.key.model, r.model_hash) for r in records}):
        now = current_model_hash(m)
        if now != h:
            out.append(f"{m} weights are {now[:12]} now (the store has {h[:12]})")
    return out


def publish(store_path: str | Path, out_dir: str | Path, allow_partial: bool = False) -> list[Path]:
    """Write the published files (see the module docstring); returns their paths."""
    from bench.harness.store import Store
    from leaderboard.manifest import BASELINE_TOLERANCES, dumps_toml, dumps_json, from_records
    from leaderboard.render import render
    from leaderboard.scorer import score

    store_path, out = Path(store_path), Path(out_dir)
    if not store_path.exists():
        raise BenchError(f"results store {str(store_path)!r} does not exist; run `{DEFAULT_COMMAND} --store "
                         f"{store_path}` first")
    if not out.is_dir():
        raise BenchError(f"output folder {str(out)!r} does not exist")
    with Store(store_path, readonly=True) as store:
        records = list(store.records(profile="quick", rows=True))
    if not records:
        raise BenchError(f"results store {str(store_path)!r} holds no quick-profile results; run `{DEFAULT_COMMAND}`")

    # stale first: it is the clearer message (a new task version also shows as missing cells)
    changes = stale(records)
    if changes:
        raise BenchError(f"results store {str(store_path)!r} is stale: {'; '.join(changes)} — re-run "
                         f"`{DEFAULT_COMMAND}` into a fresh store")
    planned = _default_plan_ids()
    have = {r.key.id for r in records}
    missing = sorted(planned - have)
    records = [r for r in records if r.key.id in planned]  # other configs or seeds are not the default grid
    if missing and not allow_partial:
        raise BenchError(f"results store {str(store_path)!r} lacks {len(missing)} of the {len(planned)} cells of "
                         f"`{DEFAULT_COMMAND}` (e.g. {missing[0]}); run it into the store, or pass --allow-partial")
    if not records:
        raise BenchError(f"results store {str(store_path)!r} holds none of the default grid's cells")
    whole = from_records(records, title="MMI-Bench default leaderboard (quick profile, seeds 0 and 1)",
                         command=DEFAULT_COMMAND, tolerance=BASELINE_TOLERANCES)
    baseline_records = [r for r in records if in_baseline(r)]
    if not baseline_records:
        raise BenchError("the store holds none of the baseline's cells")
    baseline = from_records(baseline_records, title="MMI-Bench regression baseline (a cheap subset of the "
                            "default leaderboard)", command=f"bench publish --store {STORE_NAME} --out leaderboard",
                            tolerance=BASELINE_TOLERANCES)

    rows = score(records)
    files = {
        out / "README.md": readme(records, with_agreement(render(rows, "md"), records), whole.source, whole.task_versions,
                                  whole.model_hashes, whole.packages, len(baseline.cells), missing),
        out / "default.json": render(rows, "json") + "\n",
        out / "manifests" / "default.toml": dumps_toml(whole),
        out / "baseline.json": dumps_json(baseline.to_dict()) + "\n",
    }
    (out / "manifests").mkdir(exist_ok=True)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)


def with_agreement(tables: str, records: Sequence[RunRecord]) -> str:
    """The Markdown tables followed by the faithfulness-vs-planted-truth agreement table
    (:mod:`leaderboard.agreement`) when the records hold localization results with faithfulness."""
    from leaderboard.agreement import faithfulness_agreement, render_agreement

    extra = render_agreement(faithfulness_agreement(records))
    return f"{tables}\n\n{extra}" if extra else tables


def readme(records: Sequence[RunRecord], tables: str, source: dict, task_versions: dict[str, str],
           model_hashes: dict[str, str], packages: dict[str, str], baseline_cells: int,
           missing: Sequence[str]) -> str:
    """The published README: what this is, how to regenerate and check it, provenance, tables."""
    n_cells = len(records)
    n_groups = len({(r.key.task, r.key.model, r.key.method) for r in records})
    commit = source.get("git_commit") or "unknown"
    dirty = " (with uncommitted changes)" if source.get("git_dirty") else ""
    partial = (f"\n**Partial:** {len(missing)} cells of the default grid are missing from this run.\n"
               if missing else "")
    base_list = "\n".join(f"- `{t}` on `{m}`: {', '.join(f'`{x}`' for x in methods)}"
                          for (t, m), methods in BASELINE_CELLS.items())
    versions = ", ".join(f"`{t}` v{v}" for t, v in sorted(task_versions.items()))
    weights = "\n".join(f"| `{m}` | `{h}` |" for m, h in sorted(model_hashes.items()))
    pkgs = ", ".join(f"{p} {v}" for p, v in sorted(packages.items()))
    return f"""# MMI-Bench — the default leaderboard

Every task × every compatible method (and the `random` / `oracle` references) × the zoo models,
seeds 0 and 1, quick profile: `{DEFAULT_COMMAND}`, {n_cells} runs of {n_groups} (task, model,
method) cells. This folder is generated: do not edit it by hand.
{partial}
## How to read a table

- **A figure** is the mean over the two seeds of the metric as the task computes it from its
  per-example rows; the brackets are its **95% bootstrap interval over examples**: the scored
  examples are resampled (within each seed, and within the strata a metric is defined over, such as
  caption/POPE kinds or spurious groups) and the metric is recomputed on every resample, so AUROC,
  worst-group accuracy and harmonic means get intervals of the statistic itself. An interval of a
  proportion over n examples has about the binomial width (±0.12 at 0.6 over 64 examples). A
  zero-width interval means every example gave the same value. `†` marks an interval over seeds
  only (a record stored without per-example rows).
- **`rank`** groups methods that the data cannot separate: every method is compared with the
  group's leader *on the same examples* (a paired bootstrap test of their difference, Holm-corrected
  over the comparisons, alpha 0.05); `1=` marks a group of several. Two methods in different groups
  differ beyond chance even when their intervals overlap (pairing removes the examples' shared
  difficulty); two methods in one group may still differ, by less than the table can detect.
  Localization has two ground truths, so two ranks: `rank` on the planted (storage) site's top-1,
  `rank (mediation_tau)` on agreement with the measured mediation profile (`bench zoo audit`), each
  with its own line under the table. Its **`answers`** column says what each method's scores measure
  (mediation, a direct effect, decodability): none reads weights, so none measures storage directly.
- **The line under a table** gives the leader's margin over the runner-up with its paired interval,
  how often the leader stays first over the paired resamples, and the table's **minimum detectable
  difference** (alpha 0.05, power 0.8): a smaller difference between two methods would most likely go
  unnoticed at this number of examples (`bench power --task T --model M --profile quick --mde 0.05`
  says how many examples a target needs).
- **`norm.`** is `(m − random) / (oracle − random)`, shown only for metrics whose oracle is a ceiling
  by construction (it answers from the ground truth), so it runs from chance (0) to a bound no method
  can pass (1). Deletion and insertion AUCs, retained quality and the models' own context figures
  are shown raw.
- **Per-example rows** of every cell are in the store: `bench samples --task T --model M --method X
  --store {STORE_NAME}` exports them (CSV, JSON lines, Parquet), `bench inspect` shows a method's worst
  examples.

## Regenerate everything

One command (about 20–35 min with 2 workers on a 2-core CPU) rewrites every file here:

```bash
{REGENERATE}
```

`bench publish` alone (seconds) regenerates the files from a store that already holds that run;
it refuses a store whose task versions or zoo weights differ from the current code's.

| file | what |
|---|---|
| `README.md` | this page: the tables below (`bench leaderboard --profile quick`) |
| `default.json` | the same rows as JSON (`bench leaderboard --profile quick --format json`) |
| `manifests/default.toml` | the reproduction manifest: grid, versions, every expected figure and its tolerance |
| `baseline.json` | the regression baseline that CI checks: {baseline_cells} cells of the same run |

## Check it

```bash
bench reproduce leaderboard/manifests/default.toml   # re-runs all {n_cells} runs, expected vs obtained (~20-35 min)
bench regress --baseline leaderboard/baseline.json   # re-runs the baseline's cells (~1-2 min); CI runs this
bench regress --baseline leaderboard/baseline.json --update   # after an intended change: rewrite it, print the diff
```

A figure passes when `|obtained - expected| <= max(abs, rel * |expected|, ci_k * h)`, `h` the
recorded CI half-width (defaults abs = 1e-3, rel = 1e-3, ci_k = 0: the check is about numerical
drift, and the example-level intervals do not widen it; why in `leaderboard/manifest.py`;
per-metric overrides with `--tolerance-file`), and when it comes from as many seeds. The baseline's cells (chosen to re-run in about a minute; no zoo-vlm, whose
greedy generation is not float-tolerant, and no zoo-diffusion, minutes per cell):

{base_list}

## Provenance

Code: git commit `{commit}`{dirty}. Task versions: {versions}. Packages: {pkgs}.

| model | weights sha256 |
|---|---|
{weights}

## Tables

{tables}
"""
