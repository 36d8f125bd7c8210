"""The miniature SDXL: written with save_pretrained, reloaded with from_pretrained, unchanged;
and the base-model folder check rejects what is not SDXL with a clear error."""

from __future__ import annotations

import json

import pytest
import torch

from ziplora_pipeline.core.diffusion.base_model import (BaseModelConfig, BaseModelError, check_sdxl_folder,
                                                        ensure_base_model, load_base_pipeline)


def _assert_state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module, what: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"{what}: different parameter names"
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{what}.{k} differs after save/from_pretrained"


def test_miniature_round_trips_through_from_pretrained(mini_model_path, unet_probe):
    from diffusers import StableDiffusionXLPipeline

    from ziplora_pipeline.core.diffusion.miniature import MiniatureSpec, build_miniature_sdxl

    built = build_miniature_sdxl(MiniatureSpec())  # same spec and seed as the session's folder
    loaded = StableDiffusionXLPipeline.from_pretrained(mini_model_path)

    assert type(loaded) is StableDiffusionXLPipeline
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _assert_state_dicts_equal(getattr(built, name), getattr(loaded, name), name)
    assert torch.equal(unet_probe(built.unet), unet_probe(loaded.unet))
    # Tokenizers and the scheduler survive too (same ids, same SDXL schedule).
    prompt = "a photo of sks robot"
    assert built.tokenizer(prompt).input_ids == loaded.tokenizer(prompt).input_ids
    assert built.tokenizer_2(prompt).input_ids == loaded.tokenizer_2(prompt).input_ids
    assert type(built.scheduler) is type(loaded.scheduler)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(built.scheduler.config) == public(loaded.scheduler.config)
    # SDXL contracts the rest of the project relies on.
    assert loaded.unet.config.addition_embed_type == "text_time"
    assert loaded.unet.config.cross_attention_dim == (
        loaded.text_encoder.config.hidden_size + loaded.text_encoder_2.config.hidden_size)


def test_load_base_pipeline_is_frozen_and_deterministic(base_cfg, unet_probe):
    a, b = load_base_pipeline(base_cfg), load_base_pipeline(base_cfg)
    assert not any(p.requires_grad for m in (a.unet, a.vae, a.text_encoder, a.text_encoder_2)
                   for p in m.parameters())
    assert torch.equal(unet_probe(a.unet), unet_probe(b.unet))


def test_check_sdxl_folder_accepts_the_miniature(mini_model_path):
    assert check_sdxl_folder(mini_model_path) == "sdxl"


def _fake_folder(folder, pipeline_class: str, addition_embed_type):
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel",
                                                             "addition_embed_type": addition_embed_type}))
    return folder


@pytest.mark.parametrize("pipeline_class", ["StableDiffusion3Pipeline", "KandinskyV22Pipeline", "FluxPipeline"])
def test_check_sdxl_folder_rejects_other_pipelines_naming_what_it_found(tmp_path, pipeline_class):
    folder = _fake_folder(tmp_path / "other", pipeline_class, None)
    with pytest.raises(BaseModelError) as err:
        check_sdxl_folder(folder)
    msg = str(err.value)
    assert str(folder) in msg and pipeline_class in msg and "Unsupported base model" in msg
    assert "StableDiffusionXLPipeline" in msg  # says what would work


def test_check_sdxl_folder_tells_sd15_from_sdxl(tmp_path):
    """SD 1.x/2.x is a supported family of its own (conf/sd15); a mixed-up folder is not."""
    assert check_sdxl_folder(_fake_folder(tmp_path / "sd15", "StableDiffusionPipeline", None)) == "sd"
    with pytest.raises(BaseModelError, match="StableDiffusionPipeline .*addition_embed_type='text_time'"):
        check_sdxl_folder(_fake_folder(tmp_path / "mixed", "StableDiffusionPipeline", "text_time"))


def test_check_sdxl_folder_rejects_xl_class_without_text_time_unet(tmp_path):
    folder = tmp_path / "odd"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    (folder / "unet" / "config.json").write_text(json.dumps({"addition_embed_type": None}))
    with pytest.raises(BaseModelError, match="addition_embed_type=None"):
        check_sdxl_folder(folder)


def test_check_sdxl_folder_rejects_folder_without_model_index(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(BaseModelError) as err:
        check_sdxl_folder(tmp_path)
    assert "no model_index.json" in str(err.value) and str(tmp_path) in str(err.value)


def test_load_base_pipeline_reports_unsupported_folder(tmp_path):
    folder = _fake_folder(tmp_path / "sd3", "StableDiffusion3Pipeline", None)
    cfg = BaseModelConfig(pretrained_model_name_or_path=str(folder), miniature_seed=None, device="cpu")
    with pytest.raises(BaseModelError, match="StableDiffusion3Pipeline"):
        load_base_pipeline(cfg)


def test_missing_local_path_without_miniature_seed_is_an_error(tmp_path):
    missing = tmp_path / "nowhere" / "model"
    cfg = BaseModelConfig(pretrained_model_name_or_path=str(missing), miniature_seed=None)
    with pytest.raises(BaseModelError, match="neither an existing folder nor a hub id"):
        ensure_base_model(cfg)
    assert not missing.exists()
