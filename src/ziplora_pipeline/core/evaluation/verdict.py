"""The held-out verdict: judged scores per method with 95 % bootstrap intervals over seeds.

A seed is the unit of resampling: each seed's score is the mean over the prompts generated from
it (every method uses the same seeds and prompts), and the interval is the percentile bootstrap
of the mean over seeds. Comparisons between two methods are paired by seed (the same initial
noise), so the interval of the difference says whether one beats the other beyond seed noise.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# The three judged axes of ZipLoRA's Table 2 and the image-metric keys they come from.
AXES = {"subject": "dino_subject", "style": "clip_style", "prompt": "clip_text"}


def by_seed(scores: list[float], seeds: list[int]) -> dict[int, float]:
    """Mean score per seed over its images (NaN scores, e.g. a prompt the judge cannot parse, skipped)."""
    out: dict[int, list[float]] = {}
    for value, seed in zip(scores, seeds):
        if value is not None and not math.isnan(value):
            out.setdefault(seed, []).append(value)
    return {s: float(np.mean(v)) for s, v in sorted(out.items())}


def bootstrap(values: np.ndarray, n: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean and percentile-bootstrap interval of the mean of ``values`` (S,)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n, values.size))].mean(1)  # (n,)
    tail = (1 - level) / 2 * 100
    return {"mean": float(values.mean()), "lo": float(np.percentile(means, tail)),
            "hi": float(np.percentile(means, 100 - tail)), "n": int(values.size)}


def summarise(per_image: dict[str, list[float] | None], seeds: list[int]) -> dict:
    """``{axis: {mean, lo, hi, n, by_seed}}`` for each judged axis a method has scores on."""
    out = {}
    for axis, key in AXES.items():
        if per_image.get(key) is None:
            continue
        seed_means = by_seed(per_image[key], seeds)
        out[axis] = {**bootstrap(np.array(list(seed_means.values()))), "by_seed": seed_means}
    return out


def harmonic_mean(subject: float | None, style: float | None) -> float | None:
    if subject is None or style is None or subject <= 0 or style <= 0:
        return None
    return 2 * subject * style / (subject + style)


def paired_difference(a: dict, b: dict, axis: str) -> dict | None:
    """Method a minus method b on ``axis``, paired by seed, with its bootstrap interval."""
    if axis not in a or axis not in b:
        return None
    common = sorted(set(a[axis]["by_seed"]) & set(b[axis]["by_seed"]))
    diffs = np.array([a[axis]["by_seed"][s] - b[axis]["by_seed"][s] for s in common])
    return bootstrap(diffs)


def judged_frame(summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per method: each axis' mean and 95 % interval, and the harmonic mean of subject and style."""
    rows = []
    for method, summary in summaries.items():
        row = {"method": method}
        for axis in AXES:
            stats = summary.get(axis) or {}
            row[axis] = stats.get("mean")
            row[f"{axis}_95ci"] = (f"[{stats['lo']:.3f}, {stats['hi']:.3f}]" if stats.get("lo") is not None else None)
        row["harmonic"] = harmonic_mean(row["subject"], row["style"])
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(summaries: dict[str, dict], method: str, baseline: str) -> str:
    """One sentence per axis: is ``method`` better or worse than ``baseline`` beyond seed noise?"""
    if method not in summaries or baseline not in summaries:
        return f"{method} vs {baseline}: not compared (one of them is switched off or was not judged)."
    parts = []
    for axis in AXES:
        d = paired_difference(summaries[method], summaries[baseline], axis)
        if d is None or d["mean"] is None:
            continue
        word = "better" if d["lo"] > 0 else "worse" if d["hi"] < 0 else "no different (within seed noise)"
        parts.append(f"{axis} {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]: {word}")
    if not parts:
        return f"{method} vs {baseline}: no judged scores."
    return f"Judged on held-out prompts and seeds, {method} minus {baseline} (95 % CI over seeds): " + "; ".join(parts) + "."
