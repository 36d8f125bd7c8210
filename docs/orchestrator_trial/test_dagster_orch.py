"""Run the Kedro project through kedro-dagster from pytest.

Each Kedro node becomes a Dagster op; the multiprocess executor runs each op in
its own process, so pair_a/pair_b nodes run as separate, parallel tasks.
"""
import json
import os
import shutil
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def project_env(tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT)                       # translator finds the Kedro project from cwd
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    shutil.rmtree(PROJECT / "data", ignore_errors=True)
    (PROJECT / "data").mkdir()
    yield tmp_path


def _stamps():
    s = json.loads((PROJECT / "data" / "summary.json").read_text())
    recs = {"final": s}
    for ns, r in s["inputs"].items():
        recs[f"{ns}.make"] = r["upstream"]
        recs[f"{ns}.consume"] = r
    return s, recs


def test_multiprocess_execute_job(project_env):
    from dagster import DagsterInstance, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repo = ReconstructableRepository.for_module("proj.definitions", "defs", working_directory=str(PROJECT))
    recon_job = repo.get_reconstructable_job("local__default")   # executor: multiproc (dagster.yml)
    t0 = time.time()
    with DagsterInstance.get() as instance:                       # uses DAGSTER_HOME (tmp)
        result = execute_job(recon_job, instance=instance)
    wall = time.time() - t0
    assert result.success
    s, recs = _stamps()
    assert s["total"] == 32
    pids = {r["pid"] for r in recs.values()}
    assert len(pids) == 5 and os.getpid() not in pids              # every node in its own process
    a, b = recs["pair_a.make"], recs["pair_b.make"]
    assert a["start"] < b["end"] and b["start"] < a["end"]       # the two namespaces overlapped
    print(f"multiprocess execute_job wall={wall:.1f}s")


def test_in_process(project_env):
    from proj.definitions import defs

    t0 = time.time()
    result = defs.resolve_job_def("local__default_seq").execute_in_process()
    wall = time.time() - t0
    assert result.success
    s, recs = _stamps()
    assert s["total"] == 32
    print(f"in-process wall={wall:.1f}s")
