"""A trained LoRA saved through the catalog dataset reloads bit-exact with plain diffusers.

Tolerance: exact (``torch.equal``) for tensors and for UNet outputs; the reloaded adapter runs
the same fp32 ops in the same order as the in-memory one.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from ziplora_pipeline.core.lora.io import LORA_ADAPTER_METADATA_KEY, load_lora_file
from ziplora_pipeline.core.lora.training import ATTENTION_PROJECTIONS, LoraTrainingConfig, train_lora
from ziplora_pipeline.datasets import LoraSafetensorsDataset

ADAPTER = "subject"


def _lora_scaling(unet, adapter: str) -> set[float]:
    """The peft scale (alpha / r) every LoRA layer of ``adapter`` applies."""
    return {m.scaling[adapter] for m in unet.modules() if hasattr(m, "scaling") and adapter in m.scaling}


@pytest.fixture(params=[(4, None), (4, 8)], ids=["alpha=rank", "rank4-alpha8"])
def trained(request, fresh_pipe, encode, tmp_path):
    """A LoRA trained for 3 steps (lr high enough that B is clearly non-zero), saved via the dataset."""
    rank, alpha = request.param
    pipe = fresh_pipe()
    cfg = LoraTrainingConfig(rank=rank, alpha=alpha, steps=3, learning_rate=1e-2, checkpoint_every=0)
    result = train_lora(pipe, encode(pipe), cfg, ADAPTER)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    LoraSafetensorsDataset(filepath=str(path)).save(result.lora)
    return pipe, cfg, result, path


def test_file_tensors_equal_the_trained_adapter(trained):
    pipe, cfg, result, path = trained
    adapter_state = get_peft_model_state_dict(pipe.unet, adapter_name=ADAPTER)
    with safe_open(str(path), framework="pt") as f:
        file_state = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    assert set(file_state) == {f"unet.{k}" for k in adapter_state}
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in file_state)
    for k, v in adapter_state.items():
        assert torch.equal(file_state[f"unet.{k}"], v.detach().cpu()), k
    assert any(v.abs().max() > 0 for k, v in file_state.items() if "lora_B" in k), "B still zero: nothing trained"
    # The alpha survives in the header, under diffusers' key, prefixed with "unet.".
    packed = json.loads(metadata[LORA_ADAPTER_METADATA_KEY])
    assert packed["unet.r"] == cfg.rank
    assert packed["unet.lora_alpha"] == cfg.lora_alpha
    assert sorted(packed["unet.target_modules"]) == sorted(ATTENTION_PROJECTIONS)


def test_reloads_bit_exact_with_plain_load_lora_weights(trained, fresh_pipe, unet_probe):
    pipe, cfg, _, path = trained
    expected = unet_probe(pipe.unet)

    fresh = fresh_pipe()
    base_out = unet_probe(fresh.unet)
    fresh.load_lora_weights(str(path), adapter_name=ADAPTER)

    assert _lora_scaling(fresh.unet, ADAPTER) == {cfg.lora_alpha / cfg.rank}
    assert torch.equal(unet_probe(fresh.unet), expected)
    assert not torch.equal(base_out, expected), "the LoRA should change the UNet output"
    loaded_state = get_peft_model_state_dict(fresh.unet, adapter_name=ADAPTER)
    trained_state = get_peft_model_state_dict(pipe.unet, adapter_name=ADAPTER)
    assert loaded_state.keys() == trained_state.keys()
    assert all(torch.equal(loaded_state[k], trained_state[k]) for k in trained_state)


def test_in_memory_load_lora_file_matches_too(trained, fresh_pipe, unet_probe):
    """``load_lora_file`` (used between nodes, no file) keeps alpha the same way."""
    pipe, cfg, result, _ = trained
    fresh = fresh_pipe()
    load_lora_file(fresh, result.lora, ADAPTER)
    assert _lora_scaling(fresh.unet, ADAPTER) == {cfg.lora_alpha / cfg.rank}
    assert torch.equal(unet_probe(fresh.unet), unet_probe(pipe.unet))


@pytest.mark.parametrize("trained", [(4, 8)], indirect=True, ids=["rank4-alpha8"])
def test_without_metadata_diffusers_would_use_the_wrong_scale(trained, fresh_pipe, unet_probe, tmp_path):
    """Shows the metadata matters: the same tensors without it reload at scale 1 (alpha = rank)."""
    pipe, cfg, result, _ = trained
    assert cfg.lora_alpha / cfg.rank == 2.0
    bare = tmp_path / "bare" / "pytorch_lora_weights.safetensors"
    bare.parent.mkdir()
    save_file(result.lora.state_dict, str(bare), metadata={"format": "pt"})

    fresh = fresh_pipe()
    fresh.load_lora_weights(str(bare), adapter_name=ADAPTER)
    assert _lora_scaling(fresh.unet, ADAPTER) == {1.0}
    wrong, right = unet_probe(fresh.unet), unet_probe(pipe.unet)
    # Not a rounding difference: the LoRA's contribution is halved.
    assert (wrong - right).abs().max() > 1e-4
