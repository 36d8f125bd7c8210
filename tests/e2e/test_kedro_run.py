"""End to end: ``kedro run`` in a copy of the project, as a user runs it (a subprocess whose working
directory is the project; ``kedro`` bootstraps the project from there, which needs a ``src/``
folder: the copy has an empty one and the package comes from the installed, editable source).

Checks the versioned LoRA files (loadable with plain diffusers), the MLflow run in the *copy's*
``mlflow.db``, that ``--pipelines subject_lora`` re-trains only the subject LoRA, and that a bad
``--params`` fails before any node runs.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import PROJECT_ROOT, copy_project, kedro

pytestmark = pytest.mark.slow

STEPS = 3
PIPELINES = "data_prep,subject_lora,style_lora"  # the training spine (merge has its own tests)
LORA_FILE = "pytorch_lora_weights.safetensors"


def _versions(project: Path, concept: str) -> list[str]:
    folder = project / "data" / "06_models" / f"{concept}_lora" / LORA_FILE
    return sorted(p.parent.name for p in folder.glob(f"*/{LORA_FILE}")) if folder.is_dir() else []


def _lora_path(project: Path, concept: str, version: str) -> Path:
    return project / "data" / "06_models" / f"{concept}_lora" / LORA_FILE / version / LORA_FILE


@pytest.fixture(scope="module")
def project(tmp_path_factory, mini_model_path) -> Path:
    return copy_project(tmp_path_factory.mktemp("kedro_project"), mini_model_path)


@pytest.fixture
def fresh_project(tmp_path, mini_model_path) -> Path:
    """A project that has never run: only the raw sample folders and the base model."""
    return copy_project(tmp_path / "fresh", mini_model_path)


def _mlflow_runs(project: Path) -> int:
    db = project / "mlflow.db"
    if not db.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@pytest.fixture(scope="module")
def first_run(project) -> dict:
    kedro(project, "run", "--pipelines", PIPELINES, "--params", f"subject.lora.steps={STEPS},style.lora.steps={STEPS}")
    return {"subject": _versions(project, "subject"), "style": _versions(project, "style")}


def _runs_tagged_in(db: Path, version: str) -> int:
    """MLflow runs whose run_id tag is ``version`` in an existing database (read-only, no mlflow)."""
    if not db.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return con.execute("SELECT COUNT(*) FROM tags WHERE key = 'run_id' AND value = ?", (version,)).fetchone()[0]


def _client(project: Path):
    from mlflow.tracking import MlflowClient

    db = project / "mlflow.db"
    assert db.is_file(), "the MLflow database must be in the project that ran"
    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def _runs(project: Path):
    client = _client(project)
    exp = client.get_experiment_by_name("ziplora_pipeline")
    assert exp is not None
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # two adapters on purpose
def test_run_writes_one_version_of_each_lora_loadable_by_diffusers(project, first_run, fresh_pipe, unet_probe):
    assert len(first_run["subject"]) == 1 and first_run["subject"] == first_run["style"]  # one run = one version
    version = first_run["subject"][0]
    pipe = fresh_pipe()
    before = unet_probe(pipe.unet)
    for concept in ("subject", "style"):
        path = _lora_path(project, concept, version)
        pipe.load_lora_weights(str(path), adapter_name=concept)
        assert concept in pipe.unet.peft_config
    pipe.set_adapters(["subject", "style"])
    assert not torch.equal(unet_probe(pipe.unet), before)
    # the other versioned outputs of the run
    for rel in ("03_primary/subject/images", "03_primary/style/prompt.json",
                "08_reporting/subject_lora/training_log.json", "08_reporting/style_lora/loss_curve.png"):
        assert (project / "data" / rel / version).is_dir(), rel


def test_run_is_tracked_in_the_projects_mlflow_db(project, first_run):
    client, runs = _runs(project)
    assert len(runs) == 1
    run = runs[0]
    version = first_run["subject"][0]
    assert run.data.tags.get("run_id") == version  # MLflow run <-> data/**/<version>/
    params = run.data.params
    assert params["subject.lora.rank"] == "8" and params["style.lora.rank"] == "8"
    assert params["subject.lora.steps"] == str(STEPS)
    assert params["data_prep.resolution"] == "64"
    for concept in ("subject", "style"):
        history = client.get_metric_history(run.info.run_id, f"{concept}/loss")
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "loras/subject_lora_weights")}
    logged |= {a.path for a in client.list_artifacts(run.info.run_id, "loras/style_lora_weights")}
    assert logged == {f"loras/subject_lora_weights/{LORA_FILE}", f"loras/style_lora_weights/{LORA_FILE}"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "training")} >= {
        "training/subject_training_log", "training/style_loss_curve"}
    # artifacts live in the project copy, and the source tree's database was not touched
    assert run.info.artifact_uri.startswith((project / "mlruns").as_uri())
    artifact = project / "mlruns" / run.info.run_id / "artifacts" / "loras" / "subject_lora_weights" / LORA_FILE
    saved = load_file(str(_lora_path(project, "subject", version)))
    assert all(torch.equal(saved[k], v) for k, v in load_file(str(artifact)).items())
    assert _runs_tagged_in(project / "mlflow.db", version) == 1
    assert _runs_tagged_in(PROJECT_ROOT / "mlflow.db", version) == 0, "the copy's run went to the source tree's db"


def test_subject_pipeline_alone_adds_only_a_subject_version(project, first_run):
    proc = kedro(project, "run", "--pipelines", "subject_lora", "--params", f"subject.lora.steps={STEPS}")
    subject, style = _versions(project, "subject"), _versions(project, "style")
    assert len(subject) == 2 and subject[0] == first_run["subject"][0]
    # one log line per exported LoRA, naming its file and version
    out = proc.stdout + proc.stderr  # rich folds the long path over lines, so its parts are checked
    assert "Saved LoRA subject_lora_weights:" in out and f"{subject[1]})" in out, out[-3000:]
    assert style == first_run["style"]
    # Same data, config and seed: the re-trained LoRA is identical (reproducible across processes).
    a = load_file(str(_lora_path(project, "subject", subject[0])))
    b = load_file(str(_lora_path(project, "subject", subject[1])))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    client, runs = _runs(project)
    assert len(runs) == 2
    second = runs[1]
    assert second.data.tags.get("run_id") == subject[1]
    assert "subject.lora.rank" in second.data.params and "style.lora.rank" not in second.data.params
    assert [m.step for m in client.get_metric_history(second.info.run_id, "subject/loss")] == list(range(1, STEPS + 1))
    assert client.get_metric_history(second.info.run_id, "style/loss") == []


@pytest.mark.parametrize("params, named", [
    ("subject.lora.rnak=8", ["subject.lora.rnak", "subject.lora.rank"]),
    ("style.lora.steps=2.5", ["'style.lora.steps' must be an integer, got 2.5"]),  # was a TypeError mid-stage
])
def test_bad_params_fail_before_any_node_with_the_key_named(project, first_run, params, named):
    before = (_versions(project, "subject"), _versions(project, "style"))
    runs = _mlflow_runs(project)
    proc = kedro(project, "run", "--pipelines", PIPELINES, "--params", params, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert all(n in out for n in named), out[-3000:]
    assert "Running node" not in out
    assert (_versions(project, "subject"), _versions(project, "style")) == before
    assert _mlflow_runs(project) == runs, "a run that failed validation must not leave an MLflow run"


def test_merge_on_a_fresh_project_names_what_is_missing_and_the_command(fresh_project):
    proc = kedro(fresh_project, "run", "--pipelines", "merge", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "subject_lora_weights" in out and "made by the 'subject_lora' stage" in out, out[-3000:]
    assert "kedro run --pipelines data_prep,style_lora,subject_lora" in out
    assert "Running node" not in out and "Did not find any versions" not in out
    # the last line on the screen is the summary, after the traceback
    assert out.rstrip().splitlines()[-1].startswith("Run `kedro run --pipelines data_prep,style_lora,subject_lora`")
    assert out.rindex("kedro run --pipelines merge failed: MissingInputError") > out.rindex("Traceback")
    assert _mlflow_runs(fresh_project) == 0


def test_a_missing_subject_folder_fails_before_any_stage_saves(fresh_project):
    proc = kedro(fresh_project, "run", "--params", "data_prep.subject.folder=my_dog", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "No images in data/01_raw/subjects/my_dog/" in out and "['robot']" in out, out[-3000:]
    assert "Running node" not in out
    assert not (fresh_project / "data" / "03_primary").exists()
    assert _mlflow_runs(fresh_project) == 0


def test_a_bad_subject_image_fails_before_the_style_is_saved(fresh_project):
    """data_prep prepares the style and the subject in either order; the images of both are checked first, every
    bad file named (each kind of bad file: tests/kedro_glue/test_bad_input.py)."""
    from PIL import Image

    folder = fresh_project / "data/01_raw/subjects/robot"
    (folder / "notes.png").write_bytes(b"a text file named .png")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    proc = kedro(fresh_project, "run", "--pipelines", "data_prep", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Nothing was saved" in out, out[-3000:]
    assert "robot/notes.png: not an image file" in out and "robot/dot.png: 1x1 px is smaller" in out
    assert "Running node" not in out
    assert not (fresh_project / "data" / "03_primary").exists()


def test_merge_two_lora_files_the_user_already_has(fresh_project, mini_model_path):
    """No training: conf/local/catalog.yml points subject_lora_weights / style_lora_weights at the user's files
    (here one peft/diffusers file and one kohya file with SGM block names, as kohya's SDXL scripts write, both with
    a 1×1 convolution and text-encoder parts), and `kedro run --pipelines data_prep,merge` merges them; the merged
    file holds both LoRAs' layers: the UNet's merged per column, the text encoders' combined directly."""
    from diffusers import UNet2DConditionModel

    from tests.helpers import to_sgm
    from ziplora_pipeline.core.lora.factors import LoraFactors, text_encoder_lora_factors, unet_lora_factors
    from ziplora_pipeline.core.merging.export import factors_to_lora_file, to_kohya
    from ziplora_pipeline.datasets.lora_safetensors import read_lora_file

    unet = UNet2DConditionModel.from_pretrained(mini_model_path, subfolder="unet")
    g = torch.Generator().manual_seed(0)
    layers = {n: m for n, m in unet.named_modules() if n.endswith(("attn1.to_q", "attn2.to_v", "resnets.0.conv_shortcut"))}
    width = 32  # the miniature's text encoders' hidden size (q_proj is width x width)

    def random_lora(paths, te_layer):
        factors = {p: LoraFactors(torch.randn(4, layers[p].weight.shape[1], generator=g) * 0.1,
                                  torch.randn(layers[p].weight.shape[0], 4, generator=g) * 0.1, 1.0,
                                  isinstance(layers[p], torch.nn.Conv2d)) for p in paths}
        te = {te_layer: LoraFactors(torch.randn(2, width, generator=g), torch.randn(width, 2, generator=g), 1.0)}
        return factors_to_lora_file(factors, text_encoders={"text_encoder": te})

    paths = sorted(layers)
    assert any("conv_shortcut" in p for p in paths)
    mine = fresh_project / "my_loras"
    mine.mkdir()
    from safetensors.torch import save_file

    q0 = "text_model.encoder.layers.0.self_attn.q_proj"
    dog, style = random_lora(paths[: len(paths) // 2 + 1], q0), random_lora(paths[len(paths) // 2:], q0)
    sgm = to_sgm(to_kohya(style), unet.config.layers_per_block)
    save_file(dog.state_dict, str(mine / "my_dog.safetensors"), metadata=dog.metadata)
    save_file(sgm.state_dict, str(mine / "my_style_kohya.safetensors"), metadata=sgm.metadata)
    (fresh_project / "conf" / "local" / "catalog.yml").write_text(
        "subject_lora_weights:\n  type: ziplora_pipeline.datasets.LoraSafetensorsDataset\n"
        "  filepath: my_loras/my_dog.safetensors\n"
        "style_lora_weights:\n  type: ziplora_pipeline.datasets.LoraSafetensorsDataset\n"
        "  filepath: my_loras/my_style_kohya.safetensors\n")
    proc = kedro(fresh_project, "run", "--pipelines", "data_prep,merge", "--params", "merge.steps=3")
    assert "text_encoder LoRA layers (from subject and style) are combined directly" in proc.stdout + proc.stderr
    out = sorted((fresh_project / "data/06_models/ziplora/ziplora.safetensors").glob("*/ziplora.safetensors"))
    assert len(out) == 1
    merged_file = read_lora_file(str(out[0]))
    merged = unet_lora_factors(merged_file, "merged")
    assert set(merged) == set(paths)  # the union of both files' layers
    # layer-wise ΔW of the export = Σ_i s_i B_i A_i diag(m_i), with each file parsed from its own format
    (mergers_file,) = (fresh_project / "data/06_models/ziplora/mergers.safetensors").glob("*/mergers.safetensors")
    mergers = load_file(str(mergers_file))
    inputs = {"subject": unet_lora_factors(dog, "dog"), "style": unet_lora_factors(sgm, "style", unet.config)}
    for path, f in merged.items():
        want = sum(inputs[n][path].delta() * mergers[f"{path}.{n}"][None, :] for n in inputs if path in inputs[n])
        assert (f.delta() - want).norm() <= 1e-4 * want.norm(), path
    te = text_encoder_lora_factors(merged_file, "merged")["text_encoder"][q0].delta()
    want = sum(text_encoder_lora_factors(f, n)["text_encoder"][q0].delta() for n, f in (("dog", dog), ("style", sgm)))
    assert (te - want).norm() <= 1e-4 * want.norm()
    assert not (fresh_project / "data/06_models/subject_lora").exists()  # nothing was trained
    from huggingface_hub import ModelCard

    (card,) = (fresh_project / "data/06_models/ziplora/README.md").glob("*/README.md")  # the card beside the export
    assert ModelCard.load(card).data.base_model == "data/06_models/toy_sdxl" and "sks" in card.read_text()
    from PIL import Image

    (sample,) = (fresh_project / "data/06_models/ziplora/sample").glob("*/sample/sample.png")  # the card's sample
    assert Image.open(sample).size == (64, 64) and "ziplora_sample_image" in card.read_text()
    # the newest export without walking timestamp folders: only the path on stdout
    import subprocess
    import sys

    latest = subprocess.run([sys.executable, "-m", "ziplora_pipeline.latest", "ziplora_weights"], cwd=fresh_project,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert (fresh_project / latest).resolve() == out[0].resolve(), latest
    typo = subprocess.run([sys.executable, "-m", "ziplora_pipeline.latest", "ziplora_wieghts"], cwd=fresh_project,
                          capture_output=True, text=True)
    assert typo.returncode != 0 and "Did you mean ['ziplora_weights'" in typo.stderr
    # the same file as subject and style: refused before any node, naming both entries; nothing new saved
    (fresh_project / "conf" / "local" / "catalog.yml").write_text(
        "subject_lora_weights:\n  type: ziplora_pipeline.datasets.LoraSafetensorsDataset\n"
        "  filepath: my_loras/my_dog.safetensors\n"
        "style_lora_weights:\n  type: ziplora_pipeline.datasets.LoraSafetensorsDataset\n"
        "  filepath: my_loras/my_dog.safetensors\n")
    proc = kedro(fresh_project, "run", "--pipelines", "merge", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "are the same LoRA (identical tensors)" in text and "my_dog.safetensors" in text
    assert "Running node" not in text
    assert len(list((fresh_project / "data/06_models/ziplora/ziplora.safetensors").iterdir())) == 1


def test_a_plain_kedro_command_prints_no_third_party_warning():
    """`kedro registry list` loads every plugin (kedro-mlflow, kedro-dagster and its dagster-mlflow): no warning
    line reaches the user (the known harmless ones are filtered in kedro_glue/quiet.py, each by its own message)."""
    from tests.helpers import PROJECT_ROOT

    proc = kedro(PROJECT_ROOT, "registry", "list")
    out = proc.stdout + proc.stderr
    assert "__default__" in out and "warning" not in out.lower(), out[-3000:]
