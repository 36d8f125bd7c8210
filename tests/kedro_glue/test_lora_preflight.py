"""Preflight of the LoRA files a run reads from disk (kedro_glue/preflight.check_lora_files): each bad file is
named with its catalog entry, its path and what to do, before any node runs; the same LoRA as subject and style
is refused."""

from __future__ import annotations

import pytest
import torch
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline

from ziplora_pipeline.core.lora.factors import LoraFactors
from ziplora_pipeline.core.merging.export import factors_to_lora_file
from ziplora_pipeline.datasets.lora_safetensors import LoraSafetensorsDataset
from ziplora_pipeline.kedro_glue.preflight import LoraInputError, check_lora_files

PIPE = Pipeline([Node(lambda a, b: None, ["subject_lora_weights", "style_lora_weights"], None, name="merge_like")])


@pytest.fixture(scope="module")
def layer(mini_model_path):
    """One attention projection of the miniature UNet: its path and (out, in)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(mini_model_path, subfolder="unet")
    path, module = next((n, m) for n, m in unet.named_modules() if n.endswith("attn1.to_q"))
    return path, module.out_features, module.in_features


def _lora(layer, seed=0, value=None, shape=None):
    path, out, n = layer
    out, n = shape or (out, n)
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(4, n, generator=g), torch.randn(out, 4, generator=g)
    if value is not None:
        A[0, 0] = value
    return factors_to_lora_file({path: LoraFactors(A, B, 1.0)})


def _catalog(tmp_path, subject, style):
    entries = {}
    for name, lora in (("subject_lora_weights", subject), ("style_lora_weights", style)):
        path = tmp_path / f"{name}.safetensors"
        if isinstance(lora, bytes):
            path.write_bytes(lora)
        else:
            LoraSafetensorsDataset(filepath=str(path)).save(lora)
        entries[name] = LoraSafetensorsDataset(filepath=str(path))
    return DataCatalog(entries)


def _params(mini_model_path):
    return {"base_model": {"pretrained_model_name_or_path": str(mini_model_path), "device": "cpu"}}


def test_two_good_loras_pass(tmp_path, layer, mini_model_path):
    check_lora_files(PIPE, _catalog(tmp_path, _lora(layer, 0), _lora(layer, 1)), _params(mini_model_path))


@pytest.mark.parametrize("bad, message", [
    (b"not a safetensors file", r"'style_lora_weights' \(.*style_lora_weights.safetensors\) cannot be used"),
    ("nan", r"'style_lora_weights' .* cannot be used: .*(non-finite|NaN)"),
    ("shape", r"'style_lora_weights' .* cannot be used: .*does not fit this base model"),
])
def test_a_bad_lora_file_is_named_with_its_entry_path_and_fix(tmp_path, layer, mini_model_path, bad, message):
    style = {"nan": lambda: _lora(layer, 1, value=float("nan")),
             "shape": lambda: _lora(layer, 1, shape=(layer[1] * 2, layer[2] * 3))}.get(bad, lambda: bad)()
    with pytest.raises(LoraInputError, match=message) as err:
        check_lora_files(PIPE, _catalog(tmp_path, _lora(layer, 0), style), _params(mini_model_path))
    assert "Re-export the file, use a LoRA trained on this base model, or point the catalog entry" in str(err.value)


def test_the_same_lora_as_subject_and_style_is_refused(tmp_path, layer, mini_model_path):
    same = _lora(layer, 0)
    with pytest.raises(LoraInputError, match=r"subject_lora_weights .* and style_lora_weights .* are the same LoRA "
                                             r"\(identical tensors\).*kedro run --pipelines style_lora"):
        check_lora_files(PIPE, _catalog(tmp_path, same, same), _params(mini_model_path))


def test_loras_the_run_makes_itself_are_not_read(tmp_path, layer, mini_model_path):
    """A LoRA produced inside the run (kedro run: trained first) is not an input: nothing to check or load."""
    made = Pipeline([Node(lambda: None, None, "style_lora_weights", name="train"), *PIPE.nodes])
    catalog = _catalog(tmp_path, _lora(layer, 0), b"garbage that would fail")
    check_lora_files(made, catalog, _params(mini_model_path))
