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
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
