"""``benchmarks/train_step.py --quick`` still runs and ends with its JSON line (so it cannot rot)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.helpers import PROJECT_ROOT


def test_train_step_benchmark_quick_prints_json_last():
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "benchmarks" / "train_step.py"), "--quick"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"only the JSON line goes to stdout (logs to stderr), got: {lines[:-1]}"
    result = json.loads(lines[-1])
    assert {"tiny", "large"} <= set(result)
    for name in ("tiny", "large"):
        r = result[name]
        for key in ("s_per_step", "s_per_step_min", "s_per_step_uncached", "cache_speedup", "peak_mb"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
        assert r["s_per_step_min"] <= r["s_per_step"]
        assert r["cache_speedup"] == pytest.approx(r["s_per_step_uncached"] / r["s_per_step"], rel=2e-3, abs=2e-3)
        # each mode's repeats, every one a stall at most (the rule itself: the test below)
        assert r["repeats"] == 2 and isinstance(r["stalls"], int) and r["stalls"] <= 2 * r["repeats"]
    assert result["large"]["unet_params_m"] > result["tiny"]["unet_params_m"]
    assert "peak" in result["meta"]["peak_mb"].lower()
    assert "repeat 1" in proc.stderr  # the per-repeat log lines



def test_a_repeat_over_three_times_the_median_is_a_stall():
    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    try:
        from train_step import stats
    finally:
        sys.path.pop(0)
    assert stats([1.0, 1.1, 0.9, 3.2]) == (1.05, 0.9, 1)  # 3.2 > 3 × 1.05
    assert stats([1.0, 1.1, 0.9, 3.1]) == (1.05, 0.9, 0)


def test_closed_form_heldout_moves_compare_with_the_optimisers_mergers():
    """``closed_form_heldout.moves``: the mean of 1 − m over all columns, and the correlation of 1 − m with the
    reference's (1 for the reference itself and any positive multiple of its moves, −1 for the opposite moves)."""
    import torch

    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    try:
        from closed_form_heldout import moves
    finally:
        sys.path.pop(0)
    g = torch.Generator().manual_seed(0)
    ref = {"a.subject": 1 + 0.1 * torch.randn(7, generator=g), "a.style": 1 + 0.1 * torch.randn(5, generator=g)}
    half = {k: 1 - 0.5 * (1 - v) for k, v in ref.items()}
    opposite = {k: 2 - v for k, v in ref.items()}
    shrunk = {k: torch.full_like(v, 0.8) for k, v in ref.items()}
    mean_ref = float(torch.cat([1 - v for v in ref.values()]).mean())
    assert moves(ref, ref) == {"mean_shift": round(mean_ref, 4), "corr_with_ziplora": 1.0}
    assert moves(half, ref)["corr_with_ziplora"] == 1.0
    assert moves(opposite, ref)["corr_with_ziplora"] == -1.0
    assert moves(shrunk, ref) == {"mean_shift": 0.2, "corr_with_ziplora": 0.0}  # a uniform shrink: no column moves
