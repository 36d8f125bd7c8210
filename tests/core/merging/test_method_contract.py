"""What every registered merge method must do (core/merging/registry.py), checked per kind on the miniature model:
its options reject an unknown key by name, it builds from the two LoRAs with a cost, its file (if it has one) is a
LoRA plain diffusers loads, and on a pipeline it changes the UNet inside ``applied`` and restores it exactly after.
A new kind gets these checks by being registered; the parameters file must use every kind."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest
import torch

from tests.helpers import default_methods
from ziplora_pipeline.core.config_utils import ConfigError
from ziplora_pipeline.core.diffusion.base_model import load_base_pipeline
from ziplora_pipeline.core.lora.io import LoraFile
from ziplora_pipeline.core.merging.method import MergeMethod, MethodAssets
from ziplora_pipeline.core.merging.registry import KINDS, method_class, parse_method
from ziplora_pipeline.datasets.lora_safetensors import LoraSafetensorsDataset


def _entry(kind: str) -> tuple[str, dict]:
    """The parameters file's first entry of ``kind`` (its name and options)."""
    for name, entry in default_methods().items():
        if (entry or {}).get("kind", name) == kind:
            return name, {k: v for k, v in (entry or {}).items() if k not in ("kind", "enabled")}
    pytest.fail(f"conf/base/parameters_merge.yml has no merge.methods entry of kind '{kind}'")


def test_every_parameters_entry_is_a_registered_kind_and_every_kind_is_used():
    kinds = {(e or {}).get("kind", n) for n, e in default_methods().items()}
    assert kinds == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_is_one_class_in_its_own_file(kind):
    cls = method_class(kind)
    module, name = KINDS[kind].split(":")
    assert issubclass(cls, MergeMethod) and cls.kind == kind and cls.__name__ == name
    assert inspect.getmodule(cls) is importlib.import_module(f"ziplora_pipeline.core.merging.{module}")
    methods_in_file = [c for _, c in inspect.getmembers(inspect.getmodule(cls), inspect.isclass)
                       if issubclass(c, MergeMethod) and c is not MergeMethod and c.__module__ == cls.__module__]
    assert methods_in_file == [cls]
    assert dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unknown_option_is_named(kind):
    name, _ = _entry(kind)
    with pytest.raises(ConfigError, match=rf"Unknown parameter 'merge.methods.{name}.not_an_option'"):
        parse_method(name, {"kind": kind, "not_an_option": 1})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_builds_applies_and_restores(kind, tmp_path, base_cfg, trained, unet_probe):
    name, options = _entry(kind)
    method = parse_method(name, {"kind": kind, **options})
    lora, cost = method.build(trained["ctx"])
    assert isinstance(cost, dict)
    if kind != "base":
        assert cost["file_mb"] > 0, cost  # what a user ships
    if method.built and lora is not None:
        assert isinstance(lora, LoraFile)
        if kind not in ("lora",):
            assert cost["merge_seconds"] >= 0 and cost["memory_kind"], cost
        path = tmp_path / f"{name}.safetensors"  # as the catalog saves it; plain diffusers loads it
        LoraSafetensorsDataset(filepath=str(path)).save(lora)
        plain = load_base_pipeline(base_cfg)
        before = unet_probe(plain.unet)
        plain.load_lora_weights(str(path), adapter_name=name)
        assert (unet_probe(plain.unet) - before).abs().max() > 1e-5
    else:
        assert lora is None
    assets = MethodAssets({name: lora} if lora is not None else {}, trained["assets"].sources)
    pipe = load_base_pipeline(base_cfg)
    before = unet_probe(pipe.unet)
    with method.applied(pipe, assets):
        inside = unet_probe(pipe.unet)
    assert torch.isfinite(inside).all()
    if kind == "base":
        torch.testing.assert_close(inside, before, atol=0, rtol=0)
    else:
        assert (inside - before).abs().max() > 1e-5, f"{name} changed nothing"
    torch.testing.assert_close(unet_probe(pipe.unet), before, atol=0, rtol=0)  # restored exactly
