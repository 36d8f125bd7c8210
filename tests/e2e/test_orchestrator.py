"""The grid through an existing orchestrator: kedro-dagster turns every Kedro node into a Dagster op (a separate task
that Dagster schedules, retries and, with its multiprocess or a cluster executor, spreads over workers)."""

from __future__ import annotations

import importlib
import shutil

import pytest

from tests.helpers import PROJECT_ROOT, grid_methods


@pytest.mark.slow
def test_a_1x2_grid_runs_through_dagster_with_every_node_a_separate_op(tmp_path, mini_model_path, monkeypatch):
    pytest.importorskip("kedro_dagster", reason="pip install -e '.[test]' installs kedro-dagster")
    from tests.helpers import copy_project
    from ziplora_pipeline.sample_data import write_grid_sample_data

    project = copy_project(tmp_path / "project", mini_model_path)
    shutil.copytree(PROJECT_ROOT / "data/06_models/toy_judges", project / "data/06_models/toy_judges")
    write_grid_sample_data(project / "data/01_raw", size=64, subjects={}, styles={"dots": "cat"})
    (project / "conf/local/parameters.yml").write_text(
        "grid:\n  styles:\n    dots: {token: pfw, noun: cat}\n"
        "  seeds: [100]\n  num_inference_steps: 2\n  batch_size: 4\n"
        "subject:\n  lora: {steps: 2}\nstyle:\n  lora: {steps: 2}\nmerge:\n  steps: 2\n  heldout_draws: 2\n")
    (tmp_path / "dagster_home").mkdir()
    monkeypatch.chdir(project)  # kedro-dagster finds the Kedro project from the working directory
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("KEDRO_ENV", raising=False)

    import ziplora_pipeline.definitions as definitions

    defs = importlib.reload(definitions).defs  # translated from this project (its conf/local grid)
    result = defs.resolve_job_def("local__grid").execute_in_process()  # the multiprocess job, run in this process
    assert result.success
    steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    pairs = [f"robot_x_{t}" for t in ("sketch", "dots")]
    for pair in pairs:  # every node of every pair ran as its own op
        assert {f"{pair}__{n}" for n in ("ziplora_merge", "build_methods", "export_merges", "generate", "judge")} <= steps, pair
    assert {f"{c}__train_lora" for c in ("robot", "sketch", "dots")} <= steps
    (sheets,) = (project / "data/08_reporting/grid").glob("1x2_*/sheets/*/sheets")
    assert sorted(p.name for p in sheets.iterdir()) == sorted(f"{m}_seed100.png" for m in grid_methods())
