"""LoRA training under ``torchrun``/``accelerate launch`` with 2 processes (CPU, gloo): the DDP path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.slow


def test_two_process_training_keeps_ranks_in_sync(tmp_path, mini_model_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "29517",
           str(Path(__file__).with_name("ddp_train_worker.py")), str(mini_model_path), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = [safe_open(str(tmp_path / f"rank{r}.safetensors"), "pt") for r in (0, 1)]
    assert all(f.metadata()["processes"] == "2" for f in files)
    # each rank drew its own batch (seed + rank) ...
    assert files[0].metadata()["loss0"] != files[1].metadata()["loss0"]
    # ... but all-reduced gradients keep the weights identical
    for key in files[0].keys():
        assert torch.equal(files[0].get_tensor(key), files[1].get_tensor(key)), key
    assert any(files[0].get_tensor(k).abs().sum() > 0 for k in files[0].keys() if "lora_B" in k)  # it trained
