"""The grid: the concept library's checks, the namespaced pipeline built from it, and (slow) a grid run that is
extended by one style and reruns only what is new."""

from __future__ import annotations

import re
import shutil

import pytest

from ziplora_pipeline.core.config_utils import ConfigError, from_dict
from ziplora_pipeline.core.evaluation.grid import GridConfig
from ziplora_pipeline.pipelines.grid.pipeline import build_grid_pipeline

SUBJECTS = {"robot": {"token": "sks", "noun": "robot"}, "cup": {"token": "qlx", "noun": "cup"}}
STYLES = {"sketch": {"token": "zwx", "noun": "house"}, "dots": {"token": "pfw", "noun": "cat"}}


def grid(**kw) -> GridConfig:
    return from_dict(GridConfig, {"subjects": SUBJECTS, "styles": STYLES, **kw}, "grid")


def test_pairs_all_is_every_subject_by_style_and_an_explicit_list_keeps_its_order():
    assert grid().pair_list() == [("robot", "sketch"), ("robot", "dots"), ("cup", "sketch"), ("cup", "dots")]
    assert grid(pairs=[["cup", "dots"], ["robot", "sketch"]]).pair_list() == [("cup", "dots"), ("robot", "sketch")]
    assert grid().key() != grid(pairs=[["cup", "dots"]]).key()  # the summary datasets follow the pair set
    assert grid().key() == grid(pairs=[["cup", "dots"], ["cup", "sketch"], ["robot", "dots"], ["robot", "sketch"]]).key()


@pytest.mark.parametrize("kw, message", [
    ({"pairs": [["robot", "watercolor"]]}, r"unknown style 'watercolor'; the styles are \['dots', 'sketch'\]"),
    ({"pairs": [["sketch", "dots"]]}, r"uses 'sketch' as a subject, but it is a style"),
    ({"styles": {**STYLES, "neon": {"token": "sks", "noun": "car"}}}, r"'robot' and 'neon' share the token 'sks'"),
    ({"max_pairs": 3}, r"4 pairs is more than grid.max_pairs = 3.*grid.confirm=true"),
    ({"subjects": {**SUBJECTS, "my-dog": {"token": "dgx", "noun": "dog"}}}, r"must be a Python identifier"),
    ({"styles": {"robot": {"token": "rrr", "noun": "cat"}}}, r"both as a subject and as a style"),
    ({"subjects": {"robot": {"token": "sks", "nuon": "robot"}}}, r"Unknown parameter 'grid.subjects.robot.nuon'"),
])
def test_bad_grids_fail_with_one_clear_message(kw, message):
    with pytest.raises(ConfigError, match=message):
        grid(**kw)


def test_a_large_grid_runs_when_confirmed():
    assert len(grid(max_pairs=3, confirm=True).pair_list()) == 4


def test_one_namespace_per_concept_and_per_pair_sharing_the_concept_loras():
    pipe = build_grid_pipeline(grid(pairs=[["robot", "sketch"], ["robot", "dots"]]))
    namespaces = {n.namespace for n in pipe.nodes}
    assert namespaces == {"robot", "sketch", "dots", "robot_x_sketch", "robot_x_dots", "grid"}  # no cup: unused
    trains = [n for n in pipe.nodes if n.name.endswith(".train_lora")]
    assert sorted(n.name for n in trains) == ["dots.train_lora", "robot.train_lora", "sketch.train_lora"]
    merge = next(n for n in pipe.nodes if n.name == "robot_x_dots.ziplora_merge")
    assert {"robot.lora_weights", "dots.lora_weights", "robot.images", "dots.prompt"} <= set(merge.inputs)
    assert "robot_x_dots.ziplora_weights" in merge.outputs
    # the subject's LoRA params come from subject.lora, the style's from style.lora
    assert "params:subject.lora" in next(n for n in trains if n.namespace == "robot").inputs
    assert "params:style.lora" in next(n for n in trains if n.namespace == "dots").inputs
    key = grid(pairs=[["robot", "sketch"], ["robot", "dots"]]).key()
    assert f"grid.{key}.sheets" in pipe.outputs()


@pytest.fixture
def fresh_project(tmp_path, mini_model_path):
    from .test_kedro_run import _copy_project

    return _copy_project(tmp_path / "fresh", mini_model_path)


@pytest.mark.slow
def test_grid_run_then_a_new_style_reruns_only_what_is_new(fresh_project):
    """`kedro run --pipelines grid` on 1 subject x 1 style; then a second style: with --only-missing-outputs only its
    LoRA, its pair and the grid summary run; `--namespaces <pair>` redoes that pair alone; a concept folder without
    images fails before any node runs."""
    from ziplora_pipeline.sample_data import write_grid_sample_data

    from .conftest import PROJECT_ROOT
    from .test_kedro_run import _kedro

    shutil.copytree(PROJECT_ROOT / "data/06_models/toy_judges", fresh_project / "data/06_models/toy_judges")
    write_grid_sample_data(fresh_project / "data/01_raw", size=64, subjects={}, styles={"dots": "cat"})
    fast = ("subject.lora.steps=2,style.lora.steps=2,merge.steps=2,merge.heldout_draws=2,grid.num_inference_steps=2,"
            "grid.batch_size=4")
    local = fresh_project / "conf/local/parameters.yml"
    local.write_text("grid:\n  seeds: [100, 101]\n")

    def ran(proc) -> list[str]:
        return re.findall(r"Completed node: (\S+)", proc.stdout + proc.stderr)

    first = ran(_kedro(fresh_project, "run", "--pipelines", "grid", "--params", fast))
    assert sorted(first) == sorted(["robot.prepare", "robot.train_lora", "sketch.prepare", "sketch.train_lora",
                                    *(f"robot_x_sketch.{n}" for n in ("ziplora_merge", "direct_merge", "generate",
                                                                      "judge")), "grid.sheets", "grid.table"])
    # MLflow: the run has one nested run per namespace (concepts and the pair), the pair's merge metrics on its own
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{fresh_project / 'mlflow.db'}?mode=ro", uri=True)) as con:
        nested = dict(con.execute("SELECT r.name, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                  "WHERE t.key = 'mlflow.parentRunId'").fetchall())
        parents = {v for v in nested.values()}
        merge_metric_runs = {r for (r,) in con.execute(
            "SELECT DISTINCT r.name FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid WHERE m.key LIKE 'merge.step.%'")}
    assert set(nested) == {"robot", "sketch", "robot_x_sketch"} and len(parents) == 1  # all under one parent
    assert merge_metric_runs == {"robot_x_sketch"}
    local.write_text("grid:\n  seeds: [100, 101]\n  styles:\n    dots: {token: pfw, noun: cat}\n")
    second = ran(_kedro(fresh_project, "run", "--pipelines", "grid", "--only-missing-outputs", "--params", fast))
    assert sorted(second) == sorted(["dots.prepare", "dots.train_lora",
                                     *(f"robot_x_dots.{n}" for n in ("ziplora_merge", "direct_merge", "generate",
                                                                     "judge")), "grid.sheets", "grid.table"])
    (sheets,) = (fresh_project / "data/08_reporting/grid").glob("1x2_*/sheets/*/sheets")
    assert sorted(p.name for p in sheets.iterdir()) == ["direct_merge_seed100.png", "ziplora_seed100.png"]
    (table,) = (fresh_project / "data/08_reporting/grid").glob("1x2_*/table.md/*/table.md")
    assert "robot_x_dots" in table.read_text() and "robot_x_sketch" in table.read_text()
    third = ran(_kedro(fresh_project, "run", "--pipelines", "grid", "--namespaces", "robot_x_sketch", "--params", fast))
    assert sorted(third) == sorted(f"robot_x_sketch.{n}" for n in ("ziplora_merge", "direct_merge", "generate", "judge"))
    local.write_text("grid:\n  subjects:\n    mug: {token: mgx, noun: cup}\n")
    proc = _kedro(fresh_project, "run", "--pipelines", "grid", "--params", fast, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "No images in data/01_raw/subjects/mug/" in out and "grid.subjects.mug.folder" in out
    assert "Running node" not in out


def test_pair_prompts_are_the_claims_groups_with_an_unseen_object_per_style():
    from ziplora_pipeline.core.evaluation.grid import pair_methods, pair_prompts

    cfg = grid()
    concepts = cfg.concepts()
    prompts = pair_prompts(cfg, concepts["robot"][1], concepts["dots"][1])
    assert ("merge", 0, "a sks robot in pfw style") in prompts and ("subject", 0, "a sks robot") in prompts
    assert ("style", 0, "a house in pfw style") in prompts  # dots shows a cat: the unseen object is the next one
    assert ("style", 0, "a cat in zwx style") in pair_prompts(cfg, concepts["robot"][1], concepts["sketch"][1])
    methods = pair_methods(cfg)
    assert methods["subject_lora"] == ("subject",) and methods["style_lora"] == ("style",)
    assert methods["ziplora_style0p7"] == ("merge", "recontext") and "style" in methods["ziplora"]
    with pytest.raises(ConfigError, match=r"grid.prompts.merge: 'a \{thing\}' may only use"):
        grid(prompts={"merge": ["a {thing}"]})
    with pytest.raises(ConfigError, match="style_strengths must lie in"):
        grid(style_strengths=[1.5])
