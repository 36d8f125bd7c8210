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


@pytest.mark.parametrize("env", [None, "sdxl", "sd15", "grid", "bench"])
def test_every_environment_passes_the_type_checks(env):
    validate_parameters(_loader(env)["parameters"])


@pytest.mark.parametrize("key, value, expected", [
    ("steps", 2.5, r"'merge.steps' must be an integer, got 2.5 \(float\)"),
    ("steps", True, r"'merge.steps' must be an integer, got True \(bool\)"),
    ("steps", "abc", r"'merge.steps' must be an integer, got 'abc' \(str\)"),
    ("learning_rate", float("nan"), r"'merge.learning_rate' must be a number, got nan"),
    ("lambda_overlap", float("inf"), r"'merge.lambda_overlap' must be a number, got inf"),
    ("teacher_pool", 4.0, r"'merge.teacher_pool' must be an integer or null, got 4.0"),
    ("timestep_range", [0, "x"], r"'merge.timestep_range' must be a list of 2 \(an integer, an integer\)"),
    ("normalize_recon", "yes", r"'merge.normalize_recon' must be true or false, got 'yes'"),
])
def test_a_parameter_of_the_wrong_type_is_named_with_what_was_expected(key, value, expected):
    """`--params merge.steps=2.5` used to fail inside the merge node with TypeError after other nodes had saved;
    `merge.steps=true` ran one step. Now the schema check names the key, the value and the type expected."""
    from ziplora_pipeline.core.config_utils import ConfigError

    params = _loader(None)["parameters"]
    params["merge"] = {**params["merge"], key: value}
    with pytest.raises(ConfigError, match=expected + r".*Fix it in conf/\*/parameters\*.yml or in --params"):
        validate_parameters(params)
    params["merge"][key] = {"steps": 3, "learning_rate": 0.02, "lambda_overlap": 0, "teacher_pool": None,
                            "timestep_range": [10, 900], "normalize_recon": False}[key]
    validate_parameters(params)  # the right type passes (an int where a number is asked, too)
