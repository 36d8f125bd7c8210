"""Kedro-Viz: ``kedro viz build`` (the static export) in a copy of the project; the exported graph has the
data layers (acyclic, so Kedro-Viz's layer view is on), one namespace per stage and unique node names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import PROJECT_ROOT

STAGES = {"data_prep", "subject_lora", "style_lora", "joint_lora", "merge", "generation", "evaluation"}
LAYERS = ["raw", "primary", "models", "model_output", "reporting"]


def test_kedro_viz_build_exports_layers_and_a_namespace_per_stage(tmp_path):
    project = tmp_path / "viz"
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, project / name)
    (project / "src").mkdir()
    kedro = Path(sys.executable).with_name("kedro")
    cmd = [str(kedro)] if kedro.exists() else [sys.executable, "-m", "kedro"]
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "COLUMNS": "200"}
    proc = subprocess.run([*cmd, "viz", "build"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "circular dependency" not in out, out[-4000:]

    graph = json.loads((project / "build" / "api" / "main").read_text())
    layers = graph["layers"]
    assert [layer for layer in layers if layer in LAYERS] == LAYERS  # drawn in data-folder order
    assert STAGES <= set(graph["modular_pipelines"])
    tasks = [n for n in graph["nodes"] if n["type"] == "task"]
    assert len({n["name"] for n in tasks}) == len(tasks), sorted(n["name"] for n in tasks)
    for node in tasks:
        [stage] = node["modular_pipelines"]
        assert stage in STAGES and node["full_name"] == f"{stage}.{node['name']}"
    data = [n for n in graph["nodes"] if n["type"] == "data"]
    assert data and all(n.get("layer") in LAYERS + ["intermediate"] for n in data), \
        [n["name"] for n in data if not n.get("layer")]
    # each LoRA stage's checkpoint store is its own dataset
    checkpoints = {n["name"] for n in data if n["name"].endswith("_checkpoints")}
    assert checkpoints == {"subject_lora_checkpoints", "style_lora_checkpoints", "joint_lora_checkpoints"}
    # the grid pipeline: one collapsible namespace per concept and per pair (conf/base: robot x sketch)
    grid = json.loads((project / "build" / "api" / "pipelines" / "grid").read_text())
    assert {"robot", "sketch", "robot_x_sketch", "grid"} <= set(grid["modular_pipelines"])
