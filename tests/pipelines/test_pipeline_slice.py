"""data_prep + the subject_lora template run by Kedro's SequentialRunner on an in-memory catalog."""

from __future__ import annotations

import math

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from tests.helpers import RESOLUTION, STYLE_PARAMS, SUBJECT_PARAMS
from ziplora_pipeline.core.lora.checkpoints import CheckpointStore
from ziplora_pipeline.core.lora.io import LoraFile
from ziplora_pipeline.core.lora.training import ATTENTION_PROJECTIONS
from ziplora_pipeline.pipelines import data_prep, subject_lora

STEPS = 3
LORA_PARAMS = {"rank": 4, "alpha": 8, "steps": STEPS, "checkpoint_every": 2, "learning_rate": 1e-3, "seed": 0}


def _raw_partitions(folder) -> dict:
    """Like PartitionedDataset: ``{"robot/robot_00.png": load callable}``."""
    return {f"{p.parent.name}/{p.name}": (lambda p=p: p.read_bytes()) for p in sorted(folder.glob("*/*.png"))}


@pytest.fixture
def run_outputs(sample_raw, base_params, tmp_path):
    pipeline = data_prep.create_pipeline() + subject_lora.create_pipeline()
    checkpoints = CheckpointStore(tmp_path / "checkpoints")
    datasets = {
        "raw_subjects": MemoryDataset(_raw_partitions(sample_raw / "subjects"), copy_mode="assign"),
        "raw_styles": MemoryDataset(_raw_partitions(sample_raw / "styles"), copy_mode="assign"),
        "params:data_prep.subject": MemoryDataset(SUBJECT_PARAMS),
        "params:data_prep.style": MemoryDataset(STYLE_PARAMS),
        "params:data_prep.resolution": MemoryDataset(RESOLUTION),
        "params:subject.lora": MemoryDataset(LORA_PARAMS),
        "params:base_model": MemoryDataset(base_params),
        "subject_lora_checkpoints": MemoryDataset(checkpoints, copy_mode="assign"),
    }
    # Intermediate and final outputs: in memory too, without deep copies of images/figures.
    for name in ("subject_images", "subject_prompt", "style_images", "style_prompt", "joint_images", "joint_prompt",
                 "subject_lora_weights", "subject_training_log", "subject_loss_curve"):
        datasets[name] = MemoryDataset(copy_mode="assign")
    catalog = DataCatalog(datasets=datasets)
    assert pipeline.inputs() == {k for k in datasets if k.startswith(("raw_", "params:")) or k == "subject_lora_checkpoints"}
    outputs = SequentialRunner().run(pipeline, catalog)
    return outputs, catalog, checkpoints


def test_slice_produces_a_lora_and_a_training_log(run_outputs, fresh_pipe):
    outputs, catalog, checkpoints = run_outputs
    # The runner returns the free outputs as dataset objects.
    assert set(outputs) == {"joint_images", "joint_prompt", "subject_lora_weights", "subject_training_log",
                            "subject_loss_curve"}  # style_* now feed the joint-training set

    lora = outputs["subject_lora_weights"].load()
    assert isinstance(lora, LoraFile)
    unet = fresh_pipe().unet
    targets = [name for name, _ in unet.named_modules() if name.endswith(tuple(f".{t}" for t in ATTENTION_PROJECTIONS))]
    assert len(targets) > 0
    expected = {f"unet.{m}.lora_{ab}.weight" for m in targets for ab in "AB"}
    assert set(lora.state_dict) == expected
    config = lora.adapter_config()
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == sorted(ATTENTION_PROJECTIONS)
    assert lora.metadata["format"] == "pt"
    a = lora.state_dict[f"unet.{targets[0]}.lora_A.weight"]
    assert a.shape == (4, unet.get_submodule(targets[0]).in_features)

    log = outputs["subject_training_log"].load()
    assert log["concept"] == "subject" and log["prompt"] == "a photo of sks robot"
    assert log["steps"] == STEPS and len(log["losses"]) == STEPS and log["resumed_from"] == 0
    assert all(math.isfinite(x) and x > 0 for x in log["losses"])
    assert log["final_loss"] == log["losses"][-1]
    assert (log["rank"], log["alpha"]) == (4, 8)

    figure = outputs["subject_loss_curve"].load()
    assert len(figure.axes[0].lines[0].get_ydata()) == STEPS

    # Intermediate MemoryDatasets are released once consumed; the free joint-training outputs stay.
    with pytest.raises(Exception, match="has not been saved yet"):
        catalog["subject_images"].load()
    joint_images = outputs["joint_images"].load()
    assert "style_sketch" in joint_images and len(joint_images) == 6  # 5 subject views + the style image
    assert joint_images["style_sketch"].size == (RESOLUTION, RESOLUTION)
    groups = outputs["joint_prompt"].load()["groups"]
    assert [g["prompt"] for g in groups] == ["a photo of sks robot", "a house in zwx style"]
    assert groups[1]["images"] == ["style_sketch"]
    assert list(checkpoints.folder.glob("*/*.pt")) == []  # finished run cleaned its checkpoints
