"""A grid run that is extended by one style and reruns only what is new (the grid's checks and pipeline:
tests/pipelines/grid/)."""

from __future__ import annotations

import re
import shutil

import pytest

PAIR_NODES = ("ziplora_merge", "build_methods", "export_merges", "generate", "judge")


@pytest.fixture
def fresh_project(tmp_path, mini_model_path):
    from tests.helpers import copy_project

    return copy_project(tmp_path / "fresh", mini_model_path)


@pytest.mark.slow
def test_grid_run_then_a_new_style_reruns_only_what_is_new(fresh_project):
    """`kedro run --pipelines grid` on 1 subject x 1 style; then a second style: with --only-missing-outputs only its
    LoRA, its pair and the grid summary run; `--namespaces <pair>` redoes that pair alone; a concept folder without
    images fails before any node runs."""
    from tests.helpers import PROJECT_ROOT, grid_methods, kedro
    from ziplora_pipeline.sample_data import write_grid_sample_data

    shutil.copytree(PROJECT_ROOT / "data/06_models/toy_judges", fresh_project / "data/06_models/toy_judges")
    write_grid_sample_data(fresh_project / "data/01_raw", size=64, subjects={}, styles={"dots": "cat"})
    fast = ("subject.lora.steps=2,style.lora.steps=2,merge.steps=2,merge.heldout_draws=2,grid.num_inference_steps=2,"
            "grid.batch_size=4")
    local = fresh_project / "conf/local/parameters.yml"
    local.write_text("grid:\n  seeds: [100, 101]\n")

    def ran(proc) -> list[str]:
        return re.findall(r"Completed node: (\S+)", proc.stdout + proc.stderr)

    first = ran(kedro(fresh_project, "run", "--pipelines", "grid", "--params", fast))
    assert sorted(first) == sorted(["robot.prepare", "robot.train_lora", "robot.input_statistics", "sketch.prepare",
                                    "sketch.train_lora", "sketch.input_statistics",
                                    *(f"robot_x_sketch.{n}" for n in PAIR_NODES), "grid.sheets", "grid.table"])
    # MLflow: the run has one nested run per namespace (concepts and the pair), the pair's merge metrics on its own
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{fresh_project / 'mlflow.db'}?mode=ro", uri=True)) as con:
        nested = dict(con.execute("SELECT r.name, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                  "WHERE t.key = 'mlflow.parentRunId'").fetchall())
        parents = {v for v in nested.values()}
        merge_metric_runs = {r for (r,) in con.execute(
            "SELECT DISTINCT r.name FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid WHERE m.key LIKE 'merge/step.%'")}
    assert set(nested) == {"robot", "sketch", "robot_x_sketch"} and len(parents) == 1  # all under one parent
    assert merge_metric_runs == {"robot_x_sketch"}
    local.write_text("grid:\n  seeds: [100, 101]\n  styles:\n    dots: {token: pfw, noun: cat}\n")
    second = ran(kedro(fresh_project, "run", "--pipelines", "grid", "--only-missing-outputs", "--params", fast))
    assert sorted(second) == sorted(["dots.prepare", "dots.train_lora", "dots.input_statistics",
                                     *(f"robot_x_dots.{n}" for n in PAIR_NODES), "grid.sheets", "grid.table"])
    (sheets,) = (fresh_project / "data/08_reporting/grid").glob("1x2_*/sheets/*/sheets")
    assert sorted(p.name for p in sheets.iterdir()) == sorted(f"{m}_seed100.png" for m in grid_methods())
    (table,) = (fresh_project / "data/08_reporting/grid").glob("1x2_*/table.md/*/table.md")
    text = table.read_text()
    assert "robot_x_dots" in text and "robot_x_sketch" in text
    for method in set(grid_methods()) - {"ziplora", "direct_merge"}:  # a further method: compared with both
        assert f"## {method} vs direct_merge" in text and f"## {method} vs ziplora" in text
    third = ran(kedro(fresh_project, "run", "--pipelines", "grid", "--namespaces", "robot_x_sketch", "--params", fast))
    assert sorted(third) == sorted(f"robot_x_sketch.{n}" for n in PAIR_NODES)
    local.write_text("grid:\n  subjects:\n    mug: {token: mgx, noun: cup}\n")
    proc = kedro(fresh_project, "run", "--pipelines", "grid", "--params", fast, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "No images in data/01_raw/subjects/mug/" in out and "grid.subjects.mug.folder" in out
    assert "Running node" not in out
