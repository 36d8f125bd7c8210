"""Atomic local writes: a crash mid-save must never leave a file a later load would pick up.

Kedro finds the newest version by globbing ``<filepath>/*/<basename>``; writing to a hidden
temporary name in the same folder and renaming it into place (atomic on POSIX) means the
final name only ever holds a complete file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 and the mode survives the rename: give the file the mode a plain
    ``open()`` / ``mkdir()`` would (0644 / 0755 under the usual umask 022), so other users and tools can read it."""
    mask = _umask()
    if directory:
        for sub in [path, *path.rglob("*")]:
            os.chmod(sub, (0o777 if sub.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_path(final: str | os.PathLike, directory: bool = False):
    """Yield a temporary path next to ``final``; rename it to ``final`` if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp"))
    else:
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.tmp")
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _publish_mode(tmp, directory)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
