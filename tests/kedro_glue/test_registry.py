"""The MLflow Model Registry (kedro_glue/hooks/registry.py) and the served model's request checks (serving.py).
The served model answering over HTTP: tests/e2e/test_full_job.py."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset, Version

from PIL import Image

from ziplora_pipeline.core.merging.model_card import merge_model_card
from ziplora_pipeline.datasets import ImageSetDataset, TextDataset
from ziplora_pipeline.kedro_glue.hooks.registry import ALIAS, ModelRegistryHooks, registered_name
from ziplora_pipeline.serving import check_size, prompts_of

FILES = ("ziplora_weights", "ziplora_kohya_weights", "ziplora_mergers", "ziplora_sample_image", "ziplora_model_card",
         "subject_lora_weights", "style_lora_weights")
CARD = merge_model_card("ziplora", "ziplora.safetensors", "ziplora_kohya.safetensors",
                        "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", {"prompt": "a sks robot", "token": "sks"},
                        {"prompt": "a house in zwx style", "token": "zwx"})


def _catalog(tmp_path, version: str) -> DataCatalog:
    datasets = {n: TextDataset(filepath=str(tmp_path / n / f"{n}.txt"), version=Version(None, version)) for n in FILES}
    datasets["ziplora_sample_image"] = ImageSetDataset(filepath=str(tmp_path / "sample"), version=Version(None, version))
    params = {"data_prep": {"subject": {"folder": "robot"}, "style": {"folder": "sketch"}},
              "generation": {"seeds": [100], "num_inference_steps": 20, "guidance_scale": 4.0, "resolution": 64},
              "base_model": {"pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0"}}
    return DataCatalog({**datasets, **{f"params:{k}": MemoryDataset(v) for k, v in params.items()}})


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def _merge_run(tmp_path, hooks, version: str, sources: str) -> None:
    """One merge run: the two source LoRAs (version ``sources``) and this run's exports, then the card's save."""
    import mlflow

    catalog = _catalog(tmp_path, version)
    for name in FILES:
        if name in ("subject_lora_weights", "style_lora_weights"):
            if not (tmp_path / name / f"{name}.txt" / sources).exists():
                _catalog(tmp_path, sources).save(name, sources)
        elif name == "ziplora_sample_image":
            catalog.save(name, {"sample": Image.new("RGB", (8, 8), "red")})
        else:
            catalog.save(name, CARD if name == "ziplora_model_card" else version)
    hooks.after_catalog_created(_catalog(tmp_path, None))
    with mlflow.start_run():
        hooks.after_dataset_saved("ziplora_model_card", None, None)


def test_each_merge_adds_a_version_tagged_with_its_sources_and_moves_the_alias(tmp_path, tracking):
    hooks = ModelRegistryHooks()
    _merge_run(tmp_path, hooks, "2026-01-01T00.00.00.000Z", "2025-12-01T00.00.00.000Z")
    _merge_run(tmp_path, hooks, "2026-01-02T00.00.00.000Z", "2025-12-02T00.00.00.000Z")  # other source LoRAs
    name = registered_name("robot", "sketch")
    assert name == "ziplora-robot-x-sketch"
    first, second = sorted(tracking.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert (int(first.version), int(second.version)) == (1, 2)  # a new version, the first kept as it was
    assert first.tags["subject_lora_version"] == "2025-12-01T00.00.00.000Z"
    assert second.tags["subject_lora_version"] == second.tags["style_lora_version"] == "2025-12-02T00.00.00.000Z"
    assert second.tags["ziplora_version"] == "2026-01-02T00.00.00.000Z"
    assert second.tags["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"  # a hub id stays as given
    assert str(tracking.get_model_version_by_alias(name, ALIAS).version) == "2"
    assert tracking.get_registered_model(name).tags == {"subject": "robot", "style": "sketch"}
    import mlflow

    files = {a.path for a in mlflow.artifacts.list_artifacts(f"models:/{name}/1") if a.path}
    assert {"artifacts", "MLmodel"} <= {f.split("/")[0] for f in files}
    card = mlflow.artifacts.download_artifacts(f"models:/{name}/1/artifacts/README.md", dst_path=str(tmp_path / "dl"))
    text = open(card).read()
    assert "`subject_lora_weights`, version `2025-12-01T00.00.00.000Z`" in text
    assert "![a sks robot in zwx style](sample.png)" in text
    from huggingface_hub import ModelCard

    assert ModelCard(text).data.widget == [{"text": "a sks robot in zwx style", "output": {"url": "sample.png"}}]
    inside = {a.path.rsplit("/", 1)[-1] for a in mlflow.artifacts.list_artifacts(f"models:/{name}/1/artifacts")}
    assert {"README.md", "sample.png"} <= inside  # the widget's image beside the card
    model = mlflow.models.get_model_info(f"models:/{name}@{ALIAS}")
    assert [p["name"] for p in model.signature.params.to_dict()][:2] == ["seed", "num_inference_steps"]
    assert model.signature.params.to_dict()[0]["default"] == 100  # the run's first generation seed


def test_a_merge_without_a_tracked_run_registers_nothing(tmp_path, tracking):
    hooks = ModelRegistryHooks()
    hooks.after_catalog_created(_catalog(tmp_path, None))
    hooks.after_dataset_saved("ziplora_model_card", None, None)  # no active run: tracking off for this pipeline
    assert tracking.search_registered_models() == []


@pytest.mark.parametrize("request_input, prompts", [
    (["a sks robot"], ["a sks robot"]), ("a sks robot", ["a sks robot"]),
    (pd.DataFrame({"prompt": ["a", "b"]}), ["a", "b"]), ({"prompt": ["a"]}, ["a"])])
def test_prompts_of_a_request(request_input, prompts):
    assert prompts_of(request_input) == prompts


@pytest.mark.parametrize("request_input, message", [
    ([], "No prompts"), (pd.DataFrame({"prompt": []}), "No prompts"), ([""], "non-empty string"),
    (pd.DataFrame({"a": ["x"], "b": ["y"]}), "'prompt' column")])
def test_a_bad_request_is_named(request_input, message):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=message) as err:
        prompts_of(request_input)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"  # the scoring server answers 400, not 500


@pytest.mark.parametrize("height, width", [(50, 64), (0, 64), (64, 4096), (-32, 64)])
def test_a_size_the_base_model_cannot_make_is_refused(height, width):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="cannot be made by this base model: use a multiple of 32"):
        check_size(height, width, 32, 1024)
    check_size(1024, 768, 32, 1024)  # SDXL's own sizes pass
