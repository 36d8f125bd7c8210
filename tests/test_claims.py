"""The paper's three claims (core/claims.py): concept-alone figures on images and scores with a known answer."""

import math
import random

import pytest

from ziplora_pipeline.core.claims import (
    claim_rows, claims_frame, claims_verdict, judge_agreement, judges_verdict, strength_curve, summarise_axes)
from ziplora_pipeline.core.toy_world.judges import ToyAttributeEncoder
from ziplora_pipeline.core.toy_world.render import Scene, random_instance, random_pose, render

SEEDS = list(range(8))


def _axes(**values):
    """summarise_axes of per-seed constant scores: ``subject=0.8`` -> every seed scores 0.8 (plus tiny jitter)."""
    keys = {"subject": "dino_subject", "style": "clip_style", "prompt": "clip_text", "object": "object_drawn",
            "subject2": "lite_subject", "style2": "lite_style"}
    rng = random.Random(0)
    return summarise_axes({keys[a]: [v + rng.uniform(-1e-3, 1e-3) for _ in SEEDS] for a, v in values.items()}, SEEDS)


def _groups(subject_alone, style_alone, merge=None):
    return {"subject": _axes(**subject_alone), "style": _axes(**style_alone), "merge": _axes(**(merge or {}))}


def test_concept_alone_figures_known_answer():
    judged = {
        "subject_lora": _groups({"subject": 0.8, "style": 0.1}, {"subject": 0.0, "style": 0.2, "object": 1.0}),
        "style_lora": _groups({"subject": 0.1, "style": 0.9}, {"subject": 0.0, "style": 0.9, "object": 0.3}),
        # keeps the subject alone (3/4 of its LoRA's score, unstylised) and the style alone (2/3 of it, object drawn)
        "good": _groups({"subject": 0.6, "style": 0.1}, {"style": 0.6, "object": 0.9}, {"subject": 0.5, "style": 0.5}),
        # paints "a sks robot" in the style and copies the style image's content
        "bad": _groups({"subject": 0.4, "style": 0.7}, {"style": 0.9, "object": 0.2}, {"subject": 0.2, "style": 0.8}),
    }
    rows = claim_rows(judged)
    good, bad = rows["good"], rows["bad"]
    assert good["alone_subject_frac"]["mean"] == pytest.approx(0.75, abs=0.01)
    assert good["alone_subject_style"]["mean"] == pytest.approx(0.0, abs=0.01)
    assert bad["alone_subject_style"]["mean"] == pytest.approx(0.6, abs=0.01)
    assert good["alone_style_frac"]["mean"] == pytest.approx(2 / 3, abs=0.01)
    assert good["alone_object"]["mean"] == pytest.approx(0.9, abs=0.01)
    assert good["merge_harmonic"]["mean"] == pytest.approx(0.5, abs=0.01)
    assert bad["merge_harmonic"]["mean"] == pytest.approx(2 * 0.2 * 0.8 / 1.0, abs=0.01)
    frame = claims_frame(rows).set_index("method")
    assert frame.loc["good", "alone_subject_frac_95ci"].startswith("[0.7")
    lines = claims_verdict(judged, "good", "bad")
    alone = next(line for line in lines if line.startswith("(b)"))
    # lower style on the subject prompt is better; more of the prompted object drawn is better
    assert "style on 'subject alone' (lower is better) -0.600" in alone and alone.count(": better") == 3
    assert "style on 'style alone' -0.300 [" in alone and ": worse" in alone


def test_object_drawn_on_renders():
    """The toy attribute judge finds the prompted object on a render of it and not on the style image's class."""
    judge = ToyAttributeEncoder("data/06_models/toy_judges/attributes")
    rng = random.Random(3)
    cats = [render(random_pose(rng, Scene(random_instance(rng, "cat"), style="sketch"))) for _ in range(4)]
    houses = [render(random_pose(rng, Scene(random_instance(rng, "house"), style="sketch"))) for _ in range(4)]
    drawn = judge.object_drawn(cats + houses, ["a cat in zwx style"] * 8)
    assert drawn.tolist() == [1.0] * 4 + [0.0] * 4
    assert math.isnan(judge.object_drawn(cats[:1], ["a sks thing"])[0])


def test_strength_curve_and_judge_agreement():
    judged = {"z": _axes(subject=0.1, style=0.9, subject2=0.2, style2=0.8),
              "z0p7": _axes(subject=0.4, style=0.6, subject2=0.5, style2=0.5),
              "z0p4": _axes(subject=0.7, style=0.1, subject2=0.8, style2=0.1),
              "d": _axes(subject=0.1, style=0.5, subject2=0.6, style2=0.4)}
    curve = strength_curve(judged, {"z": 1.0, "z0p4": 0.4, "z0p7": 0.7})
    assert [p["style_scale"] for p in curve["points"]] == [1.0, 0.7, 0.4]
    assert curve["best"]["method"] == "z0p7" and curve["best"]["harmonic"] == pytest.approx(0.48, abs=0.01)
    agreement = judge_agreement(judged)
    assert agreement["style"]["spearman"] == pytest.approx(1.0)
    assert agreement["subject"]["spearman"] < 1.0
    lines = judges_verdict(judged, "z", "d", names=("toy", "EfficientNet"))
    assert "judges disagree" in lines[0]  # subject: 0.1 vs 0.1 (toy) but 0.2 vs 0.6 (EfficientNet)
    assert "the judges agree" in lines[1]  # style: better by both


def test_a_reference_missing_leaves_the_figure_empty():
    judged = {"m": _groups({"subject": 0.5}, {"style": 0.5})}
    row = claim_rows(judged)["m"]
    assert row["alone_subject_frac"] is None and row["alone_style_frac"] is None
    assert claims_verdict(judged, "m", "direct_merge")[0].startswith("m vs direct_merge: not compared")


def test_summarise_axes_skips_all_nan():
    out = summarise_axes({"object_drawn": [float("nan")] * 8, "dino_subject": [0.5] * 8}, SEEDS)
    assert "object" not in out and out["subject"]["mean"] == pytest.approx(0.5)
