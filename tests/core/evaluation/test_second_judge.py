"""The second judge (core/evaluation/second_judge.py): ImageNet EfficientNet-Lite0 loaded by name with every shape checked."""

import pytest
import torch
from PIL import Image

from ziplora_pipeline.core.evaluation.second_judge import (EfficientNetJudge, EfficientNetLite0, JudgeWeightsError,
                                                           load_efficientnet_lite0, packaged_weights)


def test_packaged_weights_load_by_name_with_every_shape():
    state = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    model = load_efficientnet_lite0()
    ours = model.state_dict()
    assert list(ours) == list(state)  # same names, in the checkpoint's order
    assert all(ours[k].shape == state[k].shape and torch.equal(ours[k], state[k]) for k in state)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # EfficientNet-Lite0: 4.65M
    assert not model.training


def test_features_are_unit_vectors_and_tell_images_apart():
    judge = EfficientNetJudge(image_size=96)
    red, red2, blue = Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (200, 40, 40)), \
        Image.new("RGB", (64, 64), (30, 30, 220))
    emb = judge.images([red, red2, blue])
    assert emb.shape == (3, 1280)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    near, far = judge.subject_scores([red2, blue], [red])
    assert near > far


def test_wrong_files_fail_naming_the_file(tmp_path):
    with pytest.raises(JudgeWeightsError, match="not found"):
        load_efficientnet_lite0(tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(JudgeWeightsError, match=r"notes\.pth could not be read"):
        load_efficientnet_lite0(text)
    state = EfficientNetLite0().state_dict()
    state["_fc.weight"] = torch.zeros(10, 1280)  # a 10-class head: not the ImageNet weights
    del state["_conv_head.weight"]
    wrong = tmp_path / "other.pth"
    torch.save(state, wrong)
    with pytest.raises(JudgeWeightsError, match=r"other\.pth.*missing _conv_head\.weight.*_fc\.weight: \(10, 1280\)"):
        load_efficientnet_lite0(wrong)
