"""``FileBundleDataset``: a report and the files it links to, as one versioned folder.

A markdown report links its chart and contact sheets by relative path; keeping them in one
folder (``data/08_reporting/evaluation/report/<version>/``) makes every version self-contained:
open ``report.md`` there and the images show.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from kedro.io.core import DatasetError
from PIL import Image

from ._atomic import atomic_path
from ._base import LocalVersionedDataset

TEXT_SUFFIXES = (".md", ".txt", ".csv", ".json", ".html")


class FileBundleDataset(LocalVersionedDataset):
    """``{file name: str | bytes | PIL.Image | matplotlib Figure}`` <-> files in a versioned folder.

    Loads text files as ``str``, PNG/JPEG as ``PIL.Image``, anything else as ``bytes``.
    """

    is_folder = True

    def load(self) -> dict[str, Any]:
        folder = Path(self._load_path())
        if not folder.is_dir():
            raise DatasetError(f"No file bundle at {folder}.")
        return {p.name: _read(p) for p in sorted(folder.iterdir()) if p.is_file()}

    def save(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict) or not data:
            raise DatasetError("FileBundleDataset saves a non-empty dict {file name: content}.")
        folder = self._save_path()
        with atomic_path(folder, directory=True) as tmp:
            for name, content in data.items():
                if "/" in name or name.startswith("."):
                    raise DatasetError(f"FileBundleDataset: {name!r} is not a plain file name.")
                (Path(tmp) / name).write_bytes(_bytes(content))


def _bytes(content: Any) -> bytes:
    if isinstance(content, str):
        return content.encode()
    if isinstance(content, bytes):
        return content
    buf = io.BytesIO()
    if isinstance(content, Image.Image):
        content.save(buf, format="PNG")
    elif hasattr(content, "savefig"):  # a matplotlib Figure
        content.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    else:
        raise DatasetError(f"FileBundleDataset cannot write a {type(content).__name__}.")
    return buf.getvalue()


def _read(path: Path) -> Any:
    if path.suffix in TEXT_SUFFIXES:
        return path.read_text()
    if path.suffix in (".png", ".jpg", ".jpeg"):
        with Image.open(path) as im:
            return im.convert("RGB")
    return path.read_bytes()
