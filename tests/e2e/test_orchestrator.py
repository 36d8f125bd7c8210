"""The grid on a distributed executor: kedro-dagster turns every Kedro node into a Dagster op, and dagster-dask sends
each op to a worker of a dask.distributed cluster. The test starts the cluster itself (a scheduler and two workers,
each its own process, as on a cluster of machines), runs a 1 x 1 grid of the miniature model on it with `dagster job
execute`, kills a worker mid-op, checks from Dagster's event log where every op ran, and completes the grid with
`kedro run --only-missing-outputs`.
The time against the in-process executor: benchmarks/grid_executors.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, grid_methods

PAIRS = ["robot_x_sketch"]


@pytest.fixture
def grid_project(tmp_path, mini_model_path) -> Path:
    from tests.helpers import copy_project

    project = copy_project(tmp_path / "project", mini_model_path)
    shutil.copytree(PROJECT_ROOT / "data/06_models/toy_judges", project / "data/06_models/toy_judges")
    (project / "conf/local/parameters.yml").write_text(  # the base grid: robot x sketch
        "grid:\n  seeds: [100]\n  num_inference_steps: 2\n  batch_size: 4\n"
        "subject:\n  lora: {steps: 2}\nstyle:\n  lora: {steps: 2}\nmerge:\n  steps: 2\n  heldout_draws: 2\n")
    return project


def _steps(instance, run_id: str, kind) -> dict[str, int]:
    """{step key: pid} of a run's events of ``kind`` (Dagster's event log; each event carries its process id)."""
    return {e.dagster_event.step_key: e.dagster_event.pid for e in instance.all_logs(run_id)
            if e.is_dagster_event and e.dagster_event.event_type == kind}


@pytest.mark.slow
def test_the_grid_on_a_dask_cluster_every_op_on_a_worker_and_a_dead_worker_rerun_from_failure(tmp_path, grid_project):
    """A 1 x 1 grid on a scheduler and two worker processes. A worker is killed (SIGKILL) while it runs a LoRA
    training op: the run fails naming that op, every op that started ran in one of the two workers; then
    ``kedro run --pipelines grid --only-missing-outputs`` completes the grid without rerunning a finished op."""
    pytest.importorskip("dagster_dask", reason="pip install -e '.[test]' installs dagster-dask")
    import signal

    from dagster import DagsterEventType as Ev
    from dagster import DagsterInstance, DagsterRunStatus

    from tests.helpers import kedro
    from ziplora_pipeline.kedro_glue.dask_cluster import dagster_env, dask_cluster, dask_dagster_yml

    project, home = grid_project, tmp_path / "dagster_home"
    home.mkdir()
    env = dagster_env(home, COLUMNS="200")
    logs = tmp_path / "logs"

    def tails() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))

    victim = "sketch__train_lora"
    # allowed-failures 0: a task whose worker dies is reported (KilledWorker), not silently rerun by dask
    with dask_cluster(project, logs, env, workers=2,
                      scheduler_env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}) as cluster, \
            DagsterInstance.from_config(str(home)) as instance:
        (project / "conf/local/dagster.yml").write_text(dask_dagster_yml(cluster.address))  # what a user writes
        job_log = logs / "job.log"  # a file, not a pipe: nobody reads a pipe while the test polls (it would fill)
        job = subprocess.Popen([str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m",
                                "ziplora_pipeline.definitions", "-j", "local__grid"], cwd=project, env=env,
                               stdout=job_log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while True:  # kill the worker that runs the victim op, once the op has started
            runs = instance.get_runs()
            started = _steps(instance, runs[0].run_id, Ev.STEP_START) if runs else {}
            if victim in started:
                break
            assert job.poll() is None and time.monotonic() < deadline, tails()
            time.sleep(0.2)
        os.kill(started[victim], signal.SIGKILL)
        job.wait(timeout=600)
        out = job_log.read_text()
        [run] = instance.get_runs()
        assert job.returncode != 0 and run.status == DagsterRunStatus.FAILURE, out[-5000:]
        assert "KilledWorker" in out and f"local__grid.{victim}" in out, out[-5000:]  # names the op
        started = _steps(instance, run.run_id, Ev.STEP_START)
        finished = set(_steps(instance, run.run_id, Ev.STEP_SUCCESS))
    # every op that started ran in a worker process, not in `dagster job execute` (which one: dask's choice; it
    # prefers the worker holding an op's inputs, so both workers are not always used before the kill)
    assert set(started.values()) <= cluster.worker_pids and job.pid not in started.values(), started
    assert "sketch__prepare" in finished and victim not in finished  # the victim's upstream op had finished

    rerun = kedro(project, "run", "--pipelines", "grid", "--only-missing-outputs").stdout
    ran = set(re.findall(r"Completed node: (\S+)", rerun))  # Kedro "sketch.train_lora" = Dagster sketch__train_lora
    nodes = {k.replace("__", ".", 1) for k in finished if "__" in k}
    assert victim.replace("__", ".") in ran and not (ran & nodes), (sorted(ran), sorted(nodes))
    assert {f"{PAIRS[0]}.{n}" for n in ("ziplora_merge", "build_methods", "export_merges", "generate", "judge")} <= ran
    (sheets,) = (project / "data/08_reporting/grid").glob("1x1_*/sheets/*/sheets")
    assert sorted(p.name for p in sheets.iterdir()) == sorted(f"{m}_seed100.png" for m in grid_methods())
