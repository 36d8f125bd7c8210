"""An interrupted `kedro run` says so (kedro_glue/hooks/interrupt.py): Ctrl-C ends with one line, exit code 130 and
the MLflow run KILLED; a run killed hard stays RUNNING until the next run of the project marks it KILLED, once."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import copy_project, kedro

LONG = "subject.lora.steps=5000,subject.lora.checkpoint_every=5"


def _start(project: Path, *args: str) -> subprocess.Popen:
    kedro_bin = Path(sys.executable).with_name("kedro")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(HF_HUB_OFFLINE="1", KEDRO_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1", COLUMNS="250")
    return subprocess.Popen([str(kedro_bin), *args], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _runs(project: Path) -> dict[str, tuple[str, dict]]:
    """{run id: (status, tags)} from the project's MLflow database."""
    db = project / "mlflow.db"
    if not db.is_file():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        runs = dict(con.execute("SELECT run_uuid, status FROM runs").fetchall())
        tags: dict[str, dict] = {r: {} for r in runs}
        for r, k, v in con.execute("SELECT run_uuid, key, value FROM tags"):
            tags.setdefault(r, {})[k] = v
    return {r: (s, tags[r]) for r, s in runs.items()}


def _wait_for_checkpoint(project: Path, proc: subprocess.Popen, timeout: float = 300, newer_than: float = 0) -> None:
    root = project / "data/06_models/checkpoints/subject_lora"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"kedro ended early ({proc.returncode}):\n{proc.stdout.read()[-6000:]}")
        if any(p.stat().st_mtime > newer_than for p in root.rglob("step_*.pt")):
            return
        time.sleep(0.5)
    proc.kill()
    pytest.fail("no checkpoint written in time")


@pytest.fixture
def prepared(tmp_path, mini_model_path) -> Path:
    project = copy_project(tmp_path / "p", mini_model_path)
    kedro(project, "run", "--pipelines", "data_prep")
    return project


def test_ctrl_c_and_a_hard_kill(prepared):
    """Ctrl-C: one line naming the step and the checkpoint, exit 130, the run KILLED. Then a SIGKILL: its run stays
    RUNNING (no hook runs) until the next run of the project marks it KILLED and says so, once."""
    before = set(_runs(prepared))
    proc = _start(prepared, "run", "--pipelines", "subject_lora", "--params", LONG)
    _wait_for_checkpoint(prepared, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out[-6000:]
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"Interrupted at subject\S* step \d+ \(node subject_lora\.\S+\); run the same command again "
                        r"to resume from the checkpoint of step \d+\.", last), out[-4000:]
    assert "Aborted!" not in out and "Traceback" not in out
    (interrupted,) = set(_runs(prepared)) - before
    assert _runs(prepared)[interrupted][0] == "KILLED"

    before = set(_runs(prepared))
    proc = _start(prepared, "run", "--pipelines", "subject_lora", "--params", LONG)
    time.sleep(2.0)
    _wait_for_checkpoint(prepared, proc, newer_than=time.time())  # the run is open and tagged by now
    proc.kill()  # SIGKILL: no hook runs
    proc.communicate(timeout=60)
    (killed,) = set(_runs(prepared)) - before
    status, tags = _runs(prepared)[killed]
    assert status == "RUNNING" and tags.get("ziplora.pid", "").isdigit()
    out = kedro(prepared, "run", "--pipelines", "data_prep").stdout
    assert out.count("Marked 1 MLflow run(s) KILLED that a hard kill left RUNNING") == 1, out[-4000:]
    assert _runs(prepared)[killed][0] == "KILLED"
    again = kedro(prepared, "run", "--pipelines", "data_prep").stdout
    assert "a hard kill left RUNNING" not in again
