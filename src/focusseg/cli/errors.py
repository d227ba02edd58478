"""The one error handler of the ``focusseg`` command: every exception a command raises becomes a few lines on
stderr and an exit code, never a wall of traceback.

* an expected error (:class:`~focusseg.errors.FocussegError`): ``error: <file>: <problem>`` (one line per problem
  of a :class:`~focusseg.errors.CheckFailed`, per failed case of a :class:`~focusseg.errors.PartialFailure`),
  ``hint: ...`` where one helps, and the error's own exit code (1, usage 2);
* click's usage errors: click's message and exit code; an interruption: exit 130;
* an optional dependency not installed (a ``ModuleNotFoundError`` for one of :data:`OPTIONAL_PACKAGES`): one
  line naming the package and the ``pip install 'focusseg[EXTRA]'`` that adds it, exit 1;
* a peer process lost while training on several: exit 4; anything else (a bug): one line naming the innermost
  frame, exit 3. ``--debug`` adds the traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer


def run_handled(call: Callable[[], Any], debug: bool = False) -> int:
    """Run a command (``call``) under the handler (module docstring).

    Args:
        call: runs the command; an ``int`` it returns is the exit code (click's ``Exit``), anything else means 0.
        debug: also print the traceback of an error (``--debug`` on the command line).

    Returns:
        The exit code: 0 on success, the error's code otherwise.
    """
    from focusseg.errors import CheckFailed, FocussegError, one_line

    click_error, abort = click_exception_types()
    try:
        rv = call()
        return rv if isinstance(rv, int) else 0
    except click_error as exc:  # bad options: click's own usage message
        exc.show()
        return int(exc.exit_code)
    except (*abort, KeyboardInterrupt):
        print_error("interrupted")
        return 130
    except FocussegError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        details = detail_lines(exc)
        for line in details:
            print_error(line)
        summary = exc.one_line()
        if details and isinstance(exc, CheckFailed):
            summary = f"{len(exc.problems)} problems found (each named above)"
        print_error(summary, exc.hint)
        return int(exc.exit_code)
    except Exception as exc:  # a bug, or a library failure we did not foresee: never a wall of traceback
        from focusseg.engine.distributed import peer_failure

        missing = missing_optional(exc)
        if missing is not None:  # an optional dependency not installed: how to install it, not a bug report
            if debug:
                import traceback

                traceback.print_exc()
            print_error(missing)
            return 1
        lost = peer_failure(exc)
        if lost is not None:  # training on several processes: another rank died or stopped answering
            print_error(lost, "the first error above (or torchrun's summary) names the rank that failed; resume "
                              "with --resume")
            return 4
        if debug:
            import traceback

            traceback.print_exc()
        message = one_line(exc) or "(no message)"
        print_error(f"unexpected {type(exc).__name__}: {message}{innermost_frame(exc)}",
                    None if debug else "run again with --debug for the traceback, and please report it")
        return 3


#: The optional packages (import names) and the extra of ``pyproject.toml`` that installs each (the first that
#: does, where several do: SimpleITK alone is ``formats``).
OPTIONAL_PACKAGES = {"SimpleITK": "formats", "pydicom": "dicom", "highdicom": "dicom", "tensorboard": "tracking",
                     "onnx": "export", "onnxruntime": "export", "onnxscript": "export", "safetensors": "export",
                     "dynamic_network_architectures": "nnunet"}


def missing_optional(exc: BaseException) -> str | None:
    """``needs the optional package X: pip install 'focusseg[EXTRA]'`` when ``exc`` (or an exception it was
    raised from) is a ``ModuleNotFoundError`` for one of :data:`OPTIONAL_PACKAGES`; None otherwise.

    Args:
        exc: the exception a command raised.

    Returns:
        the error line, or None (a missing module that is no optional dependency is a bug report).
    """
    seen: BaseException | None = exc
    for _ in range(8):  # the explicit ``raise ... from`` chain, bounded
        if seen is None:
            break
        name = getattr(seen, "name", None) if isinstance(seen, ModuleNotFoundError) else None
        top = name.split(".")[0] if isinstance(name, str) else None
        if top in OPTIONAL_PACKAGES:
            return f"needs the optional package {top}: pip install 'focusseg[{OPTIONAL_PACKAGES[top]}]'"
        seen = seen.__cause__
    return None


def click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """click's ``ClickException`` and ``Abort`` types: those of the click package and of the click typer vendors
    (``typer._click``, typer >= 0.2x), whichever are installed -- typer raises its own, so both are caught."""
    errors: list[type] = []
    aborts: list[type] = [typer.Abort]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        errors.append(VendoredClickException)
    except ImportError:
        pass
    try:
        from click.exceptions import Abort, ClickException

        errors.append(ClickException)
        aborts.append(Abort)
    except ImportError:
        pass
    return tuple(dict.fromkeys(errors)), tuple(dict.fromkeys(aborts))


def detail_lines(exc: BaseException, limit: int = 50) -> list[str]:
    """One line per problem of a :class:`CheckFailed` (of more than one) or per failed case of a
    :class:`PartialFailure`, at most ``limit`` and a ``... N more`` line; other errors have none."""
    from focusseg.errors import CheckFailed, PartialFailure, one_line

    if isinstance(exc, CheckFailed) and len(exc.problems) > 1:
        items = [one_line(p) for p in exc.problems]
    elif isinstance(exc, PartialFailure):
        items = [one_line(f) for f in exc.failures]
    else:
        return []
    if len(items) > limit:
        items = items[:limit] + [f"... {len(items) - limit} more"]
    return items


def print_error(message: str, hint: str | None = None) -> None:
    """``error: <message>`` (and ``hint: <hint>``) on stderr."""
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def innermost_frame(exc: BaseException) -> str:
    """`` (at <file>:<line>)`` of the frame that raised ``exc``, or ``""`` without a traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    return f" (at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno})"
