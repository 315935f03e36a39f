"""The library API: :func:`evaluate` runs a grid from Python and returns :class:`Results`.

``bench evaluate`` is this function behind a command line. Tasks are named; methods and models
are names (registered, or ``hf:FOLDER`` for a model) or **objects**: a :class:`bench.method.Method`
instance or a :class:`bench.model.Model` instance built in a notebook works without registering
it. Such an object is bound to its ``name`` for the call (:meth:`bench.registry.Registry.bind`);
its records say so (``provenance["unregistered"]``: its class) and carry a fingerprint of their
own, so a store never hands its results to a later process as if they were a registered method's.
An instance of a registered method class is the registered method with its config as options (it
runs, and is stored, exactly as ``--method NAME --config ...`` would). Cells with objects run in
this process (an object cannot be sent to a worker by name).

As the CLI does, the references ``random`` and ``oracle`` join any explicit method list (the
normalised score needs both; ``references=False`` leaves them out).

    import bench
    res = bench.evaluate(tasks=["attribution"], methods=[MyGradTimesInput()], models=["zoo-clip"],
                         seeds=[0], profile="quick")
    res.to_dataframe()        # one row per (task, model, method, metric): mean, interval, normalised
    print(res.table())        # the leaderboard as Markdown
    res.records               # the RunRecords, per-example rows included
"""

from __future__ import annotations

import copy
import tempfile
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from bench.harness import runner
from bench.harness.cluster import ClusterSpec, parse_cluster
from bench.errors import BenchError
from bench.records import RunRecord
from bench.registry import METHODS, MODELS
from bench.harness.store import Store

if TYPE_CHECKING:  # the contracts import torch: only when objects are handed in
    import pandas as pd

    from bench.method import Method
    from bench.model import Model

PROFILES = ("quick", "full")


@dataclass
class Results:
    """What :func:`evaluate` ran: the records (with per-example rows), what was skipped and why,
    and the leaderboard computed from them (:func:`leaderboard.scorer.score`, intervals over
    examples and seeds, paired ranks, normalised scores)."""

    records: list[RunRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (cell label, reason)
    store: str | None = None  # the results file, or None (a temporary one, removed)
    _rows: list[Any] | None = field(default=None, repr=False)

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status != "ok"]

    def leaderboard(self) -> list[Any]:
        """The leaderboard rows (:class:`leaderboard.scorer.Row`), computed once."""
        if self._rows is None:
            from leaderboard.scorer import score

            self._rows = score(self.records)
        return self._rows

    def to_dataframe(self) -> "pd.DataFrame":
        """One row per (task, task version, model, method, metric): ``mean``, ``ci_low``,
        ``ci_high``, ``normalised`` (0 = random, 1 = oracle, where the metric is normalised),
        ``rank_group``, ``n_examples`` and the rest of :class:`leaderboard.scorer.Row`."""
        import pandas as pd

        from leaderboard.scorer import Row

        return pd.DataFrame([asdict(r) for r in self.leaderboard()], columns=[f.name for f in fields(Row)])

    def table(self, fmt: str = "md") -> str:
        """The leaderboard as text: ``md``, ``csv``, ``latex`` or ``json``."""
        from leaderboard.render import render

        return render(self.leaderboard(), fmt)


def _method_name(m: "str | Method") -> tuple[str, dict[str, Any]]:
    """A method argument as (name, config options): a name as is; an instance of the registered
    class of its name as that name with its config; any other instance bound as an object."""
    if isinstance(m, str):
        return m, {}
    from bench.method import Method

    if not isinstance(m, Method):
        raise BenchError(f"methods are names or bench.method.Method instances, not {type(m).__name__}")
    name = getattr(m, "name", "") or type(m).__name__.lower()
    if name in METHODS and not METHODS.entry(name).is_object and METHODS.get(name) is type(m):
        defaults = type(m)().config_dict()
        return name, {k: v for k, v in m.config_dict().items() if defaults.get(k) != v}
    target = f"{type(m).__module__}:{type(m).__qualname__}"
    token = f"object-{uuid.uuid4().hex[:16]}"

    def factory(**overrides: Any) -> "Method":
        if overrides:
            raise BenchError(f"method {name!r} is an object: set its options on it, not as config")
        return copy.deepcopy(m)  # each cell a fresh copy, as a registered method is built anew

    # what planning reads from a class (capabilities, families, reference), read from the object
    for attr in ("capabilities", "families", "reference", "name"):
        setattr(factory, attr, getattr(m, attr))
    METHODS.bind(name, factory, target, code=token)
    return name, {}


def _model_name(m: "str | Model") -> str:
    if isinstance(m, str):
        return m
    from bench.model import Model

    if not isinstance(m, Model):
        raise BenchError(f"models are names, 'hf:FOLDER' or bench.model.Model instances, not {type(m).__name__}")
    name = m.name
    if runner.cached_model(name) is m and not MODELS.entry(name).is_object:
        return name  # the registered model, as loaded
    target = f"{type(m).__module__}:{type(m).__qualname__}"
    MODELS.bind(name, lambda: m, target, family=m.family, code=f"object-{uuid.uuid4().hex[:16]}",
                weights=m.weights_hash)
    runner.forget_model(name)
    return name


def evaluate(
    tasks: Sequence[str] | str | None = None,
    methods: "Sequence[str | Method] | str | Method | None" = None,
    models: "Sequence[str | Model] | str | Model | None" = None,
    seeds: Iterable[int] = (0,),
    store: str | Path | None = None,
    profile: str = "quick",
    *,
    references: bool = True,
    jobs: int = 1,
    force: bool = False,
    progress: bool = False,
    data: Sequence[tuple[str, str]] = (),
    runtime: "runner.Runtime | None" = None,
    cluster: "str | ClusterSpec | None" = None,
    judge: str = "",
) -> Results:
    """Run every compatible (task, method, model, seed) cell and score the results.

    ``tasks``/``methods``/``models``: one or a list; None (or ``"all"``) means every registered
    one. ``store``: a results file to reuse and extend (cells whose fingerprint is unchanged are not
    run again), or None for a temporary one. ``profile``: ``quick`` (the README's main job) or
    ``full``. ``jobs``: worker processes (cells with objects always run in this process).
    ``data``: ``(kind, path)`` files read instead of the world (``--data``). ``cluster``: run the
    cells on Dask instead, as ``--cluster`` (``"local:2"``, ``"tcp://HOST:PORT"``, ``"slurm:FILE.toml"``,
    or a :class:`bench.harness.cluster.ClusterSpec`); cells with objects cannot be sent to a worker
    by name, so objects with a cluster are refused. ``judge``: ``hf:FOLDER``, a contrastive checkpoint reading
    the samples of ``hf:`` diffusion models (``--judge``; zoo models keep zoo-oracle). Raises
    :class:`bench.errors.BenchError` with one line on a bad argument; a failing cell does not
    raise: its record is failed (:attr:`Results.failed`)."""
    if profile not in PROFILES:
        raise BenchError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")

    def listed(x: Any) -> list[Any] | None:  # one name or object, or a list of them
        return None if x is None else list(x) if isinstance(x, (list, tuple)) else [x]

    method_args = listed(methods)
    model_args = listed(models)
    objects = any(not isinstance(a, str) for a in [*(method_args or []), *(model_args or [])])
    method_names: list[str] | None = None
    by_method: dict[str, dict[str, Any]] = {}
    if method_args is not None:
        method_names = []
        for a in method_args:
            name, options = _method_name(a)
            method_names.append(name)
            if options:
                by_method[name] = options
        if references:
            method_names = runner.with_references(method_names)
    model_names = [_model_name(a) for a in model_args] if model_args is not None else None
    task_names = listed(tasks)
    spec = parse_cluster(cluster) if isinstance(cluster, str) else cluster
    rt = runner.check_runtime(runtime or runner.Runtime())
    if spec is None or spec.kind == "local":  # a remote cluster's workers resolve the device themselves
        rt = runner.resolve_runtime(rt)
    p = runner.plan(task_names, method_names, model_names, list(seeds), quick=profile == "quick",
                    runtime=rt, data=data, overrides_by_method=by_method or None, judge=judge)
    runner.require_cells(p)
    if spec is not None and objects:
        raise BenchError("cells with Method or Model objects run in this process: a cluster's workers know "
                         "registered names only (register the object, or leave cluster out)")
    jobs = 1 if objects or spec is not None else runner.check_jobs(jobs)
    with tempfile.TemporaryDirectory(prefix="mmi-bench-") as tmp:
        path = Path(store) if store is not None else Path(tmp) / "results.sqlite"
        st = Store(path)
        try:
            res = runner.run_grid(p.cells, st, jobs=jobs, force=force, progress=progress, cluster=spec)
            if res.interrupted:
                raise KeyboardInterrupt
            keys = {runner.cell_key(c).id for c in p.cells}
            records = [r for r in st.records(profile=profile, rows=True) if r.key.id in keys]
        finally:
            st.close()
    return Results(records, list(p.skipped), str(path) if store is not None else None)
