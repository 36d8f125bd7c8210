"""Versioned JSON, text, CSV and figure datasets whose saves are atomic.

kedro-datasets' ``json.JSONDataset``, ``text.TextDataset``, ``pandas.CSVDataset`` and
``matplotlib.MatplotlibDataset`` write straight to the versioned path, so a crash mid-write
leaves a truncated file that the next run would load as the newest version. These write to a
hidden temporary file and rename it into place (see ``_atomic``); everything else — the
``<filepath>/<version>/<basename>`` layout, ``--load-versions``, ``save_args`` — is the same.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any

from kedro.io.core import DatasetError, Version
from kedro_datasets._typing import ImagePreview, JSONPreview, TablePreview  # the types Kedro-Viz's previews key on

from ._atomic import atomic_path
from ._base import LocalVersionedDataset


class _AtomicFileDataset(LocalVersionedDataset):
    def __init__(self, *, filepath: str, version: Version | None = None, save_args: dict[str, Any] | None = None,
                 load_args: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None):
        super().__init__(filepath=filepath, version=version, metadata=metadata)
        self._save_args, self._load_args = dict(save_args or {}), dict(load_args or {})

    def load(self) -> Any:
        return self._read(Path(self._load_path()))

    def save(self, data: Any) -> None:
        with atomic_path(self._save_path()) as tmp:
            self._write(data, Path(tmp))

    @abc.abstractmethod
    def _read(self, path: Path) -> Any:
        """The value stored in the complete file ``path``."""

    @abc.abstractmethod
    def _write(self, data: Any, path: Path) -> None:
        """Write ``data`` to ``path`` (a temporary name; the base class renames it into place)."""


class JSONDataset(_AtomicFileDataset):
    """Any JSON-able value; ``save_args`` go to ``json.dump`` (e.g. ``indent: 2``)."""

    def _read(self, path: Path) -> Any:
        return json.loads(path.read_text())

    def _write(self, data: Any, path: Path) -> None:
        path.write_text(json.dumps(data, **self._save_args))

    def preview(self) -> JSONPreview:
        """The newest version, for Kedro-Viz's dataset panel (``kedro viz run --include-previews``)."""
        return JSONPreview(json.dumps(self.load()))


class TextDataset(_AtomicFileDataset):
    def _read(self, path: Path) -> str:
        return path.read_text()

    def _write(self, data: str, path: Path) -> None:
        path.write_text(data)


class CSVDataset(_AtomicFileDataset):
    """A pandas DataFrame; ``save_args``/``load_args`` go to ``to_csv``/``read_csv``."""

    def _read(self, path: Path):
        import pandas as pd

        return pd.read_csv(path, **self._load_args)

    def _write(self, data, path: Path) -> None:
        data.to_csv(path, **self._save_args)

    def preview(self, nrows: int = 5) -> TablePreview:
        """The newest version's first ``nrows`` rows, in the split form Kedro-Viz draws as a table."""
        import pandas as pd

        table = pd.read_csv(self._load_path(), **{**self._load_args, "nrows": nrows})
        return TablePreview(table.to_dict(orient="split"))


class FigureDataset(_AtomicFileDataset):
    """A matplotlib figure saved as an image (``save_args`` go to ``savefig``, e.g. ``dpi``); loads bytes."""

    def _read(self, path: Path) -> bytes:
        return path.read_bytes()

    def _write(self, data, path: Path) -> None:
        if not hasattr(data, "savefig"):
            raise DatasetError(f"FigureDataset saves a matplotlib Figure, got {type(data).__name__}.")
        args = {"format": Path(self._filepath).suffix.lstrip(".") or "png", **self._save_args}
        data.savefig(path, **args)  # format explicit: the temporary name has no suffix
        import matplotlib.pyplot as plt

        plt.close(data)  # figures are saved once; keep long runs from accumulating them

    def preview(self) -> ImagePreview:
        """The newest saved image, base64 (as kedro-datasets' MatplotlibDataset previews)."""
        import base64

        return ImagePreview(base64.b64encode(self.load()).decode("ascii"))
