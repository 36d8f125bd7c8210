"""The whole job on an SD-1.5-shaped miniature (the family checks: tests/core/diffusion/test_families.py)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import kedro

pytestmark = pytest.mark.slow


def test_whole_job_on_the_sd15_miniature(tmp_path):
    """`kedro run` (all stages) on an SD-1.5-shaped miniature: only parameters differ from SDXL."""
    import pandas as pd

    from tests.helpers import copy_project

    copy_project(tmp_path)
    (tmp_path / "conf/local/parameters.yml").write_text("generation:\n  seeds: [100, 101]\n")  # 2 of the 8 seeds
    # A random-weight SD-1.5-shaped miniature built at first use, tiny random encoders (their scores mean nothing;
    # the report says so): this test is about the code path, not the pictures.
    params = ("base_model.pretrained_model_name_or_path=data/06_models/miniature_sd15,base_model.miniature_family=sd,"
              "base_model.miniature_seed=0,evaluation.clip.name_or_path=data/06_models/tiny_clip,"
              "evaluation.clip.build_seed=0,evaluation.dino.name_or_path=data/06_models/tiny_dino,"
              "evaluation.dino.build_seed=0,generation.num_inference_steps=2,"
              "subject.lora.steps=5,style.lora.steps=5,joint.lora.steps=5,merge.steps=5")
    kedro(tmp_path, "run", "--params", params)
    model_index = json.loads((tmp_path / "data/06_models/miniature_sd15/model_index.json").read_text())
    assert model_index["_class_name"] == "StableDiffusionPipeline"
    [lora] = (tmp_path / "data/06_models/ziplora/ziplora.safetensors").glob("*/ziplora.safetensors")
    from ziplora_pipeline.datasets.lora_safetensors import read_lora_file

    assert read_lora_file(str(lora)).state_dict  # a merged LoRA was exported
    [csv] = (tmp_path / "data/08_reporting/evaluation/metrics.csv").glob("*/metrics.csv")
    table = pd.read_csv(csv).set_index("method")
    assert table.loc["subject_lora", "subject_fidelity"] == pytest.approx(1.0, abs=1e-6)
    assert table.loc["ziplora", ["subject_fidelity", "style_fidelity"]].notna().all()
