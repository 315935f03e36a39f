"""The grid on Dask (issue 24): ``--cluster`` parsing and one-line errors, the Slurm job script a
config renders (no Slurm installed), and, behind ``-m slow``, real LocalClusters bound to 127.0.0.1:
the same records as the process pool, and a worker killed mid-grid.

Every cluster here binds to 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import signal
import time

import distributed  # noqa: F401  (a [dev] dependency: missing fails here, never skips)
import pytest

from bench.app.cli import main
from bench.errors import BenchError
from bench.harness import runner
from bench.harness.cluster import ClusterSpec, job_script, parse_cluster, read_jobqueue_config
from bench.harness.store import Store
from bench.records import RunRecord

GRID = ["--task", "attribution", "--model", "zoo-clip", "--method", "saliency", "--quick", "--no-table",
        "--no-progress"]


def test_cluster_specs_parse_and_bad_ones_are_one_line(tmp_path):
    assert parse_cluster("local:3") == ClusterSpec("local", workers=3)
    assert parse_cluster("tcp://10.0.0.5:8786", retries=0) == ClusterSpec("address", address="tcp://10.0.0.5:8786",
                                                                          retries=0)
    assert parse_cluster("slurm") == ClusterSpec("slurm")
    for bad, words in [("local:0", "positive number"), ("local:x", "positive number"),
                       ("tcp://host", "tcp://HOST:PORT"), ("kubernetes", "unknown --cluster"),
                       (f"slurm:{tmp_path}/none.toml", "no config file")]:
        with pytest.raises(BenchError, match=words):
            parse_cluster(bad)
    conf = tmp_path / "c.toml"
    conf.write_text("[bench]\nworkers = 3\n")
    with pytest.raises(BenchError, match="unknown \\[bench\\] key 'workers'"):
        parse_cluster(f"slurm:{conf}")


def test_cli_cluster_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from bench.harness import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2.0)  # (a refused port is retried until the timeout)
    store = tmp_path / "r.sqlite"
    assert main(["evaluate", *GRID, "--cluster", "local:2", "--jobs", "2", "--store", str(store)]) == 2
    assert main(["evaluate", *GRID, "--retries", "1", "--store", str(store)]) == 2
    # nothing listens on port 9 of this machine: one line, no traceback, no store left behind
    assert main(["evaluate", *GRID, "--cluster", "tcp://127.0.0.1:9", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 3, err
    assert "exclude each other" in lines[0] and "--cluster runs only" in lines[1]
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in lines[2]
    assert "Traceback" not in err
    assert not store.exists()


def test_slurm_job_script_from_a_config(tmp_path):
    conf = tmp_path / "slurm.toml"
    conf.write_text('[cluster]\nqueue = "gpu"\naccount = "interp"\ncores = 4\nprocesses = 2\nmemory = "32GB"\n'
                    'walltime = "02:00:00"\njob_extra_directives = ["--gres=gpu:2"]\n'
                    '[bench]\njobs = 3\nretries = 1\n')
    spec = parse_cluster(f"slurm:{conf}")
    assert spec.retries == 1 and read_jobqueue_config("slurm", spec.config).jobs == 3
    script = job_script(spec, gpu=True, host="127.0.0.1")
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    for directive in ("#SBATCH -p gpu", "#SBATCH -A interp", "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:2",
                      "#SBATCH -n 1", "#SBATCH --cpus-per-task=4"):
        assert directive in lines, (directive, script)
    launch = lines[-1]
    assert "distributed.cli.dask_worker tcp://127.0.0.1:" in launch
    assert "--nworkers 2" in launch and "--nthreads 1" in launch and "--resources GPU=1" in launch
    if os.environ.get("PYTHONPATH"):
        assert any(line.startswith("export PYTHONPATH=") for line in lines)
    # the same config on the CPU: no GPU resource asked for
    assert "--resources" not in job_script(spec, gpu=False, host="127.0.0.1")
    # the same code path for PBS
    assert "#PBS -q gpu" in job_script(parse_cluster(f"pbs:{conf}"), host="127.0.0.1")


def test_a_bad_jobqueue_keyword_is_one_line(tmp_path):
    conf = tmp_path / "slurm.toml"
    conf.write_text("[cluster]\nqeue = 'gpu'\n")
    with pytest.raises(BenchError, match="slurm.toml"):
        job_script(parse_cluster(f"slurm:{conf}"), host="127.0.0.1")


# ----------------------------------------------------------------- slow: real clusters
def _core(r: RunRecord) -> str:
    return json.dumps([r.status, r.metrics, r.example_hashes, r.model_hash, r.main_score, r.method_config, r.rows],
                      sort_keys=True, default=str)


@pytest.mark.slow
def test_local_cluster_gives_the_pool_records(tmp_path):
    cells = runner.plan(["attribution"], ["random", "oracle", "saliency"], ["zoo-clip"], [0], quick=True).cells
    assert len(cells) == 3
    pool, dask = Store(tmp_path / "pool.sqlite"), Store(tmp_path / "dask.sqlite")
    a = runner.run_grid(cells, pool, jobs=2, progress=False)
    b = runner.run_grid(cells, dask, progress=False, cluster=parse_cluster("local:2"))
    assert len(a.ran) == len(b.ran) == 3 and all(r.status == "ok" for r in b.ran)
    pa = {r.key.id: _core(r) for r in pool.records(rows=True)}
    pb = {r.key.id: _core(r) for r in dask.records(rows=True)}
    assert pa == pb  # metrics, example hashes, rows: byte-identical JSON
    assert b.cluster_timings["first_cell_s"] > 0
    # resume and --force behave as with the pool: nothing re-run, then everything
    again = runner.run_grid(cells, dask, progress=False, cluster=parse_cluster("local:2"))
    assert not again.ran and len(again.already) == 3
    forced = runner.run_grid(cells[:1], dask, progress=False, force=True, cluster=parse_cluster("local:1"))
    assert len(forced.ran) == 1 and {r.key.id: _core(r) for r in dask.records(rows=True)} == pa


@pytest.mark.slow
def test_a_worker_killed_mid_grid_loses_no_cell_and_the_grid_finishes(tmp_path):
    import dask
    from distributed import Client, LocalCluster

    cells = runner.plan(["attribution"], ["random", "oracle", "saliency", "input_x_gradient"], ["zoo-clip"], [0, 1],
                        quick=True).cells
    assert len(cells) == 8
    # retries 0: the cell running on the killed worker is a failed record at once (bounded retries)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                               silence_logs=50)
    client = Client(cluster, set_as_default=False)
    killed: list[int] = []

    def kill_one(rec: RunRecord) -> None:
        """After the first record: SIGKILL a worker that is running a cell."""
        if killed:
            return
        for _ in range(100):
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    store = Store(tmp_path / "r.sqlite")
    try:
        spec = ClusterSpec("address", address=cluster.scheduler_address, retries=0)
        res = runner.run_grid(cells, store, progress=False, on_record=kill_one, cluster=spec)
        assert killed
        assert len(res.ran) == 8  # the grid went on to the end
        lost = [r for r in res.ran if r.status != "ok"]
        assert 1 <= len(lost) <= 2 and all("KilledWorker" in (r.error or "") for r in lost)
        assert len(list(store.records(status=None))) == 8 and len(list(store.records(status="ok"))) == 8 - len(lost)
        # the same command again runs only the lost cells (a failed record is not a stored cell)
        again = runner.run_grid(cells, store, progress=False, cluster=spec)
        assert len(again.ran) == len(lost) and all(r.status == "ok" for r in again.ran)
        assert len(list(store.records(status="ok"))) == 8
    finally:
        client.close()
        cluster.close()


@pytest.mark.slow
def test_local_workers_fork_with_the_bench_environment_and_a_killed_one_comes_back(tmp_path):
    """``local:N`` workers are forked from a server that imported torch and transformers once
    (:func:`bench.harness.cluster.prestart`): they must still have one BLAS thread and the driver's
    cache, and a worker killed mid-grid is forked again by its nanny while the grid goes on."""
    import psutil

    from bench.harness.cluster import connect

    def worker_state() -> tuple[str | None, int, str | None, bool]:
        import sys as _sys

        import torch as _torch

        return (os.environ.get("OMP_NUM_THREADS"), _torch.get_num_threads(), os.environ.get("MMI_BENCH_CACHE"),
                "transformers" in _sys.modules)

    with connect(parse_cluster("local:2")) as session:
        states = list(session.client.run(worker_state).values())
    assert len(states) == 2
    for omp, threads, cache, preloaded in states:
        assert (omp, threads, preloaded) == ("1", 1, True)
        assert cache == os.environ.get("MMI_BENCH_CACHE")

    def workers() -> list[psutil.Process]:
        servers = [p for p in psutil.Process().children(recursive=True)
                   if "multiprocessing.forkserver" in " ".join(p.cmdline())]
        return [c for s in servers for c in s.children()]

    cells = runner.plan(["attribution"], ["random", "oracle", "saliency", "input_x_gradient"], ["zoo-clip"], [0],
                        quick=True).cells
    killed: list[int] = []
    seen_after: set[int] = set()

    def kill_one(rec: RunRecord) -> None:
        if not killed:
            pids = [w.pid for w in workers()]
            assert pids, "no worker forked from a forkserver"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        else:
            seen_after.update(w.pid for w in workers())

    store = Store(tmp_path / "k.sqlite")
    res = runner.run_grid(cells, store, progress=False, on_record=kill_one, cluster=parse_cluster("local:2"))
    assert killed and len(res.ran) == len(cells)
    # the default retries (2) let the cell that lost its worker run again: every cell is stored ok
    assert all(r.status == "ok" for r in res.ran), [r.error for r in res.ran if r.status != "ok"]
    assert killed[0] not in seen_after


def _threads_here() -> tuple[int, list[int], str | None]:
    """torch's intra-op threads, every loaded BLAS/OpenMP runtime's threads (numpy's and scipy's
    included), and OMP_NUM_THREADS, as a cell in this process would see them."""
    import scipy.linalg  # noqa: F401  (loads scipy's own BLAS, after the worker started)
    import torch
    from threadpoolctl import threadpool_info

    return torch.get_num_threads(), sorted({int(i["num_threads"]) for i in threadpool_info()}), \
        os.environ.get("OMP_NUM_THREADS")


@pytest.mark.slow
def test_pool_workers_compute_on_one_thread_of_every_runtime():
    """A pool worker runs beside the others, one per core: torch and every BLAS runtime at one thread
    (a worker that left numpy's OpenBLAS at the core count oversubscribed the CPU)."""
    executor = runner.default_executor(2)
    assert executor is not None
    try:
        got = [f.result() for f in [executor.submit(_threads_here) for _ in range(2)]]
    finally:
        executor.shutdown(wait=True)
    assert got == [(1, [1], "1")] * 2


def test_a_pool_workers_fast_exit_never_ends_a_main_process(tmp_path):
    """``runner._exit_now`` (a pool worker's atexit: ``os._exit`` without the interpreter's shutdown)
    ends a multiprocessing child at once, and does nothing in a main process, which keeps its own
    exit status (a test or a user calling ``_pool_init``)."""
    import subprocess
    import sys

    code = ("import atexit, sys; from bench.harness import runner; atexit.register(runner._exit_now); "
            "runner._exit_now(); print('went on'); sys.exit(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (3, "went on")
    child = ("import multiprocessing as mp, sys\n"
             "from bench.harness import runner\n"
             "def work():\n    print('child ran', flush=True)\n    runner._exit_now()\n    print('not reached')\n"
             "if __name__ == '__main__':\n    p = mp.get_context('spawn').Process(target=work); p.start(); p.join()\n"
             "    sys.exit(p.exitcode)\n")
    (tmp_path / "child.py").write_text(child)
    done = subprocess.run([sys.executable, str(tmp_path / "child.py")], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "child ran")


def test_slurm_without_sbatch_is_one_line(tmp_path, capsys):
    import shutil

    if shutil.which("sbatch"):
        pytest.skip("the error under test is for a machine without Slurm's sbatch; this one has it")
    conf = tmp_path / "slurm.toml"
    conf.write_text("[cluster]\nqueue = 'gpu'\n")
    store = tmp_path / "r.sqlite"
    assert main(["evaluate", *GRID, "--cluster", f"slurm:{conf}", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "'sbatch' is not on this machine's PATH" in err and "Traceback" not in err
    assert not store.exists()
