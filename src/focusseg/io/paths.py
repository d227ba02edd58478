"""Names that become paths: case ids and file endings from a dataset, and the rule that every write stays under
the folder the user named.

A case id or a ``file_ending`` comes from files and ``dataset.json`` a colleague (or an attacker) wrote; both are
joined to output folders. They are refused when they could leave that folder or hide a file: path separators,
``..``, absolute paths, a leading dot, control characters.
"""

from __future__ import annotations

import re
from pathlib import Path

from focusseg.errors import DatasetError, UsageError

#: The file endings focusseg reads and writes (NIfTI through nibabel, the others through SimpleITK).
KNOWN_FILE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".nii.zst")
_ENDING_RE = re.compile(r"^(\.[A-Za-z0-9]{1,8}){1,2}$")
_BAD_ID_RE = re.compile(r"[/\\\x00-\x1f\x7f]")


def validate_file_ending(ending: object, source: str | Path) -> str:
    """``ending`` if it is a plain extension such as ``.nii.gz``; a :class:`DatasetError` naming ``source``
    otherwise."""
    if not isinstance(ending, str) or not _ENDING_RE.match(ending):
        raise DatasetError(f"file_ending {ending!r} is not a plain file extension such as '.nii.gz'", source)
    if ending.lower() not in KNOWN_FILE_ENDINGS:
        raise DatasetError(f"file_ending {ending!r} is not a format focusseg reads "
                           f"({', '.join(KNOWN_FILE_ENDINGS)})", source)
    return ending


def validate_case_id(case_id: object, source: str | Path) -> str:
    """``case_id`` if it can safely name a file inside a folder; a :class:`DatasetError` naming ``source``
    otherwise (separators, ``..``, absolute, leading dot or dash, control characters, empty, > 200 characters)."""
    if not isinstance(case_id, str) or not case_id:
        raise DatasetError(f"case id {case_id!r} is empty or not a string", source)
    if (_BAD_ID_RE.search(case_id) or case_id in (".", "..") or ".." in case_id or case_id.startswith((".", "-"))
            or Path(case_id).is_absolute() or len(case_id) > 200):
        raise DatasetError(f"case id {case_id!r} cannot name a file (path separators, '..', a leading dot or "
                           "dash and control characters are refused)", source)
    return case_id


def safe_child(folder: str | Path, name: str) -> Path:
    """``folder / name``, refused (:class:`UsageError`) unless it stays inside ``folder`` after resolving."""
    folder = Path(folder)
    path = folder / name
    root = folder.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise UsageError(f"refusing to write {name!r}: it would land outside the output folder", folder)
    return path


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (after resolving symlinks)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents
