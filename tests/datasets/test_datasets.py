"""Custom Kedro datasets: versioned round trips, and a save that dies mid-way leaves nothing
that a later load or version lookup would pick up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kedro.io.core import DatasetError, Version
from PIL import Image

from ziplora_pipeline.core.lora.io import LoraFile, pack_lora_file
from ziplora_pipeline.datasets import (BinaryDataset, CheckpointStoreDataset, ImageSetDataset, JSONDataset,
                                       LoraSafetensorsDataset, TensorDictDataset)
from ziplora_pipeline.datasets import atomic_files as atomic_files_module
from ziplora_pipeline.datasets import image_set as image_set_module
from ziplora_pipeline.datasets import lora_safetensors as lora_module
from ziplora_pipeline.datasets import tensors as tensors_module

V1, V2 = "2026-01-01T00.00.00.000Z", "2026-01-02T00.00.00.000Z"


def _lora(seed: int) -> LoraFile:
    g = torch.Generator().manual_seed(seed)
    state = {"down.attn.to_q.lora_A.weight": torch.randn(4, 32, generator=g),
             "down.attn.to_q.lora_B.weight": torch.randn(32, 4, generator=g)}
    return pack_lora_file(state, {"r": 4, "lora_alpha": 8, "target_modules": {"to_q"}})


def _images(seed: int) -> dict[str, Image.Image]:
    rng = np.random.default_rng(seed)
    return {f"img_{i}": Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for i in range(3)}


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"m1": torch.randn(8, generator=g), "m2": torch.randn(3, 5, generator=g).t()}  # non-contiguous


def _same_lora(a: LoraFile, b: LoraFile) -> bool:
    return a.metadata == b.metadata and a.state_dict.keys() == b.state_dict.keys() and all(
        torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def _same_images(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CASES = {
    "lora": (LoraSafetensorsDataset, "pytorch_lora_weights.safetensors", _lora, _same_lora),
    "images": (ImageSetDataset, "images", _images, _same_images),
    "tensors": (TensorDictDataset, "merger.safetensors", _tensors, _same_tensors),
    "json": (JSONDataset, "training_log.json", lambda i: {"steps": i, "losses": [0.5] * i}, lambda a, b: a == b),
}


@pytest.fixture(params=sorted(CASES))
def case(request, tmp_path):
    cls, name, make, same = CASES[request.param]
    filepath = str(tmp_path / "ds" / name)
    return request.param, (lambda version=None: cls(filepath=filepath, version=version)), make, same, filepath


def test_versioned_round_trip_and_newest_wins(case):
    _, ds, make, same, filepath = case
    ds(Version(None, V1)).save(make(1))
    ds(Version(None, V2)).save(make(2))
    assert ds(Version(None, None)).exists()
    assert same(ds(Version(None, None)).load(), make(2))  # newest
    assert same(ds(Version(V1, None)).load(), make(1))  # pinned, like --load-versions
    assert not same(make(1), make(2))  # the check can tell them apart


def test_unversioned_round_trip(case):
    _, ds, make, same, _ = case
    ds().save(make(3))
    assert ds().exists()
    assert same(ds().load(), make(3))


class DiskFull(OSError):
    pass


def _fail_midway(monkeypatch, kind: str) -> None:
    """Make the dataset's writer put partial bytes at the path it was given, then die."""
    def partial_then_raise(path):
        with open(path, "wb") as f:
            f.write(b"\x00" * 37)  # a torn header
        raise DiskFull("No space left on device")

    if kind == "lora":
        monkeypatch.setattr(lora_module, "save_file", lambda tensors, path, metadata=None: partial_then_raise(path))
    elif kind == "json":
        monkeypatch.setattr(atomic_files_module.JSONDataset, "_write", lambda self, data, path: partial_then_raise(path))
    elif kind == "tensors":
        monkeypatch.setattr(tensors_module, "save_file", lambda tensors, path, metadata=None: partial_then_raise(path))
    else:  # images: the second PNG of the set fails half-written
        real_save, calls = Image.Image.save, []

        def save(self, fp, *args, **kwargs):
            calls.append(fp)
            if len(calls) == 2:
                partial_then_raise(fp)
            return real_save(self, fp, *args, **kwargs)

        monkeypatch.setattr(image_set_module.Image.Image, "save", save)


def test_failed_first_save_leaves_no_loadable_version(case, monkeypatch):
    kind, ds, make, _, filepath = case
    _fail_midway(monkeypatch, kind)
    with pytest.raises(DatasetError, match="No space left on device"):  # kedro wraps the writer's error
        ds(Version(None, V1)).save(make(1))
    monkeypatch.undo()

    latest = ds(Version(None, None))
    assert not latest.exists()
    with pytest.raises(DatasetError):  # VersionNotFoundError: nothing to load
        latest.load()
    leftovers = [p for p in _walk(filepath) if p.is_file()]
    assert leftovers == [], f"a failed save left {leftovers}"


def test_failed_later_save_keeps_the_previous_version_current(case, monkeypatch):
    kind, ds, make, same, filepath = case
    ds(Version(None, V1)).save(make(1))
    _fail_midway(monkeypatch, kind)
    with pytest.raises(DatasetError, match="No space left on device"):  # kedro wraps the writer's error
        ds(Version(None, V2)).save(make(2))
    monkeypatch.undo()

    assert same(ds(Version(None, None)).load(), make(1))
    with pytest.raises(DatasetError):
        ds(Version(V2, None)).load()


def _walk(filepath: str):
    from pathlib import Path

    root = Path(filepath)
    return sorted(root.rglob("*")) if root.exists() else []


def test_lora_dataset_rejects_wrong_type_and_names_unreadable_files(tmp_path):
    ds = LoraSafetensorsDataset(filepath=str(tmp_path / "x.safetensors"))
    with pytest.raises(DatasetError, match="saves a LoraFile, got dict"):
        ds.save({"a": torch.zeros(1)})
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DatasetError, match=r"x\.safetensors is not a readable safetensors file"):
        ds.load()


def test_image_set_missing_folder_is_an_error_not_an_empty_set(tmp_path):
    with pytest.raises(DatasetError, match="No image set at"):
        ImageSetDataset(filepath=str(tmp_path / "images")).load()
    with pytest.raises(DatasetError, match="No image set at"):
        ImageSetDataset(filepath=str(tmp_path / "images"), version=Version(V1, None)).load()


def test_image_set_rejects_empty_dict(tmp_path):
    with pytest.raises(DatasetError, match="non-empty dict"):
        ImageSetDataset(filepath=str(tmp_path / "images")).save({})


def test_remote_paths_are_refused(tmp_path):
    for cls in (LoraSafetensorsDataset, ImageSetDataset, TensorDictDataset):
        with pytest.raises(DatasetError, match="local"):
            cls(filepath="s3://bucket/x")


def test_binary_and_checkpoint_store_datasets(tmp_path):
    b = BinaryDataset(filepath=str(tmp_path / "a.bin"))
    assert not b.exists()
    b.save(b"\x00\x01")
    assert b.exists() and b.load() == b"\x00\x01"

    store = CheckpointStoreDataset(path=str(tmp_path / "ckpt"), keep=3).load()
    assert store.folder == tmp_path / "ckpt" and store.keep == 3
    with pytest.raises(DatasetError, match="read-only"):
        CheckpointStoreDataset(path=str(tmp_path / "ckpt")).save({"step": 1})


def test_figure_dataset_writes_a_png_atomically(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ziplora_pipeline.datasets import FigureDataset

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    ds = FigureDataset(filepath=str(tmp_path / "curve.png"), version=Version(None, V1), save_args={"dpi": 50})
    ds.save(fig)
    data = FigureDataset(filepath=str(tmp_path / "curve.png"), version=Version(None, None)).load()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "curve.png" / V1).iterdir()] == ["curve.png"]  # no temporary left


def test_saved_files_and_folders_get_the_mode_a_plain_open_would(tmp_path):
    """mkstemp's 0600 must not survive the rename: other users and tools read the artifacts (umask 022 here)."""
    import os
    import stat

    from ziplora_pipeline.datasets import ImageSetDataset, JSONDataset

    old = os.umask(0o022)
    try:
        JSONDataset(filepath=str(tmp_path / "log.json"), version=Version(None, V1)).save({"a": 1})
        ImageSetDataset(filepath=str(tmp_path / "imgs"), version=Version(None, V1)).save(
            {"x": Image.new("RGB", (8, 8))})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "log.json" / V1 / "log.json") == 0o644
    folder = next((tmp_path / "imgs" / V1).iterdir())
    assert mode(folder) == 0o755 and all(mode(f) == 0o644 for f in folder.rglob("*") if f.is_file())


def test_previews_for_kedro_viz_show_the_newest_version(tmp_path):
    """Kedro-Viz picks the panel from ``preview``'s return annotation (its name) and draws what it returns."""
    import base64
    import inspect
    import io
    import json

    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ziplora_pipeline.datasets import CSVDataset, FigureDataset

    def kind(ds) -> str:
        annotation = inspect.signature(ds.preview).return_annotation
        return getattr(annotation, "__name__", str(annotation))

    for version, value in ((V1, {"a": 1}), (V2, {"a": 2})):
        JSONDataset(filepath=str(tmp_path / "log.json"), version=Version(None, version)).save(value)
    js = JSONDataset(filepath=str(tmp_path / "log.json"), version=Version(None, None))
    assert kind(js) == "JSONPreview" and json.loads(js.preview()) == {"a": 2}

    table = pd.DataFrame({"method": [f"m{i}" for i in range(8)], "score": range(8)})
    CSVDataset(filepath=str(tmp_path / "t.csv"), version=Version(None, V1), save_args={"index": False}).save(table)
    csv = CSVDataset(filepath=str(tmp_path / "t.csv"), version=Version(None, None))
    preview = csv.preview()
    assert kind(csv) == "TablePreview" and preview["columns"] == ["method", "score"] and len(preview["data"]) == 5

    fig = plt.figure()
    FigureDataset(filepath=str(tmp_path / "f.png"), version=Version(None, V1)).save(fig)
    figure = FigureDataset(filepath=str(tmp_path / "f.png"), version=Version(None, None))
    assert kind(figure) == "ImagePreview" and Image.open(io.BytesIO(base64.b64decode(figure.preview()))).format == "PNG"

    ImageSetDataset(filepath=str(tmp_path / "imgs"), version=Version(None, V1)).save(_images(0))
    images = ImageSetDataset(filepath=str(tmp_path / "imgs"), version=Version(None, None))
    strip = Image.open(io.BytesIO(base64.b64decode(images.preview())))
    first = next(iter(_images(0).values()))
    assert kind(images) == "ImagePreview" and strip.height == first.height
    assert strip.width == first.width * min(8, len(_images(0)))
