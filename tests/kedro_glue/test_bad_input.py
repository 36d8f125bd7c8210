"""Bad input gives one clear error that names the offending key, folder or file."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.helpers import RESOLUTION, SUBJECT_PARAMS
from ziplora_pipeline.core.config_utils import ConfigError
from ziplora_pipeline.core.images import ImageInputError
from ziplora_pipeline.kedro_glue.params import validate_parameters
from ziplora_pipeline.pipelines.data_prep.nodes import prepare_style, prepare_subject

# ---------------------------------------------------------------- parameters

def test_typo_in_nested_key_names_it_and_suggests_the_fix():
    with pytest.raises(ConfigError) as err:
        validate_parameters({"subject": {"lora": {"rnak": 8}}})
    msg = str(err.value)
    assert "'subject.lora.rnak'" in msg
    assert "Did you mean 'subject.lora.rank'?" in msg


def test_unknown_top_level_key_names_it_and_suggests_the_fix():
    with pytest.raises(ConfigError) as err:
        validate_parameters({"subjct": {"lora": {"rank": 4}}})
    msg = str(err.value)
    assert "'subjct'" in msg and "Did you mean 'subject'?" in msg


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        validate_parameters({"base_model": {"zzz": 1}})
    assert "'base_model.zzz'" in str(err.value) and "pretrained_model_name_or_path" in str(err.value)


@pytest.mark.parametrize(("lora", "expected"), [
    ({"rank": 0}, "lora.rank must be a positive integer, got 0"),
    ({"steps": -5}, "lora.steps must be > 0, got -5"),
    ({"alpha": -1}, "lora.alpha must be positive or null, got -1"),
    ({"mixed_precision": "fp8"}, "lora.mixed_precision must be no, fp16 or bf16"),
])
def test_out_of_range_lora_values_name_the_stage_and_key(lora, expected):
    with pytest.raises(ConfigError) as err:
        validate_parameters({"style": {"lora": lora}})
    msg = str(err.value)
    assert expected in msg
    assert "'style.lora'" in msg  # which stage's section


def test_bad_resolution_is_named():
    with pytest.raises(ConfigError, match="data_prep.resolution must be a positive multiple of 8, got 60"):
        validate_parameters({"data_prep": {"resolution": 60}})


def test_valid_parameters_build_typed_configs():
    cfg = validate_parameters({"subject": {"lora": {"rank": 8, "target_modules": ["to_q", "to_v"]}}})
    assert cfg["subject"].lora.rank == 8
    assert cfg["subject"].lora.target_modules == ("to_q", "to_v")  # YAML list -> tuple
    assert cfg["style"].lora.rank == 4  # defaults fill what is not given


# ---------------------------------------------------------------- reference images

def _png(size=(96, 96), mode="RGB", color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def _partitions(files: dict[str, bytes]) -> dict:
    """What PartitionedDataset hands the node: {partition id: load callable}."""
    return {pid: (lambda data=data: data) for pid, data in files.items()}


def _prepare(files: dict[str, bytes]):
    return prepare_subject(_partitions(files), SUBJECT_PARAMS, RESOLUTION)


def test_good_folder_prepares_rgb_squares_and_prompt():
    images, prompt = _prepare({"robot/a.png": _png(), "robot/b.png": _png((120, 80)), "other/c.png": _png()})
    assert sorted(images) == ["a", "b"]  # only the configured folder
    assert all(im.mode == "RGB" and im.size == (RESOLUTION, RESOLUTION) for im in images.values())
    assert prompt["prompt"] == "a photo of sks robot" and prompt["concept"] == "subject"


def test_missing_subject_folder_names_it_and_lists_existing_ones():
    with pytest.raises(ImageInputError) as err:
        _prepare({"robbot/a.png": _png(), "cat/b.png": _png()})
    msg = str(err.value)
    assert "data/01_raw/subjects/robot/" in msg
    assert "['cat', 'robbot']" in msg


def test_folder_with_only_hidden_files_counts_as_empty():
    with pytest.raises(ImageInputError, match="No images in data/01_raw/subjects/robot/"):
        _prepare({"robot/.DS_Store": b"\0\0", "cat/b.png": _png()})


def test_empty_folder_through_partitioned_dataset(tmp_path):
    """Real PartitionedDataset on disk: an empty concept folder is invisible, so it reads as missing."""
    from kedro_datasets.partitions import PartitionedDataset

    (tmp_path / "robot").mkdir()
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "c.png").write_bytes(_png())
    parts = PartitionedDataset(path=str(tmp_path), dataset="ziplora_pipeline.datasets.BinaryDataset").load()
    with pytest.raises(ImageInputError, match=r"No images in data/01_raw/subjects/robot/ .*\['cat'\]"):
        prepare_subject(parts, SUBJECT_PARAMS, RESOLUTION)


def test_all_concept_folders_empty_fails_in_the_dataset_naming_the_path(tmp_path):
    from kedro.io.core import DatasetError
    from kedro_datasets.partitions import PartitionedDataset

    (tmp_path / "robot").mkdir()
    with pytest.raises(DatasetError, match="No partitions found"):
        PartitionedDataset(path=str(tmp_path), dataset="ziplora_pipeline.datasets.BinaryDataset").load()


def test_non_image_file_is_named():
    with pytest.raises(ImageInputError) as err:
        _prepare({"robot/a.png": _png(), "robot/notes.txt": b"shot on a phone, 2024"})
    msg = str(err.value)
    assert "data/01_raw/subjects/robot/notes.txt: not an image file" in msg
    assert "1 unusable subject file(s)" in msg and "a.png" not in msg


def test_zero_byte_png_is_named():
    with pytest.raises(ImageInputError, match=r"robot/empty\.png: the file is empty \(0 bytes\)"):
        _prepare({"robot/a.png": _png(), "robot/empty.png": b""})


def test_truncated_png_is_named():
    noisy = Image.effect_noise((200, 200), 60).convert("RGB")  # incompressible: half the file = half the pixels
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    data = buf.getvalue()
    with pytest.raises(ImageInputError, match=r"robot/cut\.png: the image is corrupt or truncated"):
        _prepare({"robot/cut.png": data[: len(data) // 2]})


def test_too_small_image_is_named_with_its_size():
    with pytest.raises(ImageInputError) as err:
        _prepare({"robot/tiny.png": _png((31, 40))})
    msg = str(err.value)
    assert "robot/tiny.png: 31x40 px is smaller than half the training resolution (64 px)" in msg
    # exactly half is accepted
    images, _ = _prepare({"robot/half.png": _png((32, 32))})
    assert images["half"].size == (RESOLUTION, RESOLUTION)


@pytest.mark.parametrize("side", [12, 20])  # above MAX_IMAGE_PIXELS Pillow warns, above twice that it raises
def test_a_decompression_bomb_is_named_as_such_with_its_file(monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageInputError, match=rf"robot/huge\.png: too many pixels to decode safely .*{side * side}"
                                              r".*decompression-bomb limit of 100 pixels; downscale"):
        _prepare({"robot/huge.png": _png((side, side))})


def test_every_bad_file_is_reported_at_once():
    with pytest.raises(ImageInputError) as err:
        _prepare({"robot/a.png": _png(), "robot/empty.png": b"", "robot/notes.txt": b"x",
                  "robot/tiny.png": _png((8, 8))})
    msg = str(err.value)
    assert msg.startswith("3 unusable subject file(s)")
    for name in ("empty.png", "notes.txt", "tiny.png"):
        assert f"data/01_raw/subjects/robot/{name}" in msg


def test_style_errors_name_the_styles_folder():
    with pytest.raises(ImageInputError, match="data/01_raw/styles/sketch/"):
        prepare_style(_partitions({"other/a.png": _png()}),
                      {"folder": "sketch", "token": "zwx", "noun": "house", "template": "a {noun} in {token} style"},
                      RESOLUTION)


def test_bad_prompt_template_is_a_config_error_naming_the_template():
    params = dict(SUBJECT_PARAMS, template="a photo of {tok}")
    with pytest.raises(ConfigError, match=r"'a photo of \{tok\}' may only use \{token\} and \{noun\}"):
        prepare_subject(_partitions({"robot/a.png": _png()}), params, RESOLUTION)
