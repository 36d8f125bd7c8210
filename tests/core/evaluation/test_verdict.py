"""The held-out verdict: per-seed means, bootstrap intervals, paired differences, the report's judged section."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ziplora_pipeline.core.evaluation.report import judged_chart, render_report
from ziplora_pipeline.core.evaluation.verdict import (bootstrap, by_seed, judged_frame, paired_difference, summarise,
                                                      verdict)

SEEDS = [100, 100, 101, 101, 102, 102, 103, 103]  # two prompts per seed


def _scores(subject, style, prompt=0.5):
    return {"dino_subject": list(subject), "clip_style": list(style), "clip_text": [prompt] * len(subject)}


def test_by_seed_averages_prompts_and_skips_nan():
    assert by_seed([0.2, 0.4, 0.6, math.nan], [1, 1, 2, 2]) == {1: pytest.approx(0.3), 2: pytest.approx(0.6)}


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_agreement():
    wide = bootstrap(np.array([0.1, 0.9, 0.2, 0.8, 0.5]))
    narrow = bootstrap(np.array([0.49, 0.51, 0.5, 0.5, 0.5]))
    assert wide["lo"] <= wide["mean"] <= wide["hi"] and wide["n"] == 5
    assert narrow["hi"] - narrow["lo"] < (wide["hi"] - wide["lo"]) / 10
    assert bootstrap(np.array([]))["mean"] is None


def test_paired_difference_and_verdict_words():
    a = summarise(_scores([0.8] * 8, [0.50, 0.52] * 4), SEEDS)
    b = summarise(_scores([0.6] * 8, [0.51, 0.51] * 4), SEEDS)
    d = paired_difference(a, b, "subject")
    assert d["mean"] == pytest.approx(0.2) and d["lo"] == pytest.approx(0.2)
    text = verdict({"zip": a, "direct": b}, "zip", "direct")
    assert "subject +0.200" in text and "subject +0.200 [+0.200, +0.200]: better" in text
    assert "style +0.000" in text and "no different" in text
    worse = verdict({"zip": b, "direct": a}, "zip", "direct")
    assert "subject -0.200 [-0.200, -0.200]: worse" in worse
    assert "not compared" in verdict({"zip": a}, "zip", "direct")


def test_judged_frame_and_report_section():
    summaries = {"ziplora": summarise(_scores([0.7] * 8, [0.6] * 8), SEEDS),
                 "direct_merge": summarise(_scores([0.5] * 8, [0.6] * 8), SEEDS)}
    frame = judged_frame(summaries)
    assert list(frame["method"]) == ["ziplora", "direct_merge"]
    assert frame.loc[0, "subject_95ci"] == "[0.700, 0.700]"
    assert frame.loc[0, "harmonic"] == pytest.approx(2 * 0.7 * 0.6 / 1.3)
    metrics = pd.DataFrame({"method": ["ziplora", "direct_merge"], "subject_fidelity": [0.9, 0.5],
                            "style_fidelity": [0.9, 0.5]})
    text = render_report(metrics, compare=("ziplora", "direct_merge"), sheets=["s.png"], chart="c.png",
                         random_encoders=[], encoder_notes=[], encoders={"clip": "a", "dino": "b"}, run={},
                         judged=frame, verdict=verdict(summaries, "ziplora", "direct_merge"),
                         judged_chart="judged_chart.png", toy_judges=["clip", "dino"])
    assert text.index("## Judged scores (our Table 2)") < text.index("*Diagnostic, not a verdict:*")
    assert "toy world's judges" in text and "![judged scores](judged_chart.png)" in text
    assert "subject +0.200 [+0.200, +0.200]: better" in text
    fig = judged_chart(summaries)
    assert len(fig.axes[0].patches) == 6  # 2 methods × 3 axes


def test_report_without_judges_says_so():
    metrics = pd.DataFrame({"method": ["ziplora"], "subject_fidelity": [0.9], "style_fidelity": [0.9]})
    text = render_report(metrics, compare=("ziplora", "direct_merge"), sheets=[], chart="c.png",
                         random_encoders=["clip"], encoder_notes=[], encoders={"clip": "a"}, run={})
    assert "Not available" in text and "mean nothing" in text
