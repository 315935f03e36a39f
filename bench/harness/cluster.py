"""The grid on a Dask cluster: ``--cluster local:N``, ``--cluster tcp://HOST:PORT``, ``--cluster
slurm[:CONFIG.toml]`` (also ``pbs`` and ``sge``, through ``dask-jobqueue``).

The cell stays the unit of work. Workers run :func:`bench.harness.runner.run_cell` and return the
record; the driver alone writes the store (:func:`bench.harness.runner.run_grid`), so resume,
``--force`` and crash isolation are those of the process pool. A worker that dies while it runs a
cell has the cell run again elsewhere, at most :attr:`ClusterSpec.retries` times (the scheduler's
``allowed-failures``); after that the cell becomes a failed record and the grid goes on. Cells on
a GPU ask the scheduler for a ``GPU`` resource (one cell per GPU; workers are started with
``--resources GPU=1``), and a worker keeps its models loaded between cells (the runner's model
cache lives in the worker process). A local cluster's workers are forked from a server that imported
torch and transformers once (:func:`prestart`), and each computes on one thread, as a pool worker does.

Dask is an optional dependency (the ``cluster`` extra), imported inside the functions that start or
reach a cluster: the process pool and the CLI's other commands never pay for it (``distributed``
takes ~1 s to import), and a missing install is a one-line error, not an ImportError at start-up.

A jobqueue config is TOML::

    [cluster]            # every key is a keyword of dask_jobqueue.SLURMCluster (PBSCluster, SGECluster)
    queue = "gpu"
    account = "interp"
    cores = 4
    memory = "32GB"
    walltime = "02:00:00"
    job_extra_directives = ["--gres=gpu:1"]
    [bench]
    jobs = 8             # batch jobs to start (each runs `processes` workers)
    retries = 2          # times a cell may lose its worker before it is a failed record
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from bench.errors import BenchError

JOBQUEUE_KINDS = ("slurm", "pbs", "sge")
# what every cell imports anyway: imported by a worker before its first cell arrives (see dask_setup
# and prestart); the runner's own imports are light, the models' and methods' are torch's
WORKER_IMPORTS = ("torch", "transformers", "bench.harness.runner")
DEFAULT_RETRIES = 2
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ClusterSpec:
    """Where a grid's cells run. ``kind``: ``local`` (a ``LocalCluster`` of ``workers`` processes,
    bound to 127.0.0.1), ``address`` (an existing scheduler at ``address``), or one of
    :data:`JOBQUEUE_KINDS` (a dask-jobqueue cluster from the TOML file ``config``)."""

    kind: str
    workers: int = 0
    address: str = ""
    config: str = ""
    retries: int = DEFAULT_RETRIES

    @property
    def label(self) -> str:
        if self.kind == "local":
            return f"local:{self.workers}"
        if self.kind == "address":
            return self.address
        return f"{self.kind}:{self.config}" if self.config else self.kind


@dataclass
class JobqueueConfig:
    """A jobqueue config file read: the cluster's keywords and the bench's own settings."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    jobs: int = 1
    retries: int = DEFAULT_RETRIES


def parse_cluster(text: str, retries: int | None = None) -> ClusterSpec:
    """``--cluster`` checked: ``local:N``, ``tcp://HOST:PORT`` (or ``tls://``), ``slurm``,
    ``slurm:CONFIG.toml`` (``pbs``, ``sge`` alike). One line on anything else."""
    t = text.strip()
    r = DEFAULT_RETRIES if retries is None else retries
    if r < 0:
        raise BenchError(f"--retries must be 0 or more, got {r}")
    if t.startswith("local:") or t == "local":
        n = t.partition(":")[2] or str(os.cpu_count() or 1)
        if not n.isdigit() or int(n) < 1:
            raise BenchError(f"--cluster local:N needs a positive number of workers, got {text!r}")
        return ClusterSpec("local", workers=int(n), retries=r)
    if "://" in t:
        scheme, _, rest = t.partition("://")
        host, _, port = rest.rpartition(":")
        if scheme not in ("tcp", "tls", "ucx") or not host or not port.isdigit():
            raise BenchError(f"--cluster {text!r}: a scheduler address is tcp://HOST:PORT")
        return ClusterSpec("address", address=t, retries=r)
    kind, _, config = t.partition(":")
    if kind in JOBQUEUE_KINDS:
        if config and not Path(config).expanduser().is_file():
            raise BenchError(f"--cluster {text!r}: no config file {config!r}")
        path = str(Path(config).expanduser().resolve()) if config else ""
        if retries is None and path:
            r = read_jobqueue_config(kind, path).retries
        return ClusterSpec(kind, config=path, retries=r)
    raise BenchError(f"unknown --cluster {text!r}: use local:N, tcp://HOST:PORT, or "
                     f"{'|'.join(JOBQUEUE_KINDS)}[:CONFIG.toml]")


def read_jobqueue_config(kind: str, path: str | Path | None) -> JobqueueConfig:
    """The ``[cluster]`` table (the jobqueue class's keywords) and ``[bench]`` (``jobs``, ``retries``)
    of a TOML file; without a file, dask-jobqueue's own config (``~/.config/dask/jobqueue.yaml``) and
    one job."""
    if not path:
        return JobqueueConfig(kind)
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BenchError(f"cannot read cluster config {str(path)!r}: {e}") from None
    unknown = sorted(set(data) - {"cluster", "bench"})
    if unknown:
        raise BenchError(f"cluster config {str(path)!r}: unknown table {unknown[0]!r} (known: cluster, bench)")
    bench = dict(data.get("bench", {}))
    bad = sorted(set(bench) - {"jobs", "retries"})
    if bad:
        raise BenchError(f"cluster config {str(path)!r}: unknown [bench] key {bad[0]!r} (known: jobs, retries)")
    jobs, retries = bench.get("jobs", 1), bench.get("retries", DEFAULT_RETRIES)
    if not isinstance(jobs, int) or jobs < 1:
        raise BenchError(f"cluster config {str(path)!r}: [bench] jobs must be a positive integer, got {jobs!r}")
    if not isinstance(retries, int) or retries < 0:
        raise BenchError(f"cluster config {str(path)!r}: [bench] retries must be 0 or more, got {retries!r}")
    return JobqueueConfig(kind, dict(data.get("cluster", {})), jobs, retries)


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise BenchError("--cluster needs Dask: pip install 'mmi-bench[cluster]' "
                         "(dask, distributed, dask-jobqueue)") from None
    return distributed


def _jobqueue_class(kind: str) -> Any:
    try:
        import dask_jobqueue
    except ImportError:
        raise BenchError(f"--cluster {kind} needs dask-jobqueue: pip install 'mmi-bench[cluster]'") from None
    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
            "sge": dask_jobqueue.SGECluster}[kind]


def _worker_env() -> dict[str, str]:
    """What a worker needs of the driver's environment to import and cache as the driver does."""
    return {k: v for k, v in os.environ.items()
            if k in ("PYTHONPATH", "MMI_BENCH_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")}


def jobqueue_cluster(spec: ClusterSpec, gpu: bool = False, host: str | None = None) -> Any:
    """The dask-jobqueue cluster of ``spec`` (not scaled: no job is submitted). ``gpu``: each worker
    offers one ``GPU`` resource and runs one cell at a time; ``host``: the scheduler's interface
    address (tests: 127.0.0.1)."""
    cls = _jobqueue_class(spec.kind)
    conf = read_jobqueue_config(spec.kind, spec.config)
    opts = dict(conf.options)
    extra = list(opts.pop("worker_extra_args", []))
    if gpu and "--resources" not in extra:
        extra += ["--resources", "GPU=1"]
    # one thread per worker: cells fix torch's threads themselves (results must not depend on it)
    extra += [] if "--nthreads" in extra else ["--nthreads", "1"]
    extra += [] if "--preload" in extra else ["--preload", __name__]  # (dask_setup below)
    opts.setdefault("cores", opts.get("processes", 1))
    opts.setdefault("memory", "4GB")
    prologue = list(opts.pop("job_script_prologue", []))
    prologue += [f"export {k}={shlex.quote(v)}" for k, v in sorted(_worker_env().items())
                 if not any(line.startswith(f"export {k}=") for line in prologue)]
    sched = dict(opts.pop("scheduler_options", {}))
    if host:
        sched.setdefault("host", host)
    try:
        return cls(worker_extra_args=extra, job_script_prologue=prologue, scheduler_options=sched,
                   python=opts.pop("python", sys.executable), **opts)
    except (TypeError, ValueError) as e:  # an unknown keyword in [cluster] (dask-jobqueue: a ValueError)
        text = str(e)
        bad = text[text.index("unexpected keyword"):].split(".")[0].split("\n")[0] if "unexpected keyword" in text \
            else _one_line(e)
        raise BenchError(f"cluster config {spec.config or '(dask-jobqueue defaults)'!r}: [cluster] {bad} "
                         f"(its keys are {cls.__name__}'s keywords)") from None


def job_script(spec: ClusterSpec, gpu: bool = False, host: str | None = None) -> str:
    """The batch script a jobqueue cluster would submit for one job (rendered by dask-jobqueue; no
    Slurm, PBS or SGE installation needed)."""
    cluster = jobqueue_cluster(spec, gpu=gpu, host=host)
    try:
        return str(cluster.job_script())
    finally:
        cluster.close()


@dataclass
class Session:
    """A connected client and what it needs to run cells: ``width`` (cells in flight at once)."""

    client: Any
    spec: ClusterSpec
    gpu: bool
    started_s: float  # seconds from asking for the cluster to a connected client
    _declared: int = 1

    def width(self) -> int:
        """Cells that can run at once now: the workers' threads (GPU cells: their GPU resources),
        at least what was asked for (workers still starting take cells as they come up)."""
        try:
            info = self.client.scheduler_info(n_workers=-1)["workers"].values()
        except TypeError:  # an older distributed without n_workers
            info = self.client.scheduler_info()["workers"].values()
        except Exception:  # (a scheduler going away: the next submit says so)
            info = []
        if self.gpu:
            have = sum(int(w.get("resources", {}).get("GPU", 0)) for w in info)
        else:
            have = sum(int(w.get("nthreads", 1)) for w in info)
        return max(self._declared, have, 1)


@contextmanager
def connect(spec: ClusterSpec, gpu: bool = False, host: str = "127.0.0.1") -> Iterator[Session]:
    """Start (``local``, jobqueue) or reach (``address``) the cluster of ``spec`` and yield a
    :class:`Session`; everything started here is closed on the way out. A scheduler that cannot be
    reached, or a cluster that cannot start, is one line."""
    prestart(spec)  # (before importing distributed here: the server's imports overlap with it)
    distributed = _import_distributed()
    import dask

    t0 = time.perf_counter()
    cluster: Any = None
    client: Any = None
    # the scheduler of a local or jobqueue cluster runs in this process: its allowed-failures is
    # the number of times a cell may take its worker down with it before it is a failed record
    # Workers started here run as the pool's do: no statistical profiler (it samples every thread's
    # stack each 10 ms), and glibc's own malloc trimming rather than the nanny's
    # MALLOC_TRIM_THRESHOLD_=65536, which returns memory to the system at every free of a tensor
    # over 64 kB (system time) -- the runner trims once per cell instead. One thread for BLAS/OpenMP.
    # Each worker preloads this module (:func:`dask_setup`: torch, transformers and the runner imported
    # while the worker starts, as a pool worker's spawn does), so the first cell does not pay for it;
    # a local cluster's workers are forked from a server that imported them once (:func:`prestart`).
    from bench.harness.runner import ONE_THREAD_ENV  # (here: the runner imports this module)

    environ = dict(ONE_THREAD_ENV)
    # Dask's own upkeep, relaxed: its event loops' blocked-loop check every 20 ms and its system monitor
    # (CPU and memory history for a dashboard, which is off) every 0.5 s cost, idle, 5.8% of a core in
    # the driver (scheduler and nannies) and 2.5% in each worker, taken from the cells on a busy
    # machine; at 1 s and 10 s, 2.5% and 1.0% (measured on the 2-core CPU).
    # worker-saturation 1.0: the scheduler hands a worker a cell only when one of its threads is free,
    # so no cell waits behind a long one on a busy worker while another worker idles (the grid's tail)
    method = "forkserver" if spec.kind == "local" and _forkserver_available() else "spawn"
    with dask.config.set({"distributed.scheduler.allowed-failures": spec.retries,
                          "distributed.worker.multiprocessing-method": method,
                          "distributed.scheduler.worker-saturation": 1.0,
                          "distributed.worker.profile.enabled": False,
                          "distributed.admin.tick.interval": "1s",
                          "distributed.admin.system-monitor.interval": "10s",
                          "distributed.worker.preload": [__name__],
                          "distributed.nanny.pre-spawn-environ": environ}):
        try:
            if spec.kind == "local":
                cluster = distributed.LocalCluster(
                    n_workers=spec.workers, threads_per_worker=1, processes=True, host=host,
                    dashboard_address=None, resources={"GPU": 1} if gpu else None, silence_logs=50,
                    env=_worker_env())
                client = distributed.Client(cluster, set_as_default=False)
                declared = spec.workers
            elif spec.kind == "address":
                client = distributed.Client(spec.address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
                declared = 1
            else:
                conf = read_jobqueue_config(spec.kind, spec.config)
                submit = str(getattr(_jobqueue_class(spec.kind).job_cls, "submit_command", "") or "").split()
                if submit and shutil.which(submit[0]) is None:  # jobs would never start: say so now
                    raise BenchError(f"--cluster {spec.label}: {submit[0]!r} is not on this machine's PATH "
                                     f"(run the command on a {spec.kind.upper()} login node)")
                cluster = jobqueue_cluster(spec, gpu=gpu)
                cluster.scale(jobs=conf.jobs)
                client = distributed.Client(cluster, set_as_default=False)
                declared = conf.jobs * int(conf.options.get("processes", 1))
        except BenchError:
            raise
        except (OSError, TimeoutError) as e:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
            where = spec.address or spec.label
            raise BenchError(f"cannot reach the Dask scheduler at {where}: {_one_line(e)}") from None
        except Exception as e:  # e.g. a jobqueue submit command missing (sbatch not found)
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
            raise BenchError(f"cannot start --cluster {spec.label}: {_one_line(e)}") from None
        try:
            if gpu:
                client.register_plugin(_gpu_pin_plugin(), name="mmi-bench-gpu-pin")
            yield Session(client, spec, gpu, time.perf_counter() - t0, declared)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def dask_setup(worker: Any = None) -> None:
    """Run by every worker that preloads this module (``--preload bench.harness.cluster``) as it
    starts: :data:`WORKER_IMPORTS` imported before the first cell arrives (a worker forked from a
    preloaded forkserver has them already), and one thread for torch and every BLAS runtime
    (:func:`bench.harness.runner.one_thread_per_worker`, as a pool worker)."""
    import importlib

    for name in WORKER_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:  # (transformers is optional for a method author's own models)
            pass
    from bench.harness.runner import one_thread_per_worker

    one_thread_per_worker()


# the hash seed distributed's nanny gives the workers it spawns (its default); a forked worker has its server's
NANNY_HASH_SEED = "6640"


def _forkserver_available() -> bool:
    """Linux only: macOS has a forkserver, but forking a process that loaded its system frameworks
    (torch's Accelerate and Metal back-ends) is unsafe there, which is why Python spawns by default."""
    import multiprocessing

    return sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods()


def prestart(spec: ClusterSpec | None) -> None:
    """Start what a local cluster's workers fork from, now, in the background: a ``forkserver``
    (where the platform has one) that imports distributed and :data:`WORKER_IMPORTS` once, so that
    the driver's own work until it connects (its store lookups, fingerprints, importing
    distributed) overlaps with it. Nothing for other clusters, for none, or off Linux (the workers
    are then spawned, Dask's default). Idempotent: one server per driver
    process, kept until it exits, so a second grid's workers start in a fraction of a second.

    Why a forkserver, measured on the 2-core CPU (README): a spawned worker imports torch and
    transformers itself and, at the end, its interpreter's shutdown frees them all (~1 s for a local
    cluster's close); a worker forked from the server has them already and ends with ``os._exit``
    (its close took 0.04 s), and once the server is up a cluster connects in ~0.2 s. Safe to fork:
    the server is a fresh single-threaded process that has only imported modules (no CUDA context,
    no OpenMP pool). The server keeps the environment and ``sys.path`` it started with."""
    import importlib.util

    if spec is None or spec.kind != "local" or not _forkserver_available() \
            or importlib.util.find_spec("distributed") is None:  # (connect then says what to install)
        return
    import multiprocessing
    from multiprocessing import forkserver

    from bench.harness.runner import ONE_THREAD_ENV

    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["distributed", "dask", "numpy", *WORKER_IMPORTS, __name__])
    # the environment the nanny would give a spawned worker, given to the server as it starts (it is
    # read there: OpenMP's at torch's import), then this process's own restored
    environ = {**ONE_THREAD_ENV, "PYTHONHASHSEED": NANNY_HASH_SEED}
    saved = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)
    try:
        forkserver.ensure_running()  # (returns at once; the server imports while this process goes on)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _gpu_pin_plugin() -> Any:
    """A worker plugin (built here: its base class is distributed's, imported only with a cluster):
    each worker of a machine with several GPUs takes its own (``cuda`` means the worker's current
    device), by its number when workers are numbered (LocalCluster), unless ``CUDA_VISIBLE_DEVICES``
    already leaves it one GPU (Slurm's ``--gres``)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class GpuPin(WorkerPlugin):  # type: ignore[misc]
        idempotent = True

        def setup(self, worker: Any) -> None:
            import torch

            if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
                return
            try:
                index = int(str(worker.name).rsplit("-", 1)[-1])
            except ValueError:
                return
            torch.cuda.set_device(index % torch.cuda.device_count())

    return GpuPin()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


def run_cells(session: Session, todo: list[Any], submit_args: Callable[[Any], tuple[Any, ...]],
              fn: Callable[..., Any], stored_meanwhile: Callable[[Any], bool],
              finish: Callable[[Any, Any], None], lost: Callable[[Any, str], Any], bar: Any,
              resources: Mapping[str, int] | None = None) -> dict[str, float]:
    """Run ``fn(*submit_args(cell))`` for each cell of ``todo`` on the cluster, in order, with up to
    twice :meth:`Session.width` cells in flight (one running per worker thread, the rest queued on the
    scheduler, which hands each to the first worker that frees up: no worker waits on the driver);
    ``finish(cell, record)`` as each completes. A cell whose workers died
    more than the allowed times, or whose call raised outside the cell's own guard, gets
    ``lost(cell, error)``, a failed record, instead. Returns timings: ``first_cell_s`` (from the
    first submit to the first record) and ``overhead_s`` (the driver's own time per cell: submit and
    result transfer, summed)."""
    distributed = _import_distributed()
    client = session.client
    queue = list(reversed(todo))
    running: dict[Any, Any] = {}
    ac = distributed.as_completed(loop=client.loop)
    t_start = time.perf_counter()
    first: float | None = None
    driver_s = 0.0

    def top_up() -> None:
        nonlocal driver_s
        limit = 2 * session.width()
        while queue and len(running) < limit:
            c = queue.pop()
            if stored_meanwhile(c):
                continue
            t = time.perf_counter()
            # pure=False: a cell is never deduplicated against another run of it (force re-runs)
            fut = client.submit(fn, *submit_args(c), pure=False, resources=dict(resources) if resources else None,
                                key=f"cell-{len(todo) - len(queue)}-{os.urandom(4).hex()}")
            driver_s += time.perf_counter() - t
            running[fut] = c
            ac.add(fut)

    top_up()
    while running:
        fut = next(ac)
        c = running.pop(fut)
        t = time.perf_counter()
        try:
            rec = fut.result()
        except Exception as e:  # KilledWorker after the allowed failures, or an error outside run_cell's guard
            rec = lost(c, f"{type(e).__name__}: {_one_line(e)}")
        driver_s += time.perf_counter() - t
        fut.release()
        if first is None:
            first = time.perf_counter() - t_start
        bar.set_postfix_str(c.label)
        finish(c, rec)
        top_up()
    return {"first_cell_s": round(first or 0.0, 4), "overhead_s": round(driver_s, 4),
            "connect_s": round(session.started_s, 4)}
