"""Contact sheets, image metrics and their encoders, the metrics table and report, joint-training data, datasets."""

from __future__ import annotations

import logging
import math

import pandas as pd
import pytest
import torch
from PIL import Image

from ziplora_pipeline.core.config_utils import ConfigError, from_dict
from ziplora_pipeline.core.diffusion.sdxl import encode_concept
from ziplora_pipeline.core.evaluation.contact_sheet import GUTTER, contact_sheet, sheet_layout
from ziplora_pipeline.core.evaluation.generation import GenerationConfig, prompt_token_warnings
from ziplora_pipeline.core.evaluation.image_metrics import (EncoderConfig, alignment, harmonic, load_encoders,
                                                            neutral_prompt)
from ziplora_pipeline.core.evaluation.judges import COLUMNS, EvaluationConfig, headline, metrics_frame
from ziplora_pipeline.core.evaluation.report import markdown_table, metrics_chart, render_report
from ziplora_pipeline.core.images import ImageInputError
from ziplora_pipeline.core.lora.training import LoraTrainingConfig, group_for_step, train_lora
from ziplora_pipeline.core.merging.registry import parse_methods
from ziplora_pipeline.datasets import FileBundleDataset, LoraSetDataset
from ziplora_pipeline.kedro_glue.params import validate_parameters
from ziplora_pipeline.pipelines.data_prep.nodes import combine_for_joint


def _solid(colour, size=64) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


# ---- contact sheet ----------------------------------------------------------------------------

def test_contact_sheet_has_one_cell_per_prompt_and_method():
    rows, cols = ["subject0", "style0", "merge0"], ["base", "ziplora", "peft_ties", "k_lora"]
    colours = {(r, c): (10 * i, 20 * j, 200) for i, r in enumerate(rows) for j, c in enumerate(cols)}
    cells = {k: _solid(v) for k, v in colours.items() if k != ("style0", "k_lora")}  # one cell missing
    sheet = contact_sheet(cells, rows, cols, cell=80, title="seed 0")
    layout = sheet_layout(rows, cols, 80, "seed 0")
    assert sheet.size == layout.size == (layout.label_width + 4 * 80,
                                         layout.title_height + layout.header_height + 3 * 80)
    for (r, c), colour in colours.items():
        x, y = layout.origin(rows.index(r), cols.index(c))
        centre = sheet.getpixel((x + 40, y + 40))
        assert centre == (colour if (r, c) in cells else (200, 200, 200)), (r, c)
        assert sheet.getpixel((x + 80 - GUTTER // 2 - 1, y + 40)) == (255, 255, 255)  # gutter between cells


def test_contact_sheet_rejects_images_of_different_sizes():
    cells = {("subject0", "base"): _solid((0, 0, 0), 64), ("subject0", "ziplora"): _solid((0, 0, 0), 80)}
    with pytest.raises(ValueError, match=r"different sizes \(64x64: subject0 / base; 80x80: subject0 / ziplora\)"):
        contact_sheet(cells, ["subject0"], ["base", "ziplora"])


def test_joint_training_set_rejects_images_of_different_sizes():
    with pytest.raises(ImageInputError, match="different sizes.*64x64: subject_a.*80x80: style_s"):
        combine_for_joint({"a": _solid(1, 64)}, {"prompt": "a photo of sks robot"}, {"s": _solid(1, 80)},
                          {"prompt": "a house in zwx style"})


# ---- joint training: groups alternate ---------------------------------------------------------

def test_joint_training_alternates_the_groups(fresh_pipe, subject_images):
    pipe = fresh_pipe()
    groups = [encode_concept(pipe, subject_images, "a photo of sks robot"),
              encode_concept(pipe, subject_images[:1], "a house in zwx style")]
    assert [group_for_step(groups, i) is groups[i % 2] for i in range(4)] == [True] * 4
    assert group_for_step(groups[0], 7) is groups[0]
    result = train_lora(pipe, groups, LoraTrainingConfig(steps=4, gradient_accumulation_steps=2), "joint")
    assert len(result.losses) == 4 and all(math.isfinite(x) for x in result.losses)


# ---- image metrics ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return load_encoders({"clip": EncoderConfig(str(root / "clip")), "dino": EncoderConfig(str(root / "dino"))}, "cpu")


def test_tiny_random_encoders_are_built_loaded_and_flagged(encoders):
    assert encoders.clip is not None and encoders.dino is not None
    assert encoders.random == ["clip", "dino"] and encoders.notes == []
    a, b = _solid((200, 30, 30)), _solid((30, 30, 200))
    emb = encoders.clip.images([a, a, b])
    assert emb.shape[0] == 3 and torch.allclose(emb.norm(dim=-1), torch.ones(3))
    assert torch.allclose(emb[0], emb[1]) and (emb[0] @ emb[2]) < 1 - 1e-4
    scores = alignment(encoders, [a, b], ["a sks robot in zwx style"] * 2, [a], [b], ("sks", "zwx"))
    assert set(scores) == {"clip_style", "dino_subject", "clip_text", "harmonic", "object_drawn", "lite_subject",
                           "lite_style"}
    assert scores["object_drawn"] is None and scores["lite_subject"] is None  # no style prompt, no second judge
    # each score is the mean cosine the metric defines (style ref b, subject ref a), recomputed from the embeddings
    clip, dino = encoders.clip.images([a, b]), encoders.dino.images([a, b])
    assert scores["clip_style"] == pytest.approx((clip @ clip[1]).mean().item(), abs=1e-5)
    assert scores["dino_subject"] == pytest.approx((dino @ dino[0]).mean().item(), abs=1e-5)
    text = encoders.clip.texts(["a robot in style"])[0]  # the neutral prompt: sks and zwx dropped
    assert scores["clip_text"] == pytest.approx((clip @ text).mean().item(), abs=1e-5)
    assert scores["harmonic"] == harmonic(scores["dino_subject"], scores["clip_style"])
    # object drawn (CLIP, ours): closer to the image's own neutral prompt than to the style image's prompt
    drawn = encoders.clip.object_drawn([a, b], ["a robot in style"] * 2, "a house in style")
    ref, own = encoders.clip.texts(["a house in style"])[0], text
    assert drawn.tolist() == [float((clip[i] @ own) > (clip[i] @ ref)) for i in range(2)]


def test_an_encoder_that_cannot_be_loaded_is_named_and_its_metrics_skipped(tmp_path, caplog):
    missing = str(tmp_path / "no_such_encoder")
    with caplog.at_level(logging.WARNING):
        enc = load_encoders({"clip": EncoderConfig(missing, build_seed=None, local_files_only=True)}, "cpu")
    assert enc.clip is None and len(enc.notes) == 1
    assert missing in enc.notes[0] and "clip_style, clip_text and harmonic are skipped" in enc.notes[0]
    assert "could not be loaded" in caplog.text
    scores = alignment(enc, [_solid(0)], ["a sks robot"], [_solid(0)], [_solid(0)], ("sks",))
    assert scores == {"clip_style": None, "dino_subject": None, "clip_text": None, "harmonic": None,  # not 0
                      "object_drawn": None, "lite_subject": None, "lite_style": None}


def test_prompt_helpers():
    prompt = "a sks robot riding a bicycle in zwx style"
    assert neutral_prompt(prompt, ("sks", "zwx")) == "a robot riding a bicycle in style"
    assert harmonic(0.5, 0.5) == pytest.approx(0.5) and harmonic(0.2, 0.6) == pytest.approx(0.3)
    assert harmonic(None, 0.5) is None and harmonic(-0.1, 0.5) is None
    items = GenerationConfig().prompt_items()
    assert [i.key for i in items] == ["subject0", "style0", "merge0", "recontext0", "recontext1"]
    assert prompt_token_warnings(items, "sks", "zwx") == []
    warnings = prompt_token_warnings(items, "dog1", "zwx")
    assert len(warnings) == 4 and "'dog1'" in warnings[0]


# ---- the table and the report -----------------------------------------------------------------

def _frame() -> pd.DataFrame:
    specs = parse_methods({"base": {}, "direct_merge": {}, "ziplora": {},
                           "ziplora_style0p7": {"kind": "ziplora", "style_scale": 0.7}})
    fidelity = {"base": {"subject_fidelity": 0.0, "style_fidelity": 0.0},
                "direct_merge": {"subject_fidelity": 0.4, "style_fidelity": 0.6},
                "ziplora": {"subject_fidelity": 0.8, "style_fidelity": 0.7},
                "ziplora_style0p7": {"subject_fidelity": 0.85, "style_fidelity": 0.6}}
    images = {m: {"clip_style": 0.7, "dino_subject": None, "clip_text": 0.3, "harmonic": None} for m in specs}
    costs = {"ziplora": {"merge_seconds": 4.0, "peak_mb": 5.0, "file_mb": 0.3, "memory_kind": "cpu_rss_growth"}}
    return metrics_frame(specs, fidelity, images, costs)


def test_metrics_table_has_every_column_and_blank_cells_where_not_applicable():
    frame = _frame()
    assert tuple(frame.columns) == COLUMNS and list(frame["method"]) == ["base", "direct_merge", "ziplora",
                                                                          "ziplora_style0p7"]
    assert frame["dino_subject"].isna().all() and pd.isna(frame.loc[0, "merge_seconds"])
    assert frame.loc[3, "style_scale"] == 0.7
    md = markdown_table(frame)
    assert "nan" not in md and "| base " in md
    assert headline(frame, "ziplora", "direct_merge").endswith("ziplora beats it on both.")
    assert "neither" in headline(frame, "base", "ziplora")
    assert "not compared" in headline(frame, "ziplora", "k_lora")


def test_report_says_when_image_metrics_come_from_random_encoders():
    frame = _frame()
    kwargs = dict(compare=("ziplora", "direct_merge"), sheets=["contact_sheet_seed0.png"], chart="chart.png",
                  encoder_notes=["The DINO encoder 'x' could not be loaded (OSError: gone); dino_subject and harmonic "
                                 "are skipped (left empty)."], encoders={"clip": "tiny", "dino": "x"}, run={})
    text = render_report(frame, random_encoders=["clip"], **kwargs)
    assert "random weights" in text and "mean nothing" in text and "could not be loaded" in text
    assert "Table 2" in text and "the paper's numbers, not ours" in text and "0.420" in text
    assert "![contact_sheet_seed0.png](contact_sheet_seed0.png)" in text and "(chart.png)" in text
    assert "random weights" not in render_report(frame, random_encoders=[], **kwargs)
    # two panels: image metrics (clip_style, clip_text: dino_subject/harmonic were never measured) above the
    # fidelity diagnostic; a measured 0 (base's fidelity) gets a tick; left-out columns are not drawn
    top, bottom = metrics_chart(frame).axes
    assert len(top.patches) == 4 * 2 and len(bottom.patches) == 4 * 2
    assert [t.get_text() for t in bottom.get_legend().get_texts()] == ["subject_fidelity", "style_fidelity"]
    ticks = bottom.collections[0].get_offsets()
    assert len(ticks) == 4 and 0.0 in ticks[:, 1]
    [only] = metrics_chart(frame, leave_out=("clip_style", "clip_text")).axes
    assert len(only.patches) == 4 * 2 and "fidelity" in only.get_title()


# ---- parameters -------------------------------------------------------------------------------

def test_parameter_validation_names_a_bad_method_before_any_run():
    with pytest.raises(ConfigError, match=r"Unknown method kind 'zipora' for merge.methods.zipora. Did you mean 'ziplora'"):
        validate_parameters({"merge": {"methods": {"zipora": {}}}})
    with pytest.raises(ConfigError, match=r"generation.methods is now merge.methods \(conf/base/parameters_merge.yml\)"):
        validate_parameters({"generation": {"methods": {"ziplora": {}}}})  # a conf/local written before the move
    with pytest.raises(ConfigError, match="generation.prompts.style is empty"):
        validate_parameters({"generation": {"prompts": {"style": []}}})
    with pytest.raises(ConfigError, match="image_groups"):
        from_dict(EvaluationConfig, {"image_groups": ["merged"]}, "evaluation")
    validate_parameters({"generation": {}, "evaluation": {}, "joint": {}})


# ---- datasets ---------------------------------------------------------------------------------

def test_lora_set_and_file_bundle_round_trip(tmp_path):
    from ziplora_pipeline.core.lora.io import LoraFile

    lora = LoraFile({"unet.x.lora_A.weight": torch.ones(2, 3)}, {"format": "pt"})
    ds = LoraSetDataset(filepath=str(tmp_path / "methods"))
    ds.save({"peft_ties": lora, "ziplora": lora})
    loaded = ds.load()
    assert sorted(loaded) == ["peft_ties", "ziplora"]
    assert torch.equal(loaded["ziplora"].state_dict["unet.x.lora_A.weight"], torch.ones(2, 3))
    bundle = FileBundleDataset(filepath=str(tmp_path / "report"))
    bundle.save({"report.md": "# hi", "sheet.png": _solid((1, 2, 3), 8), "chart.png": metrics_chart(_frame())})
    files = bundle.load()
    assert files["report.md"] == "# hi" and files["sheet.png"].getpixel((0, 0)) == (1, 2, 3)
    assert files["chart.png"].size[0] > 100
