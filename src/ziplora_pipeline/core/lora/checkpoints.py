"""Resumable training: atomic checkpoints in a folder keyed by what determines the result.

A run's key hashes its config, base model and data, so re-running the same job after an
interruption resumes it, while any change (another rank, other images) starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
_STEP_FILE = re.compile(r"step_(\d{8})\.pt$")


LAST_SAVED: dict = {}  # {"step", "path"} of this process' newest checkpoint (``CheckpointStore.save``)


def run_key(*parts) -> str:
    """Stable 16-hex-digit hash of JSON-able parts and tensors."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class CheckpointStore:
    """``<folder>/<key>/step_XXXXXXXX.pt`` files; the newest ``keep`` are kept."""

    def __init__(self, folder: str | os.PathLike, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def _dir(self, key: str) -> Path:
        return self.folder / key

    def save(self, key: str, step: int, state: dict) -> Path:
        """Write ``state`` for ``step`` atomically (temp file + rename), then prune old steps."""
        d = self._dir(key)
        d.mkdir(parents=True, exist_ok=True)
        final = d / f"step_{step:08d}.pt"
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_")
        os.close(fd)
        try:
            with open(tmp, "wb") as f:  # a file object: torch rejects some temp names as paths
                torch.save(state, f)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for old in self.steps(key)[: -self.keep]:
            (d / f"step_{old:08d}.pt").unlink(missing_ok=True)
        LAST_SAVED["step"], LAST_SAVED["path"] = step, str(final)  # what an interrupt message can point at
        return final

    def steps(self, key: str) -> list[int]:
        d = self._dir(key)
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _STEP_FILE.match(p.name)))

    def latest(self, key: str) -> dict | None:
        """The newest checkpoint's state for ``key``, or ``None``."""
        steps = self.steps(key)
        if not steps:
            return None
        path = self._dir(key) / f"step_{steps[-1]:08d}.pt"
        return torch.load(path, map_location="cpu", weights_only=False)

    def clear(self, key: str) -> None:
        for step in self.steps(key):
            (self._dir(key) / f"step_{step:08d}.pt").unlink(missing_ok=True)
        try:
            self._dir(key).rmdir()
        except OSError:  # missing, or holds files we did not write
            pass

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.folder)!r}, keep={self.keep})"
