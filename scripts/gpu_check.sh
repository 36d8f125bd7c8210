#!/usr/bin/env bash
# GPU check at real scale: full-size SDXL architecture (random weights, configs in the repo, no
# download), saved once and loaded afresh for each stage. 20 LoRA training steps at 1024 px, 20 ZipLoRA
# merge steps with and without gradient checkpointing (+ the dense-ΔW reference, + the closed-form merge:
# statistics and solves, ours), 10 denoising steps
# with the exported merged LoRA; s/step and peak GPU memory each. Needs torch, diffusers, transformers
# and peft (not Kedro).
#   bash scripts/gpu_check.sh                 # on one GPU: 133 s on an H100 (docs/real_sdxl.md); writes gpu_check.json
#   bash scripts/gpu_check.sh --small         # CPU-sized variant (miniature model, 64 px)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 KEDRO_DISABLE_TELEMETRY=1
PY="${PYTHON:-python}"
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then PY=.venv/bin/python; fi
exec "$PY" scripts/gpu_check.py "$@"
