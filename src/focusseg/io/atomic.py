"""Atomic, durable file writes: write a temporary file with a unique name in the target's folder, fsync it,
rename it over the target, then fsync the folder, so a reader (or a run killed mid-write, or a power cut) sees
either the old file or the new one, never a torn one. The file gets the usual permissions (0666 minus the
umask), not mkstemp's 0600. Temporary names start with a dot and end in ``.tmp`` + the target's suffixes, so
every reader that skips dot files skips them. A symlink at the target is replaced itself (the rename replaces the
link): the file it points to is never written."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from focusseg.errors import RunFolderError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temp_name(name: str) -> bool:
    """A dot file or one of :func:`atomic_path`'s temporaries: never a case."""
    return name.startswith(".") or name.endswith(".tmp") or ".tmp." in name


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)`` -> ``tmp`` fsynced and renamed to ``p`` on success, removed on
    error. ``tmp`` keeps ``p``'s suffixes, so writers that choose a format by file ending still work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def append_line(path: str | Path, line: str) -> None:
    """Append one whole line (a single ``write`` on an ``O_APPEND`` descriptor, then fsync): concurrent or
    killed writers never leave half a line followed by another.

    Raises:
        RunFolderError: ``path`` is a symlink (a line is never appended to the file a link points to).
    """
    data = (line.rstrip("\n") + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or Path(path).is_symlink():
            raise RunFolderError("is a symlink: focusseg does not delete or write through links; remove the link",
                                 path) from None
        raise
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def save_json(obj: dict, path: str | Path) -> Path:
    """Write JSON atomically (human-readable, 2-space indent)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
    return path

