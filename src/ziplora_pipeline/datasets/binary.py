"""``BinaryDataset``: a file's raw bytes (decoding is the node's job, so errors can name the file)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io.core import AbstractDataset, get_protocol_and_path


class BinaryDataset(AbstractDataset[bytes, bytes]):
    """Loads/saves bytes through fsspec; used under ``PartitionedDataset`` for raw image folders."""

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None):
        protocol, path = get_protocol_and_path(filepath)
        self._protocol = protocol
        self._filepath = PurePosixPath(path)
        self._fs = fsspec.filesystem(protocol)
        self.metadata = metadata

    def load(self) -> bytes:
        with self._fs.open(str(self._filepath), "rb") as f:
            return f.read()

    def save(self, data: bytes) -> None:
        with self._fs.open(str(self._filepath), "wb") as f:
            f.write(data)

    def _exists(self) -> bool:
        return self._fs.exists(str(self._filepath))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "protocol": self._protocol}
