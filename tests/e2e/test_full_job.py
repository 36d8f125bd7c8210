"""The whole job as a user runs it: ``kedro run`` (default parameters except fewer LoRA training steps, the
committed toy-world model and judges) in a copy of the project ends with a report whose judged table has a row
for every method; then ``--pipelines generation`` and ``--pipelines evaluation`` on their own, MLflow, and the
notebook top to bottom. The default job's wall time (the issue's 5 minutes) is measured by
``benchmarks/job_time.py``, not here: a timed test fails on a loaded machine and proves nothing on a quiet one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import copy_project, enabled_methods, kedro

pytestmark = pytest.mark.slow

REQUIRED = ["method", "subject_fidelity", "style_fidelity", "clip_style", "dino_subject", "clip_text", "harmonic",
            "merge_seconds", "peak_mb"]
# Fewer LoRA steps than the defaults (1000 / 300 / 1300) and 3 of the 8 seeds: the LoRAs and generation (14 methods ×
# 6 prompts × 8 seeds) are most of the default job's time, and what these tests check (every stage wired, every method
# reported, reruns, MLflow) does not depend on them. The seeds go to conf/local (a list does not fit --params).
FEWER_STEPS = "subject.lora.steps=150,style.lora.steps=60,joint.lora.steps=210,merge.steps=40"
SEEDS = (100, 101, 102)


def _versions(project: Path, rel: str) -> list[Path]:
    return sorted((project / "data" / rel).glob("*/"))


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    # the committed toy-world base model and judges (the real default), the sample data at its default 64 px
    root = copy_project(tmp_path_factory.mktemp("full_job"), sample_size=64, models=("toy_sdxl", "toy_judges"),
                        extra=("notebooks",))
    (root / "conf/local/parameters.yml").write_text(f"generation:\n  seeds: {list(SEEDS)}\n")
    proc = kedro(root, "run", "--params", FEWER_STEPS)
    return {"project": root, "log": proc.stdout}


def test_whole_job_reports_every_method(job):
    project = job["project"]
    [csv_version] = _versions(project, "08_reporting/evaluation/metrics.csv")
    table = pd.read_csv(csv_version / "metrics.csv")
    assert set(REQUIRED) <= set(table.columns)
    assert list(table["method"]) == list(enabled_methods())  # every method, in parameter order
    assert table[["subject_fidelity", "style_fidelity"]].notna().all().all()
    assert table.set_index("method").loc["subject_lora", "subject_fidelity"] == pytest.approx(1.0, abs=1e-6)
    [report] = _versions(project, "08_reporting/evaluation/report")
    text = (report / "report" / "report.md").read_text()
    for method in enabled_methods():
        assert f"| {method} " in text, method
    assert "Judged scores (our Table 2)" in text and "95 %" in text and "mean nothing" not in text
    assert "Judged on held-out prompts and seeds, ziplora minus direct_merge" in text
    seeds = SEEDS
    assert {p.name for p in (report / "report").iterdir()} == {
        "report.md", "report.html", "metrics_chart.png", "judged_chart.png",
        *(f"contact_sheet_seed{s}.png" for s in seeds)}
    page = (report / "report" / "report.html").read_text()  # self-contained: every image inside the page
    assert page.count('src="data:image/png;base64,') == 2 + len(seeds) and "<table>" in page
    judged = table.set_index("method")[["dino_subject", "clip_style", "clip_text"]]
    assert judged.notna().all().all()
    # the judges tell the references apart even at these few steps: each LoRA scores above the base model on the
    # axis of its own concept (toy-world judges; the default run's figures: docs/results/default_run.md)
    assert judged.loc["subject_lora", "dino_subject"] > judged.loc["base", "dino_subject"] + 0.1
    assert judged.loc["style_lora", "clip_style"] > judged.loc["base", "clip_style"] + 0.1
    [images] = _versions(project, "07_model_output/generated")
    assert len(list((images / "generated").glob("*.png"))) == len(enabled_methods()) * 6 * len(SEEDS)  # methods × prompts × seeds


def test_job_is_in_mlflow(job):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{job['project'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ziplora_pipeline")
    [run] = client.search_runs([exp.experiment_id])
    metrics = run.data.metrics
    for method in enabled_methods():
        assert f"eval/{method}.subject_fidelity" in metrics and f"eval/{method}.style_fidelity" in metrics
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report/report")}
    assert {"report/report/report.md", "report/report/report.html"} <= logged
    assert re.fullmatch(r"job · \d{4}-\d\d-\d\dT\d\d\.\d\d", run.info.run_name), run.info.run_name
    assert run.data.tags["runner"] == "SequentialRunner"
    assert "eval/joint.train_seconds" in metrics and "eval/joint.merge_seconds" not in metrics
    assert "merge/heldout.recon_subject_final" in metrics and "merge/step.recon_subject" in metrics
    assert not any(m.startswith("merge/pool.") for m in metrics)  # fresh draws: the pool's figures are the held-out's
    assert all("/" in m for m in metrics), sorted(m for m in metrics if "/" not in m)  # every metric in a UI section
    assert run.data.tags["subject"] == "robot" and run.data.tags["style"] == "sketch"  # runs are found by pair
    assert {a.path for a in client.list_artifacts(run.info.run_id, "generation")} >= {
        "generation/contact_sheets", "generation/generated_images", "generation/generation_manifest"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_merge_is_registered_and_served_over_http(job):
    """The run's ZipLoRA is a registered model (alias @newest, tagged with the LoRA versions it merged);
    ``mlflow models serve`` on 127.0.0.1 answers a request with the image the generation stage made for that
    prompt and seed, and a bad request with a 400 that says what to send."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    import numpy as np
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from ziplora_pipeline.serving import decode_png

    project = job["project"]
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    version = client.get_model_version_by_alias("ziplora-robot-x-sketch", "newest")
    for concept in ("subject", "style"):
        [on_disk] = _versions(project, f"06_models/{concept}_lora/pytorch_lora_weights.safetensors")
        assert version.tags[f"{concept}_lora_version"] == on_disk.name
    assert version.tags["base_model"] == str((project / "data/06_models/toy_sdxl").resolve())
    assert "Registered MLflow model ziplora-robot-x-sketch version 1 (alias @newest)" in " ".join(job["log"].split())

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1",
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                               "models:/ziplora-robot-x-sketch@newest", "--env-manager", "local", "-h", "127.0.0.1",
                               "-p", str(port)], cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)  # + uvicorn
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()[-5000:]
                time.sleep(1)
        status, body = _post(f"{url}/invocations", {"inputs": ["a sks robot in zwx style"]})  # the run's settings
        assert status == 200, body
        [prediction] = body["predictions"]
        served = np.asarray(decode_png(prediction["image"]), dtype=np.int16)
        [images] = _versions(project, "07_model_output/generated")
        made = np.asarray(Image.open(images / "generated" / "ziplora__merge0__seed100.png").convert("RGB"),
                          dtype=np.int16)
        assert served.shape == made.shape == (64, 64, 3)
        assert np.abs(served - made).mean() < 1.0  # the same image (a batch of one vs the stage's batches)
        status, body = _post(f"{url}/invocations", {"inputs": []})
        assert status == 400 and "No prompts" in body["message"], body
        status, body = _post(f"{url}/invocations", {"inputs": ["a sks robot"], "params": {"height": 50}})
        assert status == 400 and "height = 50 cannot be made by this base model" in body["message"], body
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)  # mlflow and the uvicorn process it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_generation_and_evaluation_run_on_their_own(job):
    project = job["project"]
    kedro(project, "run", "--pipelines", "generation", "--params", "generation.num_inference_steps=2")
    assert len(_versions(project, "08_reporting/generation/contact_sheets")) == 2
    kedro(project, "run", "--pipelines", "evaluation")
    reports = _versions(project, "08_reporting/evaluation/report")
    assert len(reports) == 2
    tables = [pd.read_csv(v / "metrics.csv") for v in _versions(project, "08_reporting/evaluation/metrics.csv")]
    # Same LoRAs, same seeds: the second evaluation reproduces the first's output fidelity exactly.
    pd.testing.assert_series_equal(tables[0]["subject_fidelity"], tables[1]["subject_fidelity"])


def test_notebook_runs_top_to_bottom_on_the_latest_run(job):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(job["project"] / "notebooks" / "walkthrough.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(job["project"])}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "contact_sheet_seed100" in text and "Output fidelity, ziplora vs direct_merge" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # contact sheet, metrics chart, merge analysis, merge curves


def test_log_before_the_first_node_is_short_and_plain(job):
    lines = job["log"].splitlines()
    first = next(i for i, line in enumerate(lines) if "Running node" in line)
    assert first <= 40, "\n".join(lines[:first])
    assert "\x1b[" not in job["log"]  # no colour codes when the output is a file or a pipe
    for harmless in ("register_new_resolver", "Add type hints", "should be kept in float32", "requires torchvision"):
        assert harmless not in job["log"], harmless


def test_merge_run_names_the_lora_versions_it_merged_and_a_typo_leaves_no_run(job):
    from mlflow.tracking import MlflowClient

    project = job["project"]
    kedro(project, "run", "--pipelines", "merge", "--params", "merge.steps=3")
    bad = kedro(project, "run", "--pipelines", "merge", "--params", "merge.stpes=3", check=False)
    assert bad.returncode != 0 and "merge.stpes" in bad.stdout
    assert bad.stdout.rstrip().splitlines()[-1].startswith("kedro run --pipelines merge --params merge.stpes=3 failed: ")

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ziplora_pipeline")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert all(r.info.status == "FINISHED" for r in runs)  # the typo opened no run
    names = [r.info.run_name.split(" · ")[0] for r in runs]
    assert names[0] == "job" and names[-1] == "merge" and names.count("merge") == 1, names
    merge = runs[-1]
    inputs = {d.dataset.name: d.dataset.digest for d in merge.inputs.dataset_inputs}
    for concept in ("subject", "style"):
        [on_disk] = _versions(project, f"06_models/{concept}_lora/pytorch_lora_weights.safetensors")
        assert merge.data.tags[f"input_version.{concept}_lora_weights"] == on_disk.name
        assert inputs[f"{concept}_lora_weights"] == on_disk.name
