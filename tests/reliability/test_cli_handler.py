"""The CLI's one handler: expected errors as ``error: <file>: <problem>``, unexpected ones as one short line
(traceback only with ``--debug``), the real console script behaving the same, exit codes by kind."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from focusseg import cli
from focusseg.errors import CheckFailed, DatasetError, PartialFailure, UsageError


def _run(capsys, argv):
    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture
def boom(monkeypatch):
    """``focusseg recipes`` made to raise whatever the test puts in ``boom.exc``."""

    class Box:
        exc: BaseException = KeyError("labels")

    def raising() -> None:
        raise Box.exc

    monkeypatch.setattr("focusseg.recipes.recipe_names", raising)
    return Box


def test_unexpected_error_is_one_line_without_traceback(capsys, boom):
    code, out, err = _run(capsys, ["recipes"])
    assert code == 3
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: unexpected KeyError: 'labels'") and "(at " in lines[0]
    assert lines[1].startswith("hint:") and "--debug" in lines[1]


def test_debug_shows_the_traceback(capsys, boom):
    code, _, err = _run(capsys, ["--debug", "recipes"])
    assert code == 3 and "Traceback" in err and "KeyError" in err


@pytest.mark.parametrize("exc, code", [
    (DatasetError("labels must be a dict", Path("/d/dataset.json")), 1),
    (UsageError("--fold 7 out of range"), 2),
])
def test_expected_error_format_and_exit_code(capsys, boom, exc, code):
    boom.exc = exc
    got, _, err = _run(capsys, ["recipes"])
    assert got == code
    assert err.splitlines()[0] == f"error: {exc}"


def test_multiline_messages_are_folded_to_one_line(capsys, boom):
    boom.exc = DatasetError("affine differs:\n[[1 0]\n [0 1]]", Path("/d/x.nii.gz"))
    _, _, err = _run(capsys, ["recipes"])
    assert err.splitlines() == ["error: /d/x.nii.gz: affine differs: [[1 0] [0 1]]"]


def test_check_failed_and_partial_failure_print_one_line_each(capsys, boom):
    boom.exc = CheckFailed(["/d/a.nii.gz: 3 NaN/inf voxels", "/d/b.nii.gz: empty file"])
    code, _, err = _run(capsys, ["recipes"])
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 1 and errors[:2] == ["error: /d/a.nii.gz: 3 NaN/inf voxels", "error: /d/b.nii.gz: empty file"]
    assert len(errors) == 3 and "2 problems" in errors[2]
    boom.exc = PartialFailure([DatasetError("unreadable", "/in/c_0000.nii.gz")], done=4)
    code, _, err = _run(capsys, ["recipes"])
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 1 and errors == ["error: /in/c_0000.nii.gz: unreadable", "error: 1 case(s) failed, 4 done"]


def test_bad_option_is_a_usage_message(capsys):
    code, out, err = _run(capsys, ["evaluate", "/x"])
    assert code == 2 and "Traceback" not in out + err and "Missing argument" in out + err


def test_console_script_prints_one_line(tmp_path: Path):
    """The installed ``focusseg`` entry point goes through the same handler (real process, real exit code)."""
    exe = Path(sys.executable).with_name("focusseg")
    cmd = [str(exe)] if exe.exists() else [shutil.which("focusseg") or "focusseg"]
    res = subprocess.run([*cmd, "check", str(tmp_path / "no_such_dataset")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1, res.stderr
    errors = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "no_such_dataset" in errors[0] and "Traceback" not in res.stderr


def test_errors_survive_pickling_across_process_pools():
    import pickle

    from focusseg.errors import MissingFileError

    for exc in [DatasetError("bad", "/d/x.nii.gz", hint="fix it"), MissingFileError("gone", "/d/y"),
                CheckFailed(["/d/a: one", "/d/b: two"]), PartialFailure([UsageError("u")], done=2)]:
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc) and back.hint == exc.hint
    assert pickle.loads(pickle.dumps(PartialFailure([UsageError("u")], done=2))).done == 2
