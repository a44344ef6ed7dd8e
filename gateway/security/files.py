"""Secret files created once and whole, even when several gateways start at the same moment on one folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def create_once(path: Path, content: str) -> None:
    """Create `path` (mode 0600) holding `content` unless it exists. The file appears whole (written and
    synced under a temporary name, then linked into place), so no reader sees half a key; a process that
    loses the race keeps the winner's file, which is the one every process then reads."""
    if path.exists():
        return
    temporary = _written_beside(path, content)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)  # unlike a rename, never replaces a file another process made
    finally:
        os.unlink(temporary)


def replace_whole(path: Path, content: str) -> None:
    """Write `path` under a temporary name, then rename it into place: readers see the old or the new."""
    temporary = _written_beside(path, content)
    try:
        os.chmod(temporary, 0o644)  # a public key
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _written_beside(path: Path, content: str) -> str:
    """A new file (mode 0600) in `path`'s folder holding `content`, synced; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary
