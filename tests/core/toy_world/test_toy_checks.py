"""The toy world's judged checks on known inputs: AUROC, the style rate and the VAE ceiling."""

from __future__ import annotations

import random

import pytest

from tests.helpers import PROJECT_ROOT
from ziplora_pipeline.core.toy_world.checks import auroc, reconstruction_check, style_transfer_rate
from ziplora_pipeline.core.toy_world.render import Scene, random_instance, random_pose, render

JUDGES = PROJECT_ROOT / "data" / "06_models" / "toy_judges"


def test_auroc_counts_ties_half():
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5, 0.5], [0.5, 0.5]) == 0.5


@pytest.fixture(scope="module")
def attributes():
    from ziplora_pipeline.core.toy_world.judges import ToyAttributeEncoder

    return ToyAttributeEncoder(JUDGES / "attributes")


def test_style_rate_on_renders_of_the_target_style(attributes):
    rng = random.Random(3)
    neon = [render(random_pose(rng, Scene(random_instance(rng, c), style="neon"))) for c in ("cat", "car", "cup") * 4]
    assert style_transfer_rate(attributes, neon, "neon")["rate"] >= 0.9
    assert style_transfer_rate(attributes, neon, "dots")["rate"] <= 0.1
    prompted = ["cat", "car", "cup"] * 4
    assert style_transfer_rate(attributes, neon, "neon", prompted)["content_rate"] >= 0.9
    leaky = style_transfer_rate(attributes, neon, "neon", ["house"] * 12)  # every prompt asked for a house
    assert leaky["content_rate"] <= 0.1 and leaky["leaked_class"] in ("cat", "car", "cup") and leaky["leaked_rate"] > 0.2


def test_reconstruction_check_reports_the_ceiling(attributes, fresh_pipe):
    result = reconstruction_check(fresh_pipe().vae, attributes, 12, 5, 64)  # a random-weight VAE: no ceiling left
    assert result["clean"]["n"] == 12 and result["clean"]["style_accuracy"] >= 0.9
    assert result["reconstructed"]["style_accuracy"] < result["clean"]["style_accuracy"]
    assert 0 < result["psnr_db"] < 15
