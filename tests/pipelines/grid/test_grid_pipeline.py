"""The grid: the concept library's checks, the namespaced pipeline built from it, the pairs' prompts and methods
(a grid run: tests/e2e/test_grid.py)."""

from __future__ import annotations

import pytest

from tests.helpers import default_methods
from ziplora_pipeline.core.config_utils import ConfigError, from_dict
from ziplora_pipeline.core.evaluation.grid import GridConfig, pair_method_entries
from ziplora_pipeline.core.merging.registry import parse_methods
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
    assert "robot_x_dots.ziplora_mergers" in merge.outputs
    export = next(n for n in pipe.nodes if n.name == "robot_x_dots.export_merges")
    assert {"robot_x_dots.ziplora_weights", "robot_x_dots.direct_merge_weights"} <= set(export.outputs)
    # the subject's LoRA params come from subject.lora, the style's from style.lora
    assert "params:subject.lora" in next(n for n in trains if n.namespace == "robot").inputs
    assert "params:style.lora" in next(n for n in trains if n.namespace == "dots").inputs
    key = grid(pairs=[["robot", "sketch"], ["robot", "dots"]]).key()
    assert f"grid.{key}.sheets" in pipe.outputs()


def test_a_concepts_input_statistics_are_recorded_once_and_read_by_every_pair_it_is_in():
    """The closed-form method's statistics depend on one concept alone: one node per concept, not per pair."""
    pipe = build_grid_pipeline(grid())  # 2 subjects x 2 styles: 4 pairs, each concept in 2
    recorders = sorted(n.name for n in pipe.nodes if n.name.endswith(".input_statistics"))
    assert recorders == ["cup.input_statistics", "dots.input_statistics", "robot.input_statistics",
                         "sketch.input_statistics"]
    readers = {n.namespace: set(n.inputs) for n in pipe.nodes if n.name.endswith(".build_methods")}
    assert len(readers) == 4
    for pair, inputs in readers.items():
        subject, style = pair.split("_x_")
        assert {f"{subject}.input_statistics", f"{style}.input_statistics"} <= inputs
    assert sum("robot.input_statistics" in inputs for inputs in readers.values()) == 2


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


def test_each_pair_builds_grid_methods_through_the_registry_with_its_references_and_strengths():
    """grid.methods come from merge.methods (the one list of methods): naming any other entry there (here a PEFT
    merge) generates and judges it for every pair; the references are the LoRAs as trained, the strength variants
    ZipLoRA re-exported."""
    cfg = grid(methods=["ziplora", "direct_merge", "peft_ties_svd"])
    methods = parse_methods(pair_method_entries(cfg, default_methods()), "grid.methods")
    assert list(methods) == ["ziplora", "direct_merge", "peft_ties_svd", "subject_lora", "style_lora",
                             "ziplora_style0p7", "ziplora_style0p4"]
    assert methods["peft_ties_svd"].kind == "peft" and methods["ziplora_style0p4"].style_scale == 0.4
    assert not methods["subject_lora"].built and methods["ziplora"].built
    pipe = build_grid_pipeline(cfg)
    assert {"robot_x_sketch.build_methods", "robot_x_sketch.export_merges"} <= {n.name for n in pipe.nodes}


@pytest.mark.parametrize("methods, message", [
    (["ziplora"], r"grid.methods must list \['ziplora', 'direct_merge'\]"),
    (["ziplora", "direct_merge", "subject_lora"], r"grid.methods \['subject_lora'\]: these names are the grid's own"),
])
def test_bad_grid_methods_are_named(methods, message):
    with pytest.raises(ConfigError, match=message):
        grid(methods=methods)


def test_a_grid_method_merge_methods_does_not_define_is_named():
    with pytest.raises(ConfigError, match=r"grid.methods \['mine'\] are not entries of merge.methods"):
        pair_method_entries(grid(methods=["ziplora", "direct_merge", "mine"]), default_methods())
