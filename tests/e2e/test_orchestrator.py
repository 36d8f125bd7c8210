"""The grid on a distributed executor: kedro-dagster turns every Kedro node into a Dagster op, and dagster-dask sends
each op to a worker of a dask.distributed cluster. The test starts the cluster itself (a scheduler and two workers,
each its own process, as on a cluster of machines), runs a 1 x 1 grid of the miniature model on it with `dagster job
execute`, and checks from Dagster's event log that every op ran in one of the two workers (the two concepts' LoRAs
side by side). The time against the in-process executor: benchmarks/grid_executors.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


@pytest.mark.slow
def test_a_1x1_grid_runs_on_a_dask_cluster_with_every_op_on_a_worker(tmp_path, grid_project):
    pytest.importorskip("dagster_dask", reason="pip install -e '.[test]' installs dagster-dask")
    from dagster import DagsterEventType, DagsterInstance

    from ziplora_pipeline.kedro_glue.dask_cluster import dask_cluster, dask_dagster_yml

    project, home = grid_project, tmp_path / "dagster_home"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KEDRO_ENV"))},
           "DAGSTER_HOME": str(home), "KEDRO_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    with dask_cluster(project, tmp_path / "logs", env, workers=2) as cluster:
        (project / "conf/local/dagster.yml").write_text(dask_dagster_yml(cluster.address))  # what a user writes
        proc = subprocess.run([str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m",
                               "ziplora_pipeline.definitions", "-j", "local__grid"], cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, check=False)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((tmp_path / "logs").glob("*.log")))
        assert proc.returncode == 0, proc.stdout[-8000:] + logs
    assert len(cluster.worker_pids) == 2

    with DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        events = [e.dagster_event for e in instance.all_logs(run.run_id) if e.is_dagster_event]
    started = {e.step_key: e.pid for e in events if e.event_type == DagsterEventType.STEP_START}
    succeeded = {e.step_key for e in events if e.event_type == DagsterEventType.STEP_SUCCESS}
    for pair in PAIRS:  # every node of every pair ran as its own op
        assert {f"{pair}__{n}" for n in ("ziplora_merge", "build_methods", "export_merges", "generate", "judge")} \
            <= succeeded, pair
    assert {f"{c}__train_lora" for c in ("robot", "sketch")} <= succeeded
    assert set(started) == succeeded  # nothing started that did not finish
    # every op in a worker process (not the `dagster job execute` process), and both workers used
    assert set(started.values()) == cluster.worker_pids, (started, cluster.worker_pids)
    (sheets,) = (project / "data/08_reporting/grid").glob("1x1_*/sheets/*/sheets")
    assert sorted(p.name for p in sheets.iterdir()) == sorted(f"{m}_seed100.png" for m in grid_methods())
