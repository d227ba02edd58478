"""Atomic file writes: write a temporary file in the target's folder, then rename it over the target, so a
reader (or a run killed mid-write) sees either the old file or the new one, never a torn one. The file gets the
usual permissions (0666 minus the umask), not mkstemp's 0600."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)`` -> ``tmp`` renamed to ``p`` on success, removed on error.
    ``tmp`` keeps ``p``'s suffixes, so writers that choose a format by file ending still work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
