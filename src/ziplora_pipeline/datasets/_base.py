"""Shared base of the project's versioned local datasets (one file, or one folder, per version)."""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Any

from kedro.io.core import AbstractVersionedDataset, DatasetError, Version, get_filepath_str, get_protocol_and_path


class LocalVersionedDataset(AbstractVersionedDataset):
    """``<filepath>/<version>/<basename>`` on the local filesystem.

    Local only because saves are atomic renames (see ``_atomic``), which object stores lack.
    Subclasses implement ``load``/``save`` with ``self._load_path()`` / ``self._save_path()``
    and set ``is_folder`` when one version is a folder rather than a file.
    """

    is_folder = False

    def __init__(self, *, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol != "file":
            raise DatasetError(f"{type(self).__name__} writes local files only, got {filepath!r}.")
        self._protocol = protocol
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=os.path.exists)

    def _load_path(self) -> str:
        return get_filepath_str(self._get_load_path(), self._protocol)

    def _save_path(self) -> str:
        return get_filepath_str(self._get_save_path(), self._protocol)

    def _exists(self) -> bool:
        try:
            path = self._load_path()
        except DatasetError:  # no version saved yet
            return False
        return os.path.isdir(path) if self.is_folder else os.path.isfile(path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version}
