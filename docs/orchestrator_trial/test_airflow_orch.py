"""Run the kedro-airflow generated DAG from pytest with Airflow's dag.test() (in-process, serial)."""
import importlib.util
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def airflow_env(tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT)                     # generated DAG uses Path.cwd() as project_path
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(PROJECT / "airflow_dags"))
    subprocess.run(["airflow", "db", "migrate"], check=True, capture_output=True)   # ~3 s, sqlite
    shutil.rmtree(PROJECT / "data", ignore_errors=True)
    (PROJECT / "data").mkdir()


def test_airflow_dag_test(airflow_env):
    spec = importlib.util.spec_from_file_location("proj_dag", PROJECT / "airflow_dags" / "proj_dag.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from airflow.sdk import DAG
    dag = next(v for v in vars(mod).values() if isinstance(v, DAG)) if any(
        isinstance(v, DAG) for v in vars(mod).values()) else None
    if dag is None:                                 # @dag-decorated fn: call it to build the DAG
        dag = mod.proj()
    t0 = time.time()
    dr = dag.test()
    wall = time.time() - t0
    assert str(dr.state) in ("success", "DagRunState.SUCCESS")
    s = json.loads((PROJECT / "data" / "summary.json").read_text())
    assert s["total"] == 32
    print(f"airflow dag.test wall={wall:.1f}s")
