"""The errors focusseg expects: bad input, everyday mistakes, unusable files.

Every expected failure is a :class:`FocussegError` whose message names the file (or folder) and the problem in
one line; the CLI prints it as ``error: <path>: <problem>`` (plus ``hint: ...`` where one helps) and exits with
:attr:`FocussegError.exit_code`, never with a traceback. Anything else is a bug: the handler prints one short line
and the traceback only with ``--debug``.

The classes also derive from the built-in exception a caller would have caught before (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` keeps working. The hierarchy, with what each
class is for: ``docs/errors.md``.
"""

from __future__ import annotations

from pathlib import Path


class FocussegError(Exception):
    """An expected error. ``str(e)`` is ``"<path>: <problem>"`` (or just the problem when no file is involved)."""

    exit_code: int = 1

    def __init__(self, problem: str, path: str | Path | None = None, hint: str | None = None) -> None:
        self.problem = str(problem)
        self.path = None if path is None else Path(path)
        self.hint = hint
        super().__init__(self.problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path is not None else self.problem

    def one_line(self) -> str:
        """The message with any embedded newlines folded, as the CLI prints it."""
        return one_line(self)

    def __reduce__(self):  # survive process pools with path, hint and extra fields (problems, failures)
        return (_rebuild, (type(self), self.args, self.__dict__.copy()))


def one_line(exc: BaseException, typed: bool = False) -> str:
    """An exception's message on one line: every run of whitespace (newlines, tabs, indentation of a wrapped
    library message) folded to one space, so it fits an ``error:`` line, a report cell or a log record.

    Args:
        exc: the exception (any object whose ``str`` is its message).
        typed: prefix the exception's class name, ``"<TypeName>: <message>"``, where the type says more than
            the text (``KeyError: 'x'``, an empty ``OSError``).

    Returns:
        ``" ".join(str(exc).split())``, with ``"<TypeName>: "`` in front when ``typed``; empty for an empty
        message (callers that need a word there add their own fallback).
    """
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if typed else text


def _rebuild(cls: type, args: tuple, state: dict) -> FocussegError:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class DatasetError(FocussegError, ValueError):
    """dataset.json, the folder layout, case ids, splits or label declarations."""


class ImageError(DatasetError):
    """One image or label file that cannot be read or used (the message names it)."""


class CheckFailed(DatasetError):
    """``focusseg check`` found problems before any work started. ``problems`` holds one
    :class:`~focusseg.data.check.Problem` (or any object whose ``str`` is ``"<file>: <problem>"``) per line; the CLI
    prints every one as ``error: <file>: <problem>``."""

    def __init__(self, problems: list, path: str | Path | None = None, hint: str | None = None) -> None:
        self.problems = list(problems)
        first = str(self.problems[0]) if self.problems else "dataset check failed"
        more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
        super().__init__(first + more, None, hint or "fix the files named above, or pass --no-check to skip the check")


class MissingFileError(FocussegError, FileNotFoundError):
    """A file or folder that should exist does not."""

    def __init__(self, problem: str, path: str | Path | None = None, hint: str | None = None) -> None:
        FocussegError.__init__(self, problem, path, hint)

    def __str__(self) -> str:  # OSError has its own __str__
        return FocussegError.__str__(self)

    def __reduce__(self):
        return FocussegError.__reduce__(self)


class PlanError(FocussegError, ValueError):
    """A plan that cannot work on this dataset or device."""


class CheckpointError(FocussegError, ValueError):
    """A checkpoint or artefact that is missing, truncated, or not loadable without executing code."""


class UsageError(FocussegError, ValueError):
    """Arguments that contradict each other, or the state of the folders they name."""

    exit_code = 2


class RunFolderError(UsageError):
    """A run folder that is in use by another process, or was made for another fold or plan."""


class TrainingError(FocussegError, RuntimeError):
    """Training cannot go on (e.g. the loss was non-finite for N steps in a row)."""


class PartialFailure(FocussegError):
    """A command that works case by case (predict a folder) finished the cases it could; ``failures`` holds one
    :class:`FocussegError` per case that failed. The CLI prints one ``error:`` line per failure and exits 1."""

    def __init__(self, failures: list[FocussegError], done: int, what: str = "case(s)") -> None:
        self.failures = list(failures)
        self.done = done
        super().__init__(f"{len(self.failures)} {what} failed, {done} done")


__all__ = [
    "CheckFailed",
    "CheckpointError",
    "DatasetError",
    "FocussegError",
    "ImageError",
    "MissingFileError",
    "PartialFailure",
    "PlanError",
    "RunFolderError",
    "TrainingError",
    "UsageError",
    "one_line",
]
