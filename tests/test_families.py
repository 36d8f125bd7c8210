"""Model families: an SD-1.5-shaped miniature runs the same code; unsupported models and devices
get clear errors; LoRAs of one family are refused for another."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from ziplora_pipeline.core.diffusion.base_model import (BaseModelConfig, BaseModelError, check_sdxl_folder, load_base_pipeline,
                                              model_family, resolve_device, resolve_dtype)
from ziplora_pipeline.core.lora.io import LoraFormatError, check_family
from ziplora_pipeline.core.lora.training import LoraTrainingConfig, train_lora
from ziplora_pipeline.core.diffusion.sdxl import encode_concept


@pytest.fixture(scope="module")
def sd15_cfg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd15") / "mini_sd15"
    return BaseModelConfig(pretrained_model_name_or_path=str(folder), miniature_family="sd", device="cpu")


def test_sd15_miniature_is_detected_and_loads_through_from_pretrained(sd15_cfg):
    pipe = load_base_pipeline(sd15_cfg)  # writes the miniature model, then from_pretrained
    assert type(pipe).__name__ == "StableDiffusionPipeline" and model_family(pipe) == "sd"
    from pathlib import Path

    assert check_sdxl_folder(Path(sd15_cfg.pretrained_model_name_or_path)) == "sd"


def test_sd15_lora_trains_merges_and_is_refused_by_sdxl(sd15_cfg, base_cfg, subject_images):
    from ziplora_pipeline.core.lora.factors import unet_lora_factors
    from ziplora_pipeline.core.merging.optimise import MergeConfig, ziplora_merge
    from ziplora_pipeline.core.diffusion.sdxl import training_scheduler

    inputs, loras = {}, {}
    for i, name in enumerate(("subject", "style")):
        pipe = load_base_pipeline(sd15_cfg)
        inputs[name] = encode_concept(pipe, subject_images[i:i + 2], f"a photo of {name}")
        assert inputs[name].pooled_prompt_embeds is None and inputs[name].time_ids is None
        lora = train_lora(pipe, inputs[name], LoraTrainingConfig(steps=3, seed=i), name).lora
        assert lora.metadata["ziplora_pipeline.base_family"] == "sd"
        loras[name] = lora
    pipe = load_base_pipeline(sd15_cfg)
    factors = {n: unet_lora_factors(f, n) for n, f in loras.items()}
    result = ziplora_merge(pipe.unet, factors, inputs, MergeConfig(steps=3), training_scheduler(pipe), progress=False)
    assert len(result.history["loss"]) == 3
    with pytest.raises(LoraFormatError, match="trained on a sd base model.*base model here is sdxl"):
        check_family(loras["subject"], model_family(load_base_pipeline(base_cfg)), "subject LoRA")


def test_unknown_family_names_what_was_found(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"addition_embed_type": "image"}))
    with pytest.raises(BaseModelError, match="KandinskyV22Pipeline.*Supported families"):
        check_sdxl_folder(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_but_absent():
    with pytest.raises(BaseModelError, match="CUDA is not available.*base_model.device: auto"):
        resolve_device("cuda")


def test_bf16_falls_back_with_a_warning(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_dtype("bf16", torch.device("cpu")) == torch.float32
    assert "fp32" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with caplog.at_level(logging.WARNING):
        assert resolve_dtype("bf16", torch.device("cuda")) == torch.float16
    assert "bf16 is not supported" in caplog.text


def test_local_rank_picks_the_process_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3)


def test_sd15_env_parameters_validate():
    from ziplora_pipeline import settings
    from ziplora_pipeline.kedro_glue.params import validate_parameters

    from .test_config import CONF

    params = settings.CONFIG_LOADER_CLASS(conf_source=str(CONF), env="sd15", **settings.CONFIG_LOADER_ARGS)["parameters"]
    cfg = validate_parameters(params)
    assert cfg["data_prep"].resolution == 512
    assert cfg["base_model"].pretrained_model_name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert cfg["subject"].lora.mixed_precision == "fp16" and cfg["merge"].steps == 100


@pytest.mark.slow
def test_whole_job_on_the_sd15_miniature(tmp_path):
    """`kedro run` (all stages) on an SD-1.5-shaped miniature: only parameters differ from SDXL."""
    import shutil

    import pandas as pd

    from ziplora_pipeline.sample_data import write_sample_data

    from .conftest import PROJECT_ROOT
    from .test_full_job import _kedro

    shutil.copytree(PROJECT_ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    (tmp_path / "src").mkdir()
    write_sample_data(tmp_path / "data" / "01_raw", size=128)
    # A random-weight SD-1.5-shaped miniature built at first use, tiny random encoders (their scores mean nothing;
    # the report says so): this test is about the code path, not the pictures.
    params = ("base_model.pretrained_model_name_or_path=data/06_models/miniature_sd15,base_model.miniature_family=sd,"
              "base_model.miniature_seed=0,evaluation.clip.name_or_path=data/06_models/tiny_clip,"
              "evaluation.clip.build_seed=0,evaluation.dino.name_or_path=data/06_models/tiny_dino,"
              "evaluation.dino.build_seed=0,generation.num_inference_steps=2,"
              "subject.lora.steps=5,style.lora.steps=5,joint.lora.steps=5,merge.steps=5")
    _kedro(tmp_path, "run", "--params", params)
    model_index = json.loads((tmp_path / "data/06_models/miniature_sd15/model_index.json").read_text())
    assert model_index["_class_name"] == "StableDiffusionPipeline"
    [lora] = (tmp_path / "data/06_models/ziplora/ziplora.safetensors").glob("*/ziplora.safetensors")
    from ziplora_pipeline.datasets.lora_safetensors import read_lora_file

    assert read_lora_file(str(lora)).state_dict  # a merged LoRA was exported
    [csv] = (tmp_path / "data/08_reporting/evaluation/metrics.csv").glob("*/metrics.csv")
    table = pd.read_csv(csv).set_index("method")
    assert table.loc["subject_lora", "subject_fidelity"] == pytest.approx(1.0, abs=1e-6)
    assert table.loc["ziplora", ["subject_fidelity", "style_fidelity"]].notna().all()
