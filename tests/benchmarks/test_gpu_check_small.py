"""``scripts/gpu_check.py --small`` (the GPU check's code on the miniature model, on a CPU) still runs every stage,
the closed-form merge's included, and writes its report (so the check a GPU session runs cannot rot)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.helpers import PROJECT_ROOT


def test_gpu_check_small_runs_every_stage_and_reports_the_closed_form(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "gpu_check.py"), "--small", "--out", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == report
    for stage in ("lora_training", "merge", "generation"):
        assert report[stage]["peak_gb"] > 0, stage
    cf = report["merge"]["closed_form"]
    assert cf["shared_layers"] > 0 and cf["statistics_gb"] > 0
    assert all(math.isfinite(cf[k]) and cf[k] > 0 for k in ("seconds", "stats_s", "solve_s", "over_100_checkpointed_steps"))
