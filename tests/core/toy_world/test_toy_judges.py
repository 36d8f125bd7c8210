"""The toy world's judges: prompt parsing, save/load round trip, errors, and the shipped judges' accuracy."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tests.helpers import PROJECT_ROOT
from ziplora_pipeline.core.toy_world.judge_training import (JudgeTrainingConfig, evaluate_judges, is_subject_design,
                                                            train_judges, training_designs)
from ziplora_pipeline.core.toy_world.judges import (JudgeError, ToyAttributeEncoder, ToyIdentityEncoder, load_judge,
                                                    parse_prompt)
from ziplora_pipeline.core.toy_world.render import SKS_ROBOT, Scene, random_scene, render

SHIPPED = PROJECT_ROOT / "data" / "06_models" / "toy_judges"
TINY = JudgeTrainingConfig(seed=3, attribute_steps=3, identity_steps=3, batch_size=8, eval_samples=12,
                           views_per_design=2, pool_designs=12)


@pytest.mark.parametrize("prompt, expected", [
    ("a sks robot wearing a hat in zwx style", {"class": "robot", "hat": True, "tree": False, "background": None}),
    ("a cat on a blue background in neon style", {"class": "cat", "hat": False, "tree": False, "background": "blue"}),
    ("a photo of a red car next to a tree", {"class": "car", "hat": False, "tree": True, "background": None}),
    ("a green tree wearing a hat on a pink background", {"class": "tree", "hat": True, "tree": False,
                                                         "background": "pink"}),
    ("a photo of a dog on a red background", {"class": None, "hat": False, "tree": False, "background": None}),
    ("A Cup next to a tree in sketch style", {"class": "cup", "hat": False, "tree": True, "background": None}),
])
def test_parse_prompt(prompt, expected):
    assert parse_prompt(prompt) == expected


def test_subject_design_is_never_trained_on():
    designs = training_designs()
    assert len(designs) == 6 * 6 * 5 * 3 * 3 - 1 and not any(is_subject_design(d) for d in designs)
    assert is_subject_design(SKS_ROBOT)


@pytest.fixture(scope="module")
def tiny_judges(tmp_path_factory):
    """Judges from a few training steps (~2 s): enough for the file format, not for accuracy."""
    folder = tmp_path_factory.mktemp("judges") / "toy_judges"
    report = train_judges(TINY, folder)
    return folder, report


def _renders(n: int, seed: int, size: int = 64):
    rng = random.Random(seed)
    return [render(random_scene(rng), size) for _ in range(n)]


def test_round_trip_matches_in_memory_outputs(tiny_judges):
    folder, report = tiny_judges
    assert set(report["clean"]) >= {"style", "class", "hat", "tree", "background", "identity_auroc"}
    for kind in ("attributes", "identity"):
        meta = json.loads((folder / kind / "toy_judge.json").read_text())
        assert meta["kind"] == kind and meta["image_size"] == 64 and meta["training"]["seed"] == 3
        assert (folder / kind / "model.safetensors").stat().st_size < 3_000_000
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    attr = load_judge(folder / "attributes")
    assert not attr.training and next(attr.parameters()).dtype == torch.float32
    # Re-saving the loaded (fp16-rounded) model and loading it again changes nothing beyond fp16 rounding.
    from ziplora_pipeline.core.toy_world.judges import save_judge

    save_judge(attr, folder / "attributes", attr.meta)  # overwrite in place, atomically
    again = load_judge(folder / "attributes")
    with torch.no_grad():
        for k, v in attr(x).items():
            torch.testing.assert_close(again(x)[k], v, atol=1e-2, rtol=1e-2)
    assert not list(folder.glob(".attributes.*")), "temporary folders left behind"


def test_saved_judge_reproduces_trained_model(tmp_path):
    """A trained judge (BatchNorm statistics included) gives the same outputs after save + load."""
    from ziplora_pipeline.core.toy_world.judge_training import render_pool, train_attribute_judge, train_identity_judge
    from ziplora_pipeline.core.toy_world.judges import save_judge

    pool = render_pool(TINY)
    attr = train_attribute_judge(pool, TINY)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    for model in (attr, train_identity_judge(pool, TINY, init=attr)):
        save_judge(model, tmp_path / model.kind, {"image_size": 64})
        loaded = load_judge(tmp_path / model.kind)
        with torch.no_grad():
            before, after = model(x), loaded(x)
        before, after = (before, after) if isinstance(before, dict) else ({"z": before}, {"z": after})
        for k in before:
            torch.testing.assert_close(after[k], before[k], atol=2e-2, rtol=2e-2)


def test_encoders_shapes_and_scores(tiny_judges):
    folder, _ = tiny_judges
    attr, ident = ToyAttributeEncoder(folder / "attributes"), ToyIdentityEncoder(folder / "identity")
    images = _renders(5, seed=1)
    probs = attr.predict(images)
    assert {k: tuple(v.shape) for k, v in probs.items()} == {
        "style": (5, 6), "class": (5, 6), "hat": (5, 2), "tree": (5, 2), "background": (5, 5)}
    torch.testing.assert_close(probs["style"].sum(1), torch.ones(5))
    assert attr.style_scores(images, images[:2]).shape == (5,)
    prompts = ["a robot wearing a hat", "in zwx style", "a cat", "a cup next to a tree", "on a blue background"]
    scores = attr.text_scores(images, prompts)
    assert torch.isnan(scores[1]) and not torch.isnan(scores[[0, 2, 3, 4]]).any()
    expected = (probs["class"][0, 0] + probs["hat"][0, 1]) / 2  # robot is CLASSES[0]
    torch.testing.assert_close(scores[0], expected)
    z = ident.embed(images)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    assert ident.subject_scores(images, images[:3]).shape == (5,)


def test_wrong_image_size_names_both_sizes_and_folder(tiny_judges):
    folder, _ = tiny_judges
    attr, ident = ToyAttributeEncoder(folder / "attributes"), ToyIdentityEncoder(folder / "identity")
    small = _renders(2, seed=2, size=32)
    for call in (lambda: attr.predict(small), lambda: ident.embed(small)):
        with pytest.raises(JudgeError, match="32x32") as err:
            call()
        assert "64x64" in str(err.value) and str(folder) in str(err.value)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_weights(tiny_judges, tmp_path, damage):
    import shutil

    src, _ = tiny_judges
    folder = tmp_path / "identity"
    shutil.copytree(src / "identity", folder)
    weights = folder / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(JudgeError, match="kedro run --pipelines pretrain") as err:
        ToyIdentityEncoder(folder)
    assert str(weights) in str(err.value)


def test_missing_description_and_wrong_kind(tiny_judges, tmp_path):
    import shutil

    src, _ = tiny_judges
    folder = tmp_path / "attributes"
    shutil.copytree(src / "attributes", folder)
    with pytest.raises(JudgeError, match="not an identity judge"):
        ToyIdentityEncoder(folder)
    (folder / "toy_judge.json").write_text("{not json")
    with pytest.raises(JudgeError, match="toy_judge.json.*kedro run --pipelines pretrain"):
        load_judge(folder)


def test_shipped_judges_held_out_accuracy():
    if not (SHIPPED / "attributes").exists():
        pytest.skip(f"no shipped toy judges in {SHIPPED} (run `kedro run --pipelines pretrain`)")
    report = evaluate_judges(SHIPPED, n=120, seed=12345)
    clean = report["clean"]
    assert clean["style"] >= 0.9 and clean["class"] >= 0.9, clean
    assert clean["identity_auroc"] >= 0.85, clean


def test_shipped_identity_judge_tells_the_subject_apart():
    """The subject's views (never trained on) are closer to each other than to other red robots."""
    if not (SHIPPED / "identity").exists():
        pytest.skip(f"no shipped toy judges in {SHIPPED}")
    ident = ToyIdentityEncoder(SHIPPED / "identity")
    rng = random.Random(7)
    subject = [render(random_scene(rng, instance=SKS_ROBOT)) for _ in range(6)]
    others = [render(Scene(d, style=s)) for d, s in zip(
        [d for d in training_designs() if d.cls == "robot" and d.primary == "red"][:6], ["photo", "neon"] * 3)]
    own = ident.subject_scores(subject[3:], subject[:3]).mean()
    other = ident.subject_scores(others, subject[:3]).mean()
    assert own > other, (float(own), float(other))
