"""A failed stage leaves no new version of its outputs (kedro_glue/hooks/rollback.py); other stages' are kept."""

from __future__ import annotations

from kedro.io import DataCatalog, Version
from kedro.pipeline import Node

from ziplora_pipeline.datasets import JSONDataset
from ziplora_pipeline.kedro_glue.hooks.rollback import StageRollbackHooks


def _catalog(tmp_path, version: str) -> DataCatalog:
    return DataCatalog({name: JSONDataset(filepath=str(tmp_path / f"{name}.json"), version=Version(None, version))
                        for name in ("subject_images", "ziplora_mergers", "merge_log", "robot_x_sketch.scores",
                                     "robot.training_log")})


def _run(tmp_path, version, saved, failed):
    catalog = _catalog(tmp_path, version)
    hooks = StageRollbackHooks()
    hooks.before_pipeline_run(catalog)
    for name in saved:
        catalog.save(name, {"v": version})
        hooks.after_dataset_saved(name)
    hooks.on_node_error(failed)
    hooks.on_pipeline_error(RuntimeError("boom"))
    return catalog


def _versions(tmp_path, name):
    return sorted(p.name for p in (tmp_path / f"{name}.json").iterdir())


def test_a_failed_merge_node_removes_the_merge_stages_new_versions_and_keeps_data_prep(tmp_path):
    _run(tmp_path, "2026-01-01T00.00.00.000Z", ["subject_images", "ziplora_mergers", "merge_log"],
         Node(lambda x: None, "x", None, name="dummy"))  # a node outside every stage: nothing of the stages removed
    failed = Node(lambda x: None, "x", None, name="build_methods", namespace="merge")  # as the registry names it
    catalog = _run(tmp_path, "2026-01-02T00.00.00.000Z", ["subject_images", "ziplora_mergers", "merge_log"], failed)
    assert _versions(tmp_path, "ziplora_mergers") == ["2026-01-01T00.00.00.000Z"]  # the new one rolled back
    assert _versions(tmp_path, "merge_log") == ["2026-01-01T00.00.00.000Z"]
    assert _versions(tmp_path, "subject_images") == ["2026-01-01T00.00.00.000Z", "2026-01-02T00.00.00.000Z"]
    assert _catalog(tmp_path, None).load("ziplora_mergers") == {"v": "2026-01-01T00.00.00.000Z"}
    del catalog


def test_in_the_grid_only_the_failed_namespace_is_rolled_back(tmp_path):
    failed = Node(lambda x: None, "x", None, name="judge", namespace="robot_x_sketch")
    _run(tmp_path, "2026-01-03T00.00.00.000Z", ["robot.training_log", "robot_x_sketch.scores"], failed)
    assert not (tmp_path / "robot_x_sketch.scores.json").exists() or _versions(tmp_path, "robot_x_sketch.scores") == []
    assert _versions(tmp_path, "robot.training_log") == ["2026-01-03T00.00.00.000Z"]
