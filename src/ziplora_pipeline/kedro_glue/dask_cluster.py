"""A dask.distributed cluster on this machine, as on a cluster of machines: a scheduler and ``n`` workers, each its own
process started with the ``dask`` CLI in the project folder (kedro-dagster finds the Kedro project from the working
directory, so a worker machine runs in its checkout of the project). Used by the grid's distributed test and
``benchmarks/grid_executors.py``; on a real cluster the same two commands run on the machines themselves."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DaskCluster:
    address: str  # tcp://127.0.0.1:<port>
    worker_pids: set[int]


def dagster_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``dagster job execute`` and of the dask processes beside it: this one without MLflow's
    and Kedro's env settings, the Dagster instance at ``home``, offline, and this Python's scripts (``dask``,
    ``dagster``) on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KEDRO_ENV"))}
    return {**env, "DAGSTER_HOME": str(home), "KEDRO_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1",
            "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}", **extra}


def _dask(*args: str) -> list[str]:
    cli = Path(sys.executable).with_name("dask")
    return [str(cli), *args] if cli.exists() else [sys.executable, "-m", "dask", *args]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def dask_cluster(project: Path, logs: Path, env: dict[str, str], workers: int = 2,
                 scheduler_env: dict[str, str] | None = None) -> Iterator[DaskCluster]:
    """``dask scheduler`` and ``workers`` × ``dask worker --nthreads 1 --no-nanny`` (one op at a time per worker,
    the worker process itself running it), their output in ``logs/<name>.log``; all stopped on exit.
    ``scheduler_env``: extra variables for the scheduler (dask config, e.g.
    ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES``)."""
    from distributed import Client

    logs.mkdir(parents=True, exist_ok=True)
    scheduler_file = logs / "scheduler.json"

    def start(name: str, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
        # own process group: stopped with every child
        return subprocess.Popen(_dask(*args), cwd=project, env={**env, **(extra or {})},
                                stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)

    procs = [start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                   "--scheduler-file", str(scheduler_file), extra=scheduler_env)]
    try:
        deadline = time.monotonic() + 60
        while not (scheduler_file.exists() and scheduler_file.stat().st_size):
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError(f"dask scheduler did not start: {(logs / 'scheduler.log').read_text()[-2000:]}")
            time.sleep(0.5)
        address = json.loads(scheduler_file.read_text())["address"]

        def add_worker(name: str) -> int:
            proc = start(name, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", name)
            procs.append(proc)
            return proc.pid

        pids = {add_worker(f"worker{i}") for i in range(1, workers + 1)}
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
            running = set(client.run(os.getpid).values())
        if running != pids:  # --no-nanny: each worker runs in the process started here
            raise RuntimeError(f"dask workers run in processes {running}, started {pids}")
        yield DaskCluster(address, pids)
    finally:
        _stop(procs)


def dask_dagster_yml(address: str) -> str:
    """conf/local/dagster.yml that sends the grid job to the scheduler at ``address`` (merged into conf/base's)."""
    return (f"executors:\n  dask:\n    dask_executor:\n      cluster:\n        existing: {{address: '{address}'}}\n"
            "jobs:\n  grid:\n    executor: dask\n")
