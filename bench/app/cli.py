"""The ``bench`` command line.

Every user error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from bench.errors import BenchError

EXIT_USAGE = 2
EXIT_FAILED = 1


def _writable_file(path: str) -> Path:
    p = Path(path)
    if p.exists() and p.is_dir():
        raise BenchError(f"cannot write {path!r}: it is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise BenchError(f"cannot write {path!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise BenchError(f"cannot write {path!r}: permission denied")
    return p


def _config_value(v: str) -> Any:
    val: Any = v
    for conv in (int, float):
        try:
            val = conv(v)
            break
        except ValueError:
            continue
    if v in ("true", "false"):
        val = v == "true"
    if v in ("none", "None"):
        val = None
    return val


def _parse_overrides(items: Sequence[str] | None) -> list[tuple[str | None, str, Any, str]]:
    """``--config [METHOD.]KEY=VALUE`` values as ``(method or None, key, value, the text)``, in order."""
    out: list[tuple[str | None, str, Any, str]] = []
    for item in items or []:
        if "=" not in item:
            raise BenchError(f"--config expects KEY=VALUE or METHOD.KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        scope, dot, key = k.strip().rpartition(".")
        if not key or (dot and not scope):
            raise BenchError(f"--config expects KEY=VALUE or METHOD.KEY=VALUE, got {item!r}")
        out.append((scope or None, key, _config_value(v), f"{key}={v}"))
    return out


def scoped_overrides(items: Sequence[str] | None, named: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``--config`` values as ``{method: {key: value}}``. ``METHOD.KEY=VALUE`` goes to METHOD; an
    unscoped ``KEY=VALUE`` goes to the one non-reference method named with ``--method``, and is
    refused (naming the methods) when several, or all, are named."""
    from bench.harness.runner import references

    parsed = _parse_overrides(items)
    out: dict[str, dict[str, Any]] = {}
    methods = [m for m in dict.fromkeys(named or []) if m not in references()]
    for scope, key, value, text in parsed:
        if scope is None:
            if not named or "all" in (named or []):
                raise BenchError(f"--config {text} names no method and the grid runs every method: "
                                 f"scope it to one, e.g. --config integrated_gradients.{text}")
            if len(methods) != 1:
                which = ", ".join(methods) if methods else "only the references"
                raise BenchError(f"--config {text} names no method and the grid has "
                                 f"{len(methods) or 'no'} methods ({which}): write METHOD.{text}"
                                 + (f", e.g. --config {methods[-1]}.{text}" if methods else ""))
            scope = methods[0]
        out.setdefault(scope, {})[key] = value
    return out


def _parse_data(items: Sequence[str] | None) -> list[tuple[str, str]]:
    """``--data KIND=PATH`` values as (kind, path); kinds and files are checked by the runner."""
    out = []
    for item in items or []:
        kind, sep, path = item.partition("=")
        if not sep or not kind.strip() or not path.strip():
            raise BenchError(f"--data expects KIND=PATH (e.g. pope=./pope.jsonl), got {item!r}")
        out.append((kind.strip(), path.strip()))
    return out


# ------------------------------------------------------------------ evaluate
def check_jobs(jobs: int | None) -> int:
    """``--jobs`` checked (:func:`bench.harness.runner.check_jobs`)."""
    from bench.harness.runner import check_jobs as checked

    return checked(jobs)


def check_cluster(args: argparse.Namespace) -> Any:
    """``--cluster`` and ``--retries`` checked (:func:`bench.harness.cluster.parse_cluster`): None
    when no cluster is named; ``--jobs`` with ``--cluster`` is one line (workers come from the cluster)."""
    from bench.harness.cluster import parse_cluster

    if getattr(args, "cluster", None) is None:
        if getattr(args, "retries", None) is not None:
            raise BenchError("--retries applies to --cluster runs only (a process pool does not retry cells)")
        return None
    if args.jobs is not None:
        raise BenchError("--jobs and --cluster exclude each other: the cluster's workers run the cells "
                         "(e.g. --cluster local:2)")
    return parse_cluster(args.cluster, args.retries)


def runtime_from(args: argparse.Namespace, cluster: Any = None) -> Any:
    """``--device``, ``--dtype`` (and ``--batch-size``) as a runner Runtime, checked; the device is
    resolved here (``cuda`` on a machine without one is one line now, not a failed cell per cell)
    unless the cells run on a remote cluster, whose workers resolve it."""
    from bench.harness import runner

    rt = runner.check_runtime(runner.Runtime(device=args.device, dtype=args.dtype,
                                             batch_size=getattr(args, "batch_size", None)))
    if cluster is None or cluster.kind == "local":
        rt = runner.resolve_runtime(rt)
    return rt


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bench.harness import runner
    from bench.harness.store import Store

    # created at the first stored cell: a command refused below leaves no file behind
    store = Store(args.store, lazy=True)
    cluster = check_cluster(args)
    jobs = check_jobs(args.jobs) if cluster is None else 1
    methods = list(args.method or [])
    overrides = scoped_overrides(args.config, methods)
    if not args.no_references:
        methods = runner.with_references(methods)
    rt = runtime_from(args, cluster)
    p = runner.plan(args.task, methods or None, args.model, args.seed or [0], quick=args.quick,
                    runtime=rt, data=_parse_data(args.data), overrides_by_method=overrides, judge=args.judge or "")
    # a method without the task's capability is the grid's shape, not news: counted, listed on request
    for label, reason in p.skipped:
        if args.show_skipped or label not in p.lacking_capability:
            print(f"skipped {label}: {reason}", file=sys.stderr)
    if p.lacking_capability and not args.show_skipped:
        print(f"skipped {len(p.lacking_capability)} (task, method) pairs where the method lacks the task's "
              "capability (--show-skipped lists them)", file=sys.stderr)
    runner.require_cells(p)
    profile = "quick" if args.quick else "full"
    several = len({(c.task, c.model) for c in p.cells}) > 1

    def show_table(task: str, model: str) -> None:
        """A table whose cells are all in, while the grid goes on (stderr; the whole table is
        printed on stdout at the end)."""
        from tqdm.auto import tqdm

        text = _leaderboard_text(store, "md", profile, [task], [model])[0]
        tqdm.write(f"\n{text}\n", file=sys.stderr)

    res = runner.run_grid(p.cells, store, jobs=jobs, force=args.force, progress=not args.no_progress,
                          on_table=show_table if several and not args.no_table else None, cluster=cluster)
    failed = [r for r in res.ran if r.status != "ok"]
    if res.cluster_timings and res.ran:
        ct = res.cluster_timings
        print(f"cluster {cluster.label}: connected in {ct['connect_s']:.1f} s, first cell stored after "
              f"{ct['first_cell_s']:.1f} s, driver time {1000 * ct['overhead_s'] / len(res.ran):.0f} ms per cell",
              file=sys.stderr)
    if res.interrupted:  # one line: what is kept, and how to go on
        print(f"{runner.signal_word(res.interrupted)}: {len(res.ran) - len(failed)} cells ran and are stored, "
              f"{len(res.already)} were already, {len(p.cells) - len(res.ran) - len(res.already)} not run -> "
              f"{args.store}; run the same command again to resume", file=sys.stderr)
        return 128 + res.interrupted
    for r in failed:
        print(f"failed {r.key.label()}: {r.error}", file=sys.stderr)
    for line in res.rerun_lines():  # why stored cells were re-run, one line per reason and cell group
        print(f"re-run {line}", file=sys.stderr)
    if res.rerun and len(res.retrained) == len(res.rerun):
        retrained = f" ({len(res.retrained)} re-run: their zoo weights were retrained)"
    else:
        retrained = f" ({len(res.rerun)} re-run: stale, reasons above)" if res.rerun else ""
    print(f"{len(res.ran) - len(failed)} cells ran{retrained}, {len(res.already)} already stored, {len(failed)} failed, "
          f"{len(p.skipped)} skipped -> {args.store}", file=sys.stderr)
    if not args.no_table:
        tasks = sorted({c.task for c in p.cells})
        models = sorted({c.model for c in p.cells})
        print(_leaderboard_text(store, "md", profile, tasks, models)[0])
    if args.check_determinism:
        from leaderboard.regress import determinism_report

        if determinism_report(p.cells, store, args.determinism_cells, progress=not args.no_progress):
            return EXIT_FAILED
    return EXIT_FAILED if failed else 0


# ---------------------------------------------------------------- leaderboard
def _select(store: Any, profile: str | None, tasks: Sequence[str] | None = None, models: Sequence[str] | None = None,
            methods: Sequence[str] | None = None, rows: bool = False) -> list[Any]:
    return [r for r in store.records(profile=profile, rows=rows)
            if (not tasks or r.key.task in tasks) and (not models or r.key.model in models)
            and (not methods or r.key.method in methods)]


def _leaderboard_text(store: Any, fmt: str, profile: str, tasks: Sequence[str] | None = None,
                      models: Sequence[str] | None = None, methods: Sequence[str] | None = None) -> tuple[str, bool]:
    """The leaderboard of the matching records as text in ``fmt`` (md, csv, latex, json), and
    whether any record matched. The text is kept (:mod:`bench.answers`) under a digest of the
    matching records, so asking again (or asking ``bench leaderboard`` for the grid ``bench
    evaluate`` just printed) neither imports the scorer nor bootstraps again."""
    import hashlib

    from bench import answers
    from bench.harness.runner import _plugin

    recs = _select(store, profile, tasks, models, methods)
    h = hashlib.sha256()
    for r in sorted(recs, key=lambda r: r.key.id):
        h.update(f"{r.key.id}\n{r.to_json()}\n".encode())
    keep = not any(_plugin("task", r.key.task) or _plugin("method", r.key.method) for r in recs)

    def compute() -> str:
        from leaderboard.render import render
        from leaderboard.scorer import score

        recs = _select(store, profile, tasks, models, methods, rows=True)
        text = render(score(recs), fmt)
        if fmt == "md":  # localization: the faithfulness-vs-planted-truth agreement under the tables
            from leaderboard.publish import with_agreement

            text = with_agreement(text, recs)
        return text

    return answers.remember("leaderboard", [fmt, h.hexdigest()], compute, keep=keep), bool(recs)


def _other_profile_hint(store: Any, args: argparse.Namespace) -> str | None:
    """When nothing matched in ``args.profile`` but the other profile has matching results: say so."""
    other = "quick" if args.profile == "full" else "full"
    if not _select(store, other, args.task, args.model, args.method):
        return None
    return (f"no {args.profile}-profile results match; the store holds {other}-profile results: "
            f"add --profile {other}")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench.harness.store import Store

    store = Store(args.store, readonly=True)  # reading never writes (nor needs a writable file)
    if args.format == "html":  # a folder (page + figures), not text
        from leaderboard.html import write_html
        from leaderboard.scorer import score

        if not args.out:
            raise BenchError("--format html writes a folder: give it with --out DIR")
        from leaderboard.agreement import faithfulness_agreement

        recs = _select(store, args.profile, args.task, args.model, args.method, rows=True)
        rows = score(recs)
        if not rows and (hint := _other_profile_hint(store, args)):
            print(hint, file=sys.stderr)
        # localization: the faithfulness-vs-planted-truth agreement, as the Markdown table prints it
        index = write_html(rows, args.out, gallery=not args.no_gallery, agreement=faithfulness_agreement(recs))
        print(f"wrote {index}", file=sys.stderr)
        return 0
    text, matched = _leaderboard_text(store, args.format, args.profile, args.task, args.model, args.method)
    hint = None if matched else _other_profile_hint(store, args)
    if hint and args.format in ("md", "latex") and not args.out:
        text = hint  # the table's place says it
    elif hint:
        print(hint, file=sys.stderr)  # machine formats stay parseable
    if args.out:
        _writable_file(args.out).write_text(text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


# ----------------------------------------------------------------------- list
def task_meta(name: str) -> dict[str, Any]:
    """A task's version, families, capability, main score and data kinds without importing it
    (it imports torch): the registry's metadata for a built-in, its version read from its
    module's source (:func:`_source_version`); the class's spec for a plugin or when the source
    does not say."""
    from bench.registry import TASKS

    entry = TASKS.entry(name)
    meta = dict(entry.meta)
    if not entry.is_plugin and {"families", "capability", "main_score"} <= set(meta):
        version = _source_version(entry.target)
        if version is not None:
            return {**meta, "version": version}
    cls = TASKS.get(name)
    s = cls.spec
    return {"version": s.version, "families": tuple(s.families), "capability": s.capability,
            "main_score": s.main_score, "data_kinds": tuple(getattr(cls, "data_kinds", ())),
            "ground_truth": dict(getattr(cls, "ground_truth", {}))}


def _source_version(target: str) -> str | None:
    """The ``version="..."`` of the ``spec = TaskSpec(...)`` in the class body of ``module:Class``,
    read with :mod:`ast` from the project's source (None when it is not written that way)."""
    import ast

    module, _, cls_name = target.partition(":")
    if module.split(".")[0] not in ("bench", "tasks", "methods", "models"):
        return None
    path = Path(__file__).resolve().parents[2].joinpath(*module.split(".")).with_suffix(".py")
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and any(getattr(t, "id", None) == "spec" for t in stmt.targets)
                        and isinstance(stmt.value, ast.Call)):
                    for kw in stmt.value.keywords:
                        if kw.arg == "version" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                            return kw.value.value
    return None


def method_meta(name: str) -> dict[str, Any]:
    """A method's capabilities, families and whether it is a reference (registry metadata for a
    built-in, the class for a plugin)."""
    from bench.registry import METHODS

    entry = METHODS.entry(name)
    if not entry.is_plugin and {"capabilities", "families", "reference"} <= set(entry.meta):
        return dict(entry.meta)
    c = entry.load()
    return {"capabilities": tuple(c.capabilities), "families": tuple(c.families),
            "reference": bool(getattr(c, "reference", False))}


def hf_families() -> dict[str, str]:
    """Checkpoint kind -> family of the ``hf:`` source (:mod:`models.hf_source`, torch-free)."""
    from models.hf_source import FAMILIES

    return dict(FAMILIES)


def cmd_list(args: argparse.Namespace) -> int:
    from bench.registry import METHODS, MODELS, TASKS

    if args.what == "tasks":
        for n in TASKS.names():
            s = task_meta(n)
            print(f"{n:<22} v{s['version']:<5} families: {','.join(sorted(s['families'])):<34} "
                  f"capability: {s['capability']:<20} main: {s['main_score']}")
            gt = s.get("ground_truth") or {}
            kinds = ", ".join(s.get("data_kinds") or ()) or "none"
            print(f"{'':<22} ground truth on the zoo: {gt.get('zoo', 'not declared')}")
            print(f"{'':<22} on a real checkpoint:    {gt.get('real', 'not declared')} (data kinds: {kinds})")
    elif args.what == "methods" and args.grid:
        _print_method_grid()
    elif args.what == "methods":
        for n in METHODS.names():
            c = method_meta(n)
            kind = "reference" if c["reference"] else "method"
            print(f"{n:<22} {kind:<9} capabilities: {','.join(sorted(c['capabilities'])):<52} "
                  f"families: {','.join(sorted(c['families']))}")
    else:
        for n in MODELS.names():
            e = MODELS.entry(n)
            print(f"{n:<22} family: {e.meta.get('family', '?'):<12} source: {e.source}")
        for kind, family in hf_families().items():
            where = "model_index.json" if family == "diffusion" else f"config.json model_type {kind}"
            print(f"{'hf:<folder>':<22} family: {family:<12} source: a local {kind} checkpoint ({where}; "
                  "the wrapper is picked from it)")
    return 0


def _print_method_grid() -> None:
    """Which method runs on which (task, model) of the registered models: ✓ planned, · not."""
    from tabulate import tabulate

    from bench.registry import METHODS
    from bench.harness.runner import plan

    p = plan(None, None, None, [0], quick=True)
    cols = sorted({(c.task, c.model) for c in p.cells})
    have = {(c.method, c.task, c.model) for c in p.cells}
    rows = [[m] + ["✓" if (m, t, mo) in have else "·" for t, mo in cols]
            for m in METHODS.names() if any((m, t, mo) in have for t, mo in cols)]
    count = ["real methods"] + [str(sum(1 for m in METHODS.names() if m not in ("random", "oracle")
                                        and (m, t, mo) in have)) for t, mo in cols]
    print(tabulate(rows + [count], headers=["method"] + [f"{t}\n{mo}" for t, mo in cols], tablefmt="simple"))


# ------------------------------------------------------------------- describe
def _first_paragraph(doc: str | None) -> str:
    import inspect

    text = inspect.cleandoc(doc or "").strip()
    return " ".join(text.split("\n\n")[0].split()) if text else ""


def _options(config_cls: Any) -> list[str]:
    """One line per field of a config dataclass: name, type and default."""
    import dataclasses

    lines = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"  {f.name:<24} {kind:<22} default {default}")
    return lines


def cmd_describe(args: argparse.Namespace) -> int:
    import dataclasses
    import sys as _sys

    from bench.registry import METHODS, MODELS, TASKS

    name = args.name
    if args.what == "method":
        entry = METHODS.entry(name)
        cls = entry.load()
        kind = "reference" if getattr(cls, "reference", False) else "method"
        print(f"{name}: {kind} ({entry.source}, {entry.target})")
        print(f"capabilities: {', '.join(sorted(cls.capabilities))}")
        print(f"families: {', '.join(sorted(cls.families))}")
        doc = _first_paragraph(cls.__doc__) or _first_paragraph(getattr(_sys.modules.get(cls.__module__), "__doc__", ""))
        if doc:
            print(f"\n{doc}")
        config = getattr(cls, "Config", None)
        opts = _options(config) if config is not None and dataclasses.is_dataclass(config) else []
        if opts:
            print(f"\noptions (override with --config {name}.OPTION=VALUE):")
            print("\n".join(opts))
        else:
            print("\noptions: none")
    elif args.what == "task":
        entry = TASKS.entry(name)
        cls = entry.load()
        spec = cls.spec
        print(f"{name}: task v{spec.version} ({entry.source}, {entry.target})")
        print(f"families: {', '.join(sorted(spec.families))}; capability: {spec.capability}; main score: "
              f"{spec.main_score}")
        kinds = getattr(cls, "data_kinds", ())
        if kinds:
            print(f"data files it can read instead of the world: {', '.join(kinds)} (--data KIND=PATH)")
        doc = _first_paragraph(cls.__doc__) or _first_paragraph(getattr(_sys.modules.get(cls.__module__), "__doc__", ""))
        if doc:
            print(f"\n{doc}")
        print("\nmetrics:")
        for m in spec.metrics:
            arrow = {"higher": "higher is better", "lower": "lower is better"}.get(m.direction, "not ranked")
            norm = ", normalised" if m.normalise else ""
            print(f"  {m.name:<24} {arrow}{norm}: {m.description}")
        config = getattr(cls(), "config", None)
        if config is not None and dataclasses.is_dataclass(config):
            print(f"\noptions (fixed by the task's version; {type(config).__name__}):")
            print("\n".join(_options(type(config))))
    else:
        src = MODELS.source_of(name)
        if src is not None:
            from bench.harness.runner import model_family

            print(f"{name}: a model of the {src.prefix!r} source ({src.load}); family: {model_family(name)} "
                  "(from its files)")
            return 0
        entry = MODELS.entry(name)
        print(f"{name}: model ({entry.source}, {entry.target})")
        family = entry.meta.get("family") or getattr(_load_model_quietly(name), "family", "?")
        print(f"family: {family}")
        from models.zoo import CARDS_DIR

        card = CARDS_DIR / f"{name}.md"
        if card.exists():
            body = card.read_text().split("\n\n", 1)[-1]  # below the title
            print(f"\n{_first_paragraph(body)}\n\n(the full card: bench zoo card {name})")
    return 0


def _load_model_quietly(name: str) -> Any:
    from bench.harness.runner import load_model

    return load_model(name)


# ---------------------------------------------------------------------- world
def cmd_world_show(args: argparse.Namespace) -> int:
    from bench.kit.world.show import show

    out = _writable_file(args.out)
    seed = _seed(args.seed)
    show(seed, out, n=args.n, split=args.split)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _seed(value: str) -> int:
    from bench.harness.runner import validate_seeds

    return validate_seeds([value])[0]


# -------------------------------------------------------------------- validity
def cmd_validity(args: argparse.Namespace) -> int:
    from bench.harness.validity import check_validity, render

    if args.seeds < 2:
        raise BenchError("--seeds must be at least 2 (the noise is a standard deviation over seeds)")
    rows, skipped = check_validity(args.task, args.model, seeds=args.seeds, widths=args.widths,
                                   progress=not args.no_progress, runtime=runtime_from(args))
    for label, reason in skipped:
        print(f"skipped {label}: {reason}", file=sys.stderr)
    if not rows:
        raise BenchError("no (task, model) pair to check")
    print(render(rows))
    return 0 if all(r.ok for r in rows) else EXIT_FAILED


# ------------------------------------------------------------------------ zoo
def cmd_zoo_train(args: argparse.Namespace) -> int:
    from models.zoo import WEIGHTS_DIR
    from models.zoo.train import train

    if args.phase2_only and args.steps is not None:
        raise BenchError("--steps sets phase 1's length; it cannot go with --phase2-only")
    if args.phase2_from and not args.phase2_only:
        raise BenchError("--phase2-from goes with --phase2-only")
    source = Path(args.phase2_from) if args.phase2_from else WEIGHTS_DIR
    train(args.name, Path(args.out) if args.out else None, steps=args.steps,
          phase2_only=source if args.phase2_only else None)
    return 0


def cmd_zoo_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from models.zoo.train import listing

    print(tabulate(listing(), headers="keys", tablefmt="github"))
    return 0


def cmd_zoo_card(args: argparse.Namespace) -> int:
    from models.zoo import CARDS_DIR
    from models.zoo.train import entry

    path = CARDS_DIR / f"{entry(args.name).name}.md"
    if not path.exists():
        raise BenchError(f"no card for {args.name!r}: it is not shipped yet (run `bench zoo train {args.name}`)")
    print(path.read_text())
    return 0


def cmd_zoo_export(args: argparse.Namespace) -> int:
    from models.zoo.export import export_zoo

    out = export_zoo(args.name, Path(args.out))
    print(f"wrote {out} (evaluate it with --model hf:{out})", file=sys.stderr)
    return 0


def cmd_zoo_audit(args: argparse.Namespace) -> int:
    import json

    from models.zoo.audit import markdown
    from models.zoo.train import audit_zoo, entry

    found = audit_zoo(entry(args.name).name, n=args.n, write=args.write)
    print(json.dumps(found, indent=2) if args.json else markdown(args.name, found))
    if args.write:
        print(f"recorded in the {args.name} sidecar and card", file=sys.stderr)
    return 0


def cmd_zoo_verify(args: argparse.Namespace) -> int:
    from models.zoo.train import verify

    ok = verify(args.name or None, quality=not args.hash_only)
    return 0 if ok else EXIT_FAILED


# ----------------------------------------------------------------------- main
def _store_for_reading(path: str) -> "Any":
    """The store opened read-only: reading never writes to it (a read-only file or folder works)."""
    from bench.harness.store import Store

    return Store(path, readonly=True)


def cmd_samples(args: argparse.Namespace) -> int:
    from leaderboard.samples import samples_frame, write_samples

    frame = samples_frame(_store_for_reading(args.store), task=args.task, model=args.model, method=args.method,
                          seed=args.seed, profile=args.profile)
    text = write_samples(frame, args.out, args.format)
    if text is not None:
        sys.stdout.write(text)
    else:
        print(f"wrote {len(frame)} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_power(args: argparse.Namespace) -> int:
    from leaderboard.samples import power
    from leaderboard.scorer import score

    store = _store_for_reading(args.store)
    recs = list(store.records(task=args.task, model=args.model, profile=args.profile, rows=True))
    if not recs:
        raise BenchError(f"no {args.profile}-profile results for {args.task}/{args.model} in {args.store!r}"
                         + ("" if args.profile == "quick" else " (try --profile quick)"))
    print(power(score(recs), args.task, args.model, args.mde).text())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from leaderboard.inspect import inspect_cell

    return inspect_cell(_store_for_reading(args.store), task=args.task, model=args.model, method=args.method,
                        seed=args.seed, profile=args.profile, k=args.k, out=args.out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench", description="MMI-Bench: mechanistic interpretability on multimodal models")
    sub = ap.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="run (task x method x model x seed) cells and store the records")
    ev.add_argument("--task", action="append", help="task name, repeatable, or 'all' (default: all)")
    ev.add_argument("--method", action="append", help="method name, repeatable, or 'all' (default: all); "
                    "the random and oracle references are added for the normalised score")
    ev.add_argument("--no-references", action="store_true", help="do not add random and oracle to named methods")
    ev.add_argument("--model", action="append", help="model name, repeatable, or 'all' (default: all)")
    ev.add_argument("--seed", action="append", help="seed, repeatable (default: 0)")
    ev.add_argument("--jobs", type=int, default=None, help="worker processes (default: up to 4, one per core; "
                    "at most the cores, and never more than the cells left to run)")
    ev.add_argument("--force", action="store_true", help="re-run cells already in the store")
    ev.add_argument("--quick", action="store_true", help="the quick profile (fewer examples), stored separately")
    ev.add_argument("--config", action="append", metavar="[METHOD.]KEY=VALUE",
                    help="override a method's config option, repeatable: METHOD.KEY=VALUE for one method, KEY=VALUE "
                    "when one method is named (`bench describe method NAME` lists the options)")
    ev.add_argument("--store", default="bench-results.sqlite", help="results file (default: %(default)s)")
    ev.add_argument("--data", action="append", metavar="KIND=PATH",
                    help="run the tasks that read this kind of data file on it instead of the world, "
                    "repeatable (`bench data kinds` lists the kinds); other tasks are skipped")
    ev.add_argument("--judge", default=None, metavar="hf:FOLDER",
                    help="a contrastive (CLIP-style) checkpoint that reads the samples of hf: diffusion models, "
                    "zero-shot, in the tasks that score generations (editing, attribution); it is part of each "
                    "such cell's key and record. Zoo models keep their own judge, zoo-oracle")
    _add_cluster_options(ev)
    _add_device_options(ev)
    ev.add_argument("--batch-size", type=int, default=None, metavar="N",
                    help="examples per forward pass (default: the model's own, 64 for the zoo)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--no-table", action="store_true", help="do not print the table at the end")
    ev.add_argument("--show-skipped", action="store_true", help="list every skipped cell with its reason")
    ev.add_argument("--check-determinism", action="store_true",
                    help="after the run, re-run a sample of the cells in a fresh process and store, and fail "
                    "unless every figure is bit-identical")
    ev.add_argument("--determinism-cells", type=int, default=3, metavar="N",
                    help="how many cells --check-determinism re-runs (default: %(default)s)")
    ev.set_defaults(fn=cmd_evaluate)

    lb = sub.add_parser("leaderboard", help="render the leaderboard from the results store")
    lb.add_argument("--task", action="append")
    lb.add_argument("--model", action="append")
    lb.add_argument("--method", action="append")
    lb.add_argument("--format", default="md", choices=["md", "csv", "latex", "json", "html"])
    lb.add_argument("--profile", default="full", choices=["full", "quick"])
    lb.add_argument("--out", help="write to this file instead of stdout (html: a folder for index.html and figures)")
    lb.add_argument("--no-gallery", action="store_true",
                    help="html: skip the heatmap gallery (it runs methods on zoo models, a few seconds each)")
    lb.add_argument("--store", default="bench-results.sqlite")
    lb.set_defaults(fn=cmd_leaderboard)

    sa = sub.add_parser("samples", help="export a cell's per-example rows (csv, jsonl or parquet)")
    sa.add_argument("--task", required=True)
    sa.add_argument("--model", required=True)
    sa.add_argument("--method", help="one method (default: every method of the table)")
    sa.add_argument("--seed", type=int, help="one seed (default: all)")
    sa.add_argument("--profile", choices=["full", "quick"], help="one profile (default: both)")
    sa.add_argument("--format", default="csv", choices=["csv", "jsonl", "parquet"])
    sa.add_argument("--out", help="write to this file instead of stdout")
    sa.add_argument("--store", default="bench-results.sqlite")
    sa.set_defaults(fn=cmd_samples)

    po = sub.add_parser("power", help="the smallest difference a table detects, and the examples a target needs")
    po.add_argument("--task", required=True)
    po.add_argument("--model", required=True)
    po.add_argument("--mde", type=float, default=0.05, help="the difference to detect (default: %(default)s)")
    po.add_argument("--profile", default="full", choices=["full", "quick"])
    po.add_argument("--store", default="bench-results.sqlite")
    po.set_defaults(fn=cmd_power)

    ins = sub.add_parser("inspect", help="a method's worst examples in a cell (a PNG grid for image tasks)")
    ins.add_argument("--task", required=True)
    ins.add_argument("--model", required=True)
    ins.add_argument("--method", required=True)
    ins.add_argument("--seed", type=int, default=0)
    ins.add_argument("--profile", default="full", choices=["full", "quick"])
    ins.add_argument("-k", type=int, default=8, help="how many examples (default: %(default)s)")
    ins.add_argument("--out", help="PNG file for the grid (image tasks; default: print a table only)")
    ins.add_argument("--store", default="bench-results.sqlite")
    ins.set_defaults(fn=cmd_inspect)

    ls = sub.add_parser("list", help="list tasks, methods or models with their compatibility")
    ls.add_argument("what", choices=["tasks", "methods", "models"])
    ls.add_argument("--grid", action="store_true",
                    help="methods: a method × (task, model) table of where each runs (loads the models)")
    ls.set_defaults(fn=cmd_list)

    de = sub.add_parser("describe", help="a method's, task's or model's options (types, defaults) and definition")
    de.add_argument("what", choices=["method", "task", "model"])
    de.add_argument("name")
    de.set_defaults(fn=cmd_describe)

    va = sub.add_parser("validity", help="reseed noise of random and oracle per task and model, and their separation")
    va.add_argument("--task", action="append", help="task name, repeatable (default: all)")
    va.add_argument("--model", action="append", help="model name, repeatable (default: all compatible)")
    va.add_argument("--seeds", type=int, default=5, help="seeds per reference (default: %(default)s)")
    va.add_argument("--widths", type=float, default=5.0, help="separation needed, in noise widths (default: %(default)s)")
    va.add_argument("--no-progress", action="store_true")
    _add_device_options(va)
    va.set_defaults(fn=cmd_validity)

    wo = sub.add_parser("world", help="the procedural world")
    wsub = wo.add_subparsers(dest="world_command", required=True)
    sh = wsub.add_parser("show", help="draw a grid of scenes with masks outlined")
    sh.add_argument("--seed", default="0")
    sh.add_argument("--out", required=True)
    sh.add_argument("--n", type=int, default=16)
    sh.add_argument("--split", default="train", choices=["train", "fit", "dev", "test"])
    sh.set_defaults(fn=cmd_world_show)

    zo = sub.add_parser("zoo", help="list, train, verify or show the cards of the built-in model zoo")
    zsub = zo.add_subparsers(dest="zoo_command", required=True)
    zsub.add_parser("list", help="the zoo's models, families and shipped hashes").set_defaults(fn=cmd_zoo_list)
    cd = zsub.add_parser("card", help="print a zoo model's card")
    cd.add_argument("name")
    cd.set_defaults(fn=cmd_zoo_card)
    tr = zsub.add_parser("train", help="retrain a zoo model deterministically from its seed")
    tr.add_argument("name")
    tr.add_argument("--out", help="weights folder (default: the shipped zoo folder)")
    tr.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    tr.add_argument("--phase2-only", action="store_true",
                    help="keep the phase-1 model of the weights in --phase2-from and re-run only phase 2 (the plant)")
    tr.add_argument("--phase2-from", default=None, metavar="DIR",
                    help="weights folder to take phase 1 from (default: the shipped zoo folder)")
    tr.set_defaults(fn=cmd_zoo_train)
    ve = zsub.add_parser("verify", help="check shipped weights against their recorded hashes and figures")
    ve.add_argument("name", nargs="?")
    ve.add_argument("--hash-only", action="store_true")
    ve.set_defaults(fn=cmd_zoo_verify)
    au = zsub.add_parser("audit", help="re-measure a zoo model's planted facts: storage (revert test), mediation "
                                       "(interchange test), unplanted entities, ablations, on fresh world streams")
    au.add_argument("name")
    au.add_argument("--n", type=int, default=128, help="renders per figure (default 128)")
    au.add_argument("--write", action="store_true",
                    help="record the result in the shipped sidecar (audit) and the model card")
    au.add_argument("--json", action="store_true", help="print the result as JSON instead of the card's tables")
    au.set_defaults(fn=cmd_zoo_audit)
    ex = zsub.add_parser("export", help="write a zoo model as a Hugging Face checkpoint folder (for --model hf:DIR)")
    ex.add_argument("name")
    ex.add_argument("--out", required=True, help="a new (or empty) folder")
    ex.set_defaults(fn=cmd_zoo_export)
    _add_grid_commands(sub)
    _add_data_commands(sub)
    _add_perf_command(sub)
    _add_scale_command(sub)
    return ap


def _add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="where the model and every tensor of a cell live: cpu, cuda, cuda:N, mps, auto "
                        "(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="precision: on a GPU the weights are loaded in it, on the CPU autocast only "
                        "(default: %(default)s)")


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", metavar="SPEC", default=None,
                   help="run the cells on Dask: local:N (a local cluster of N workers), tcp://HOST:PORT (a running "
                        "scheduler), slurm[:CONFIG.toml] (also pbs, sge; dask-jobqueue); needs the 'cluster' extra")
    p.add_argument("--retries", type=int, default=None, metavar="N",
                   help="with --cluster: times a cell may lose its worker before it is a failed record (default 2)")


# ------------------------------------------- regress / reproduce / manifests
def cmd_regress(args: argparse.Namespace) -> int:
    from leaderboard.regress import regress

    cluster = check_cluster(args)
    jobs = check_jobs(args.jobs) if args.jobs is not None else None
    return regress(args.baseline, args.tolerance_file, update=args.update, store=args.store, jobs=jobs,
                   progress=not args.no_progress, runtime=runtime_from(args, cluster), cluster=cluster)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from leaderboard.regress import reproduce

    cluster = check_cluster(args)
    jobs = check_jobs(args.jobs) if args.jobs is not None else None
    return reproduce(args.manifest, store=args.store, jobs=jobs, progress=not args.no_progress,
                     runtime=runtime_from(args, cluster), cluster=cluster)


def cmd_export_manifest(args: argparse.Namespace) -> int:
    from leaderboard.manifest import from_records, save
    from bench.harness.store import Store

    store = Store(args.store, readonly=True)
    out = _writable_file(args.out)
    seeds = set(_seed(s) for s in args.seed or [])
    recs = [r for r in store.records(profile=args.profile, rows=True)
            if (not args.task or r.key.task in args.task) and (not args.model or r.key.model in args.model)
            and (not args.method or r.key.method in args.method) and (not seeds or r.key.seed in seeds)]
    grid = from_records(recs, title=args.title or "", command=args.command or "")
    save(grid, out)
    print(f"wrote {out}: {len(grid.cells)} cells x {len(grid.seeds)} seeds", file=sys.stderr)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from leaderboard.publish import publish

    for path in publish(args.store, args.out, allow_partial=args.allow_partial):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _add_grid_commands(sub: Any) -> None:
    rg = sub.add_parser("regress", help="re-run a baseline's cells and fail when a figure leaves its tolerance")
    rg.add_argument("--baseline", default="leaderboard/baseline.json", help="baseline JSON (default: %(default)s)")
    rg.add_argument("--tolerance-file", help="TOML or JSON table of tolerances (abs, rel, ci_k, metrics)")
    rg.add_argument("--update", action="store_true", help="rewrite the baseline with the figures obtained now")
    rg.add_argument("--store", help="results file to run into (default: a fresh temporary one)")
    rg.add_argument("--jobs", type=int, default=None, help="worker processes (default: up to 4, one per core)")
    rg.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_cluster_options(rg)
    _add_device_options(rg)
    rg.set_defaults(fn=cmd_regress)

    rp = sub.add_parser("reproduce", help="re-run a manifest's grid and check every figure against it")
    rp.add_argument("manifest", help="a TOML manifest, e.g. leaderboard/manifests/default.toml")
    rp.add_argument("--store", help="results file to run into (default: a fresh temporary one)")
    rp.add_argument("--jobs", type=int, default=None, help="worker processes (default: up to 4, one per core)")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_cluster_options(rp)
    _add_device_options(rp)
    rp.set_defaults(fn=cmd_reproduce)

    ex = sub.add_parser("export-manifest", help="write a manifest (.toml) or baseline (.json) from a results store")
    ex.add_argument("--store", default="bench-results.sqlite")
    ex.add_argument("--out", required=True, help="FILE.toml (manifest) or FILE.json (baseline)")
    ex.add_argument("--task", action="append")
    ex.add_argument("--model", action="append")
    ex.add_argument("--method", action="append")
    ex.add_argument("--seed", action="append")
    ex.add_argument("--profile", choices=["full", "quick"], help="(default: the only one in the selection)")
    ex.add_argument("--title", help="a title for the manifest")
    ex.add_argument("--command", help="the command that produced the store, recorded in [source]")
    ex.set_defaults(fn=cmd_export_manifest)

    pu = sub.add_parser("publish", help="write the default leaderboard (tables, JSON, manifest, baseline) from a store")
    pu.add_argument("--store", required=True, help="a store holding `bench evaluate --quick --seed 0 --seed 1`")
    pu.add_argument("--out", default="leaderboard", help="folder (default: %(default)s)")
    pu.add_argument("--allow-partial", action="store_true",
                    help="publish even if the store does not hold exactly the default grid")
    pu.set_defaults(fn=cmd_publish)


# ----------------------------------------------------------------------- data
def cmd_data_check(args: argparse.Namespace) -> int:
    from bench.kit.realdata import check

    summary = check(args.kind, args.path, image_root=args.image_root)
    print("\n".join(summary.lines))
    return 0


def cmd_data_kinds(args: argparse.Namespace) -> int:
    from bench.kit.realdata import describe_kinds

    print("\n".join(describe_kinds()))
    return 0


def cmd_data_template(args: argparse.Namespace) -> int:
    from bench.kit.realdata import check, write_template

    path = write_template(args.kind, args.out)
    print(f"wrote {path}")
    print("\n".join(check(args.kind, path).lines))
    return 0


def _add_data_commands(sub: Any) -> None:
    da = sub.add_parser("data", help="check real-data annotation files (POPE, CHAIR, Waterbirds, CounterFact, ...)")
    dsub = da.add_subparsers(dest="data_command", required=True)
    dc = dsub.add_parser("check", help="validate an annotation file of a kind and print a summary")
    dc.add_argument("kind", help="the data kind (`bench data kinds` lists them)")
    dc.add_argument("path", help="the annotation file (.jsonl, .json, .csv or .tsv)")
    dc.add_argument("--image-root", help="folder image paths are relative to (default: the file's folder)")
    dc.set_defaults(fn=cmd_data_check)
    dsub.add_parser("kinds", help="list the data kinds and the fields each reads").set_defaults(fn=cmd_data_kinds)
    dt = dsub.add_parser("template", help="write a small valid example file of a kind (and its images)")
    dt.add_argument("kind", help="the data kind (`bench data kinds` lists them)")
    dt.add_argument("--out", default=".", help="folder to write into (default: the current folder)")
    dt.set_defaults(fn=cmd_data_template)



# ---------------------------------------------------------------------- scale
def cmd_scale(args: argparse.Namespace) -> int:
    import tempfile

    from bench.harness import scale

    cells = scale.load_cells(Path(args.perf))
    if args.gpu_tflops <= 0:
        raise BenchError(f"--gpu-tflops must be positive, got {args.gpu_tflops}")
    shapes = [scale.SHAPES[n]() for n in scale.SHAPES]
    rate = scale.cpu_rate(threads=args.threads)
    rates = {f"this CPU ({args.threads} thread)": rate, f"GPU at {args.gpu_tflops:g} TFLOP/s": args.gpu_tflops * 1e12}
    preds = [p for s in shapes for p in scale.predict(s, cells, rates)]
    check = None
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            folder = scale.save_clip_checkpoint(Path(tmp) / "clip-vit-b32")
            check = scale.check_clip(folder, cells, rate, threads=args.threads)
    text = scale.to_markdown(preds, rates, shapes, check)
    print(text)
    if args.out:
        _writable_file(args.out).write_text(json.dumps(scale.report_dict(preds, rates, shapes, check), indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _add_scale_command(sub: Any) -> None:
    sc = sub.add_parser("scale", help="the predicted cost of each counted cell on a ViT-B/32-sized CLIP and a "
                                      "7B-class LLaVA (roofline: the cell's rows x FLOPs per row at the shapes / a rate)")
    sc.add_argument("--perf", required=True, help="a `bench perf --out` JSON whose cells were counted (its rows per cell)")
    sc.add_argument("--gpu-tflops", type=float, default=300.0,
                    help="the sustained rate to predict a GPU at (default 300: about 30%% of an H100's dense bf16 peak)")
    sc.add_argument("--check", action="store_true",
                    help="also run attribution/saliency on a random-initialised ViT-B/32 CLIP here and compare")
    sc.add_argument("--threads", type=int, default=1, help="torch threads for the CPU rate and the check (default 1)")
    sc.add_argument("--out", help="write the predictions as JSON")
    sc.set_defaults(fn=cmd_scale)


# ----------------------------------------------------------------------- perf
def cmd_perf(args: argparse.Namespace) -> int:
    from bench.harness.perf import run_perf, write_report

    out = _writable_file(args.out) if args.out else None
    md = _writable_file(args.md) if args.md else None
    report = run_perf(args.model, quick=args.quick, hf=args.hf, threads=args.threads, repeats=args.repeats,
                      cells=args.cells)
    print(write_report(report, out, md), end="")
    for path in (out, md):
        if path is not None:
            print(f"wrote {path}", file=sys.stderr)
    return EXIT_FAILED if report.errors else 0


def _add_perf_command(sub: Any) -> None:
    pf = sub.add_parser("perf", help="the harness's speed: trace overhead, patching sweeps, deletion/insertion "
                                     "scoring and cell efficiency, as ratios against baselines of the same run")
    pf.add_argument("--model", action="append",
                    help="a model to measure (repeatable; default: every zoo model, or zoo-clip with --quick)")
    pf.add_argument("--hf", action="store_true",
                    help="also build tiny hf: CLIP, LLaVA and Stable Diffusion checkpoints in a temp folder and measure them")
    pf.add_argument("--cells", action="append", metavar="SPEC",
                    help="cells to time against their roofline: default (random + one method per task and model), "
                         "all, none, or TASK/MODEL/METHOD (repeatable)")
    pf.add_argument("--quick", action="store_true", help="a small subset (under a minute): fewer repeats, batch sizes, "
                                                         "examples, and one cell")
    pf.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as cells run)")
    pf.add_argument("--repeats", type=int, default=None, help="interleaved rounds per measurement (default 5; quick 3)")
    pf.add_argument("--out", help="write the report as JSON (e.g. perf.json)")
    pf.add_argument("--md", help="write the Markdown tables (e.g. perf.md); they are printed either way")
    pf.set_defaults(fn=cmd_perf)


def _on_sigterm(signum: int, frame: Any) -> None:
    from bench.harness.runner import _LAST_SIGNAL, Interrupted

    _LAST_SIGNAL.append(signum)
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import signal
    import threading

    # SIGTERM stops a command as Ctrl-C does (with a message, exit 143); a grid run handles both
    # itself (bench.harness.runner.run_grid: workers stopped, completed cells kept)
    old = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        return int(args.fn(args) or 0)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", None) or _last_signal() or signal.SIGINT
        print("terminated" if signum == signal.SIGTERM else "interrupted", file=sys.stderr)
        return 128 + int(signum)
    except BrokenPipeError:
        return 0
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _last_signal() -> int | None:
    runner = sys.modules.get("bench.harness.runner")
    return runner.last_signal() if runner is not None else None  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
