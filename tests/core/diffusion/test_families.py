"""Model families: an SD-1.5-shaped miniature runs the same code; unsupported models and devices
get clear errors; LoRAs of one family are refused for another."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from ziplora_pipeline.core.diffusion.base_model import (BaseModelConfig, BaseModelError, check_sdxl_folder,
                                                        load_base_pipeline, model_family, resolve_device, resolve_dtype)
from ziplora_pipeline.core.diffusion.sdxl import encode_concept
from ziplora_pipeline.core.lora.io import LoraFormatError, check_family
from ziplora_pipeline.core.lora.training import LoraTrainingConfig, train_lora


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
    from ziplora_pipeline.core.diffusion.sdxl import training_scheduler
    from ziplora_pipeline.core.lora.factors import unet_lora_factors
    from ziplora_pipeline.core.merging.optimise import MergeConfig, ziplora_merge

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
    from tests.kedro_glue.test_config import CONF
    from ziplora_pipeline import settings
    from ziplora_pipeline.kedro_glue.params import validate_parameters

    params = settings.CONFIG_LOADER_CLASS(conf_source=str(CONF), env="sd15", **settings.CONFIG_LOADER_ARGS)["parameters"]
    cfg = validate_parameters(params)
    assert cfg["data_prep"].resolution == 512
    assert cfg["base_model"].pretrained_model_name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert cfg["subject"].lora.mixed_precision == "fp16" and cfg["merge"].config.steps == 100
