"""Bounded JSON reading for files someone else made (plans, manifests, post-processing lists, run and
cross-validation records, dataset.json).

Python's ``json`` accepts inputs that cost far more than their size suggests or fail in ways a user cannot read:
``"[" * 100000`` raises RecursionError, a 5,000-digit integer raises ValueError (CPython's int-conversion limit),
``NaN`` and ``Infinity`` parse as floats. :func:`loads_bounded` and :func:`read_json` turn each of these into one
:class:`~focusseg.errors.FocussegError` line (the class the caller names) that names the file and the problem, and
cap the size read, the nesting depth and the digits of a number before any of it is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from focusseg.errors import FocussegError

#: Largest JSON file read (a plan is a few KiB; a preprocessed store's index a few MiB).
MAX_JSON_BYTES = 64 << 20
#: Deepest nesting of arrays and objects (a plan nests 5 levels).
MAX_JSON_DEPTH = 64
#: Most digits of one JSON number (a 64-bit integer has 20).
MAX_NUMBER_DIGITS = 100


class _Refused(ValueError):
    """A bound hit while parsing (raised from a parse hook, turned into the caller's error)."""


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _Refused(f"a number with {len(text)} digits (at most {MAX_NUMBER_DIGITS})")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS + 20:
        raise _Refused(f"a number of {len(text)} characters (at most {MAX_NUMBER_DIGITS + 20})")
    return float(text)


def _refuse_constant(name: str) -> float:
    raise _Refused(f"{name} is not a JSON number (NaN and Infinity are refused)")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed value, computed without recursion (stops counting past ``limit``)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            d += 1
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((x, d) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def loads_bounded(text: str | bytes, source: str | Path | None = None, error: type[FocussegError] = FocussegError,
                  allow_nan: bool = True, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text within the bounds of this module.

    Args:
        text: the JSON text (bytes are decoded as UTF-8).
        source: the file it came from, named in the error.
        error: the :class:`~focusseg.errors.FocussegError` subclass raised (``PlanError``, ``CheckpointError``...).
        allow_nan: whether ``NaN``/``Infinity`` parse (as Python's json does); False refuses them.
        max_depth: the deepest nesting accepted.

    Returns:
        the parsed value.

    Raises:
        error: not UTF-8, not JSON, nested deeper than ``max_depth``, a number with more than
            :data:`MAX_NUMBER_DIGITS` digits, or NaN/Infinity when ``allow_nan`` is false.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        hooks: dict[str, Any] = {"parse_int": _bounded_int, "parse_float": _bounded_float}
        if not allow_nan:
            hooks["parse_constant"] = _refuse_constant
        value = json.loads(text, **hooks)
    except RecursionError:
        raise error(f"not readable JSON: nested more than {max_depth} levels deep", source) from None
    except _Refused as exc:
        raise error(f"not readable JSON: {exc}", source) from None
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source) from None
    except json.JSONDecodeError as exc:
        raise error(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", source) from None
    except ValueError as exc:  # e.g. CPython's int-conversion digit limit, reached through another path
        raise error(f"not readable JSON ({' '.join(str(exc).split())[:160]})", source) from None
    if _depth(value, max_depth) > max_depth:
        raise error(f"not readable JSON: nested more than {max_depth} levels deep", source)
    return value


def read_json(path: str | Path, error: type[FocussegError] = FocussegError, allow_nan: bool = True,
              max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read and parse a JSON file within bounds (:func:`loads_bounded`), reading at most ``max_bytes``.

    Args:
        path: the file.
        error: the error class raised, naming ``path``.
        allow_nan: whether NaN/Infinity are accepted.
        max_bytes: the largest file read.
        max_depth: the deepest nesting accepted.

    Returns:
        the parsed value.

    Raises:
        error: the file cannot be read, is larger than ``max_bytes``, or is not bounded JSON.
    """
    p = Path(path)
    data = read_bytes_bounded(p, error, max_bytes, "a JSON file focusseg reads")
    return loads_bounded(data, p, error, allow_nan, max_depth)


def read_bytes_bounded(path: str | Path, error: type[FocussegError], max_bytes: int, what: str) -> bytes:
    """A file's bytes, at most ``max_bytes`` of them read (a larger file is refused, not read whole).

    Args:
        path: the file.
        error: the error class raised, naming ``path``.
        max_bytes: the largest file read.
        what: what the file should be, for the message (``"a JSON file focusseg reads"``).

    Returns:
        the file's bytes.

    Raises:
        error: the file cannot be read, or is larger than ``max_bytes``.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot be read ({exc.strerror or type(exc).__name__})", p) from None
    if len(data) > max_bytes:
        raise error(f"is larger than {max_bytes:,} bytes: not {what}", p)
    return data


__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_NUMBER_DIGITS", "loads_bounded", "read_bytes_bounded", "read_json"]
