"""Nothing is deleted, overwritten or appended through a symlink: the run-folder helpers refuse a linked folder
before touching anything in it and remove a linked file as a link; ``predict`` refuses a linked output folder and
replaces a stale linked output itself; the shared-folder JSON is read within bounds; printed commands paste."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from focusseg_testdata import write_tiny_dataset
from inference.run_helpers import make_run, write_inputs

from focusseg.errors import PlanError, RunFolderError
from focusseg.io.atomic import append_line, save_json
from focusseg.runfolder import (
    clean_run_folder,
    clear_stale,
    owned_subfolder,
    read_plan,
    read_run_info,
    refuse_link,
    remove_file_or_link,
    replace_link,
    run_lock,
)

VICTIM = {"precious.txt": "mine\n", "case001.nii.gz": "not a prediction\n", "plan.json": "{}\n"}


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    folder = tmp_path / "victim"
    folder.mkdir()
    for name, text in VICTIM.items():
        (folder / name).write_text(text)
    return folder


def _intact(folder: Path) -> None:
    assert {p.name: p.read_text() for p in folder.iterdir()} == VICTIM


def _link_dir(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return link


def test_refuse_link_names_the_link_and_its_target(tmp_path: Path, victim: Path):
    link = _link_dir(tmp_path / "run" / "validation", victim)
    with pytest.raises(RunFolderError) as info:
        refuse_link(link)
    text = str(info.value)
    assert text.startswith(str(link)) and f"is a symlink (to {victim})" in text and "remove the link" in text
    assert "\n" not in text
    assert refuse_link(tmp_path) == tmp_path


def test_owned_subfolder_checks_every_level(tmp_path: Path, victim: Path):
    run = tmp_path / "run"
    _link_dir(run / "validation", victim)
    with pytest.raises(RunFolderError, match="validation: is a symlink"):
        owned_subfolder(run, "validation", "predictions", create=True)
    assert not (victim / "predictions").exists()
    (run / "validation").unlink()
    (run / "validation").mkdir()
    _link_dir(run / "validation" / "reference", victim)
    with pytest.raises(RunFolderError, match="reference: is a symlink"):
        owned_subfolder(run, "validation", "reference")
    made = owned_subfolder(run, "validation", "predictions", create=True)
    assert made.is_dir() and made == run / "validation" / "predictions"
    (run / "validation" / "file").write_text("x")
    with pytest.raises(RunFolderError, match="not a folder"):
        owned_subfolder(run, "validation", "file")
    with pytest.raises(ValueError):
        owned_subfolder(run, "../elsewhere")
    _intact(victim)


def test_clear_stale_refuses_a_linked_folder_and_unlinks_linked_files(tmp_path: Path, victim: Path):
    pred = _link_dir(tmp_path / "validation" / "predictions", victim)
    with pytest.raises(RunFolderError, match="is a symlink"):
        clear_stale(pred, keep={"case000.nii.gz"})
    _intact(victim)
    real = tmp_path / "real"
    real.mkdir()
    (real / "case000.nii.gz").write_text("keep")
    (real / "stale.nii.gz").symlink_to(victim / "precious.txt")
    (real / "stale_dir").symlink_to(victim, target_is_directory=True)
    clear_stale(real, keep={"case000.nii.gz"})
    assert sorted(p.name for p in real.iterdir()) == ["case000.nii.gz"]
    _intact(victim)


def test_replace_link_refuses_a_linked_folder(tmp_path: Path, victim: Path):
    ref = _link_dir(tmp_path / "validation" / "reference", victim)
    with pytest.raises(RunFolderError, match="is a symlink"):
        replace_link(tmp_path / "label.nii.gz", ref / "case001.nii.gz")
    _intact(victim)
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "case001.nii.gz").symlink_to(victim / "case001.nii.gz")
    replace_link(tmp_path / "label.nii.gz", tmp_path / "own" / "case001.nii.gz")  # the link itself is replaced
    assert (tmp_path / "own" / "case001.nii.gz").readlink() == tmp_path / "label.nii.gz"
    _intact(victim)


def test_clean_run_folder_removes_links_never_their_targets(tmp_path: Path, victim: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").symlink_to(victim / "plan.json")
    (run / "log.jsonl").symlink_to(victim / "precious.txt")
    _link_dir(run / "tensorboard", victim)
    (run / "validation").mkdir()
    _link_dir(run / "validation" / "predictions", victim)  # inside a real product folder: rmtree unlinks it
    (run / "notes.txt").write_text("the user's")
    removed = {p.name for p in clean_run_folder(run)}
    assert {"plan.json", "log.jsonl", "tensorboard", "validation"} <= removed
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    _intact(victim)


def test_clean_run_folder_refuses_a_linked_run_folder(tmp_path: Path, victim: Path):
    link = _link_dir(tmp_path / "run", victim)
    with pytest.raises(RunFolderError, match="is a symlink"):
        clean_run_folder(link)
    _intact(victim)


def test_remove_file_or_link(tmp_path: Path, victim: Path):
    (tmp_path / "l").symlink_to(victim / "precious.txt")
    (tmp_path / "d").symlink_to(victim, target_is_directory=True)
    (tmp_path / "f").write_text("x")
    (tmp_path / "real_dir").mkdir()
    assert remove_file_or_link(tmp_path / "l") and remove_file_or_link(tmp_path / "d")
    assert remove_file_or_link(tmp_path / "f") and not remove_file_or_link(tmp_path / "real_dir")
    assert not remove_file_or_link(tmp_path / "absent")
    assert (tmp_path / "real_dir").is_dir()
    _intact(victim)


def test_append_line_and_lock_refuse_links(tmp_path: Path, victim: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").symlink_to(victim / "precious.txt")
    with pytest.raises(RunFolderError, match="log.jsonl: is a symlink"):
        append_line(run / "log.jsonl", '{"epoch": 0}')
    (run / ".lock").symlink_to(victim / "precious.txt")
    with pytest.raises(RunFolderError, match=r"\.lock: is a symlink"), run_lock(run):
        pass
    _intact(victim)
    save_json({"a": 1}, run / "log.jsonl")  # an atomic write replaces the link itself
    assert not (run / "log.jsonl").is_symlink()
    _intact(victim)


def test_run_and_plan_files_are_read_within_bounds(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RunFolderError, match="run.json: unreadable run record"):
        read_run_info(run)
    (run / "run.json").write_text('{"fold": NaN}')
    with pytest.raises(RunFolderError, match="run.json"):
        read_run_info(run)
    (run / "plan.json").write_text("{" * 50_000)
    with pytest.raises(PlanError, match="plan.json: unreadable plan"):
        read_plan(run / "plan.json")


def test_predict_command_pastes_back_into_the_same_argv(tmp_path: Path):
    from focusseg.workflows.best import predict_command

    a, b = tmp_path / "cv a;b", tmp_path / "cv $(touch x) 'q'"
    post = tmp_path / "best dir" / "ensembles" / "a+b" / "postprocessing.json"
    cmd = predict_command({"members": [str(a), str(b)], "postprocessing_file": str(post)})
    assert shlex.split(cmd) == ["focusseg", "predict", str(a), "IN_DIR", "OUT_DIR", "--ensemble", str(b),
                                "--postprocessing-file", str(post)]
    assert predict_command({"members": ["cv/plain"]}) == "focusseg predict cv/plain IN_DIR OUT_DIR"


def test_best_refuses_crossval_json_without_data_dir_or_too_deep(tmp_path: Path):
    from focusseg.workflows.best import find_best

    cv = tmp_path / "cv"
    cv.mkdir()
    (cv / "crossval.json").write_text(json.dumps({"folds": {}}))
    with pytest.raises(RunFolderError, match="crossval.json: names no data_dir"):
        find_best([cv], tmp_path / "best", progress=False)
    (cv / "crossval.json").write_text(json.dumps({"folds": {}, "data_dir": "/d", "postprocessing": "x"}))
    with pytest.raises(RunFolderError, match="crossval.json: its postprocessing"):
        find_best([cv], tmp_path / "best", progress=False)
    (cv / "crossval.json").write_text("[" * 100_000)
    with pytest.raises(RunFolderError, match="crossval.json"):
        find_best([cv], tmp_path / "best", progress=False)


# ------------------------------------------------------------------------------------------ predict folders
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("symlink_run") / "run")


def _inputs(folder: Path) -> Path:
    write_inputs(folder, n_cases=2)
    return folder


def test_predict_refuses_a_linked_output_folder(tmp_path: Path, victim: Path, tiny_run: Path):
    from focusseg.inference.folders import predict_folder
    from focusseg.inference.predictor import Predictor

    out = _link_dir(tmp_path / "preds", victim)
    with pytest.raises(RunFolderError, match="preds: is a symlink") as info:
        predict_folder(Predictor.from_run(tiny_run, device="cpu"), _inputs(tmp_path / "in"), out, progress=False)
    assert str(victim) in (info.value.hint or "")
    _intact(victim)


def test_predict_replaces_a_stale_linked_output_itself(tmp_path: Path, victim: Path, tiny_run: Path):
    from focusseg.inference.folders import predict_folder
    from focusseg.inference.predictor import Predictor

    out = tmp_path / "out"
    out.mkdir()
    (out / "case001.nii.gz").symlink_to(victim / "case001.nii.gz")
    (out / "case000_uncertainty.nii.gz").symlink_to(victim / "precious.txt")
    written = predict_folder(Predictor.from_run(tiny_run, device="cpu"), _inputs(tmp_path / "in"), out,
                             progress=False)
    assert sorted(p.name for p in written) == ["case000.nii.gz", "case001.nii.gz"]
    assert not (out / "case001.nii.gz").is_symlink() and (out / "case001.nii.gz").stat().st_size > 100
    _intact(victim)


def test_validation_into_a_linked_folder_is_refused(tmp_path: Path, victim: Path):
    """The final validation of a run never clears or writes a linked validation folder (refused first)."""
    import torch

    from focusseg.workflows.validate import validate_raw

    data = write_tiny_dataset(tmp_path / "D", n_cases=2)
    run = tmp_path / "run"
    _link_dir(run / "validation" / "predictions", victim)
    with pytest.raises(RunFolderError, match="predictions: is a symlink"):
        validate_raw(run, data, ["case000"], torch.device("cpu"), progress=False)
    _intact(victim)
