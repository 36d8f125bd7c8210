"""The project's configuration loads as Kedro loads it and passes the parameter schema."""

from __future__ import annotations

import shutil

import pytest
from kedro.config import OmegaConfigLoader

from tests.helpers import PROJECT_ROOT
from ziplora_pipeline import settings
from ziplora_pipeline.core.lora.training import ATTENTION_PROJECTIONS
from ziplora_pipeline.kedro_glue.params import validate_parameters

CONF = PROJECT_ROOT / "conf"


def _loader(env: str | None) -> OmegaConfigLoader:
    """The config loader exactly as settings.py configures it for ``kedro run --env <env>``."""
    return settings.CONFIG_LOADER_CLASS(conf_source=str(CONF), env=env, **settings.CONFIG_LOADER_ARGS)


def test_base_parameters_validate():
    cfg = validate_parameters(_loader(None)["parameters"])
    assert cfg["data_prep"].resolution == 64
    assert cfg["subject"].lora.rank == 8 and cfg["style"].lora.rank == 8
    assert cfg["base_model"].miniature_seed is None  # the committed toy-world model, never a random one
    assert cfg["base_model"].pretrained_model_name_or_path == "data/06_models/toy_sdxl"


def test_sdxl_env_has_the_papers_settings_and_keeps_base_keys():
    params = _loader("sdxl")["parameters"]
    cfg = validate_parameters(params)
    for concept in ("subject", "style"):
        lora = cfg[concept].lora
        assert lora.rank == 64 and lora.lora_alpha == 64
        assert lora.learning_rate == pytest.approx(5e-5, rel=0, abs=0)
        assert lora.steps == 1000 and lora.batch_size == 1
        assert lora.mixed_precision == "bf16" and lora.gradient_checkpointing is True
        # Soft merge: keys conf/sdxl does not mention survive from conf/base.
        assert lora.target_modules == ATTENTION_PROJECTIONS
        assert lora.max_grad_norm == 1.0 and lora.cache_latents is True
    assert cfg["subject"].lora.seed == 0 and cfg["style"].lora.seed == 1
    assert cfg["data_prep"].resolution == 1024
    assert cfg["data_prep"].subject.folder == "robot" and cfg["data_prep"].style.template == "a {noun} in {token} style"
    base = cfg["base_model"]
    assert base.pretrained_model_name_or_path == "stabilityai/stable-diffusion-xl-base-1.0"
    assert base.miniature_seed is None and base.vae == "madebyollin/sdxl-vae-fp16-fix"
    assert base.local_files_only is False and base.revision is None  # from conf/base


def test_soft_merge_is_what_keeps_them():
    """Guard for settings.py: without ``merge_strategy: soft`` conf/sdxl would drop base keys."""
    args = {k: v for k, v in settings.CONFIG_LOADER_ARGS.items() if k != "merge_strategy"}
    params = OmegaConfigLoader(conf_source=str(CONF), env="sdxl", **args)["parameters"]
    assert "target_modules" not in params["subject"]["lora"]


def test_mlflow_tracking_db_belongs_to_the_project_being_run(tmp_path, monkeypatch):
    """``${project_root:}`` is the running project's root, not where the package's source lives."""
    project = tmp_path / "copy"
    shutil.copytree(CONF, project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project / "pyproject.toml")
    (project / "data").mkdir()
    monkeypatch.chdir(project / "data")  # anywhere inside the project, like `kedro run`
    loader = settings.CONFIG_LOADER_CLASS(conf_source=str(project / "conf"), **settings.CONFIG_LOADER_ARGS)
    loader.config_patterns["mlflow"] = ["mlflow*", "mlflow*/**"]  # what kedro-mlflow's hook adds
    mlflow_conf = loader["mlflow"]
    root = project.resolve().as_posix()
    assert mlflow_conf["server"]["mlflow_tracking_uri"] == f"sqlite:///{root}/mlflow.db"
    assert mlflow_conf["tracking"]["experiment"]["create_experiment_kwargs"]["artifact_location"] == f"{root}/mlruns"
    assert mlflow_conf["tracking"]["params"]["dict_params"]["flatten"] is True
