"""Corpus entries for shared run, cross-validation and prediction folders: symlinks planted where focusseg cleans
or writes (a victim folder outside must keep every file, unchanged: the snapshot of ``test_corpus.py`` hashes it),
numbers that stop being finite on the way through inference, and ``crossval.json`` files that are not what
``best`` expects; paths with spaces and ``;`` in the printed command. Entries that need an environment variable
(a stray ``WORLD_SIZE``) are tests of their own in ``test_shared_folders.py``."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from .conftest import TINY_PLAN, Sandbox
from .corpus import Entry, case

#: The files a victim folder holds: what a cleaning or overwrite through a link would delete or replace.
VICTIM_FILES = {"precious.txt": "somebody else's notes\n", "case005.nii.gz": "not a prediction\n",
                "case999.nii.gz": "an older result\n", "plan.json": "{\"mine\": true}\n"}


def victim(sb: Sandbox, name: str = "victim") -> Path:
    """A folder outside everything focusseg may write, holding :data:`VICTIM_FILES`."""
    folder = sb.root / "in" / name
    folder.mkdir(parents=True)
    for file, text in VICTIM_FILES.items():
        (folder / file).write_text(text)
    return folder


def victim_intact(folder: Path):
    """An ``after`` check: every victim file still there with its content, and nothing added."""
    def check() -> None:
        found = {p.name: p.read_text() for p in folder.iterdir()}
        assert found == VICTIM_FILES, f"{folder} changed: {sorted(found)}"

    return check


def tiny_recipe(sb: Sandbox) -> Path:
    """A recipe file with the corpus's tiny plan (trains in seconds)."""
    path = sb.root / "in" / "tiny_recipe.json"
    if not path.exists():
        path.write_text(json.dumps({"name": "tiny", "plan": TINY_PLAN}))
    return path


def template_data(sb: Sandbox) -> Path:
    """A copy of the dataset the template run was trained on (5 training cases, 2 test cases)."""
    return sb.dataset("DataTs", n_cases=5, with_test=True)


def cv_folder(sb: Sandbox, path: Path, pooled: bool = True) -> Path:
    """A cross-validation folder at ``path`` whose fold 0 is a copy of the template run (finished), with the
    planner plan in place and, when ``pooled``, ``crossval.json`` and the pooled evaluation."""
    from focusseg.workflows.crossval import pool_crossval

    path.mkdir(parents=True)
    shutil.copytree(sb.templates["_run"], path / "fold_0", symlinks=True)
    shutil.copy(path / "fold_0" / "plan.json", path / "plan_planner.json")
    if pooled:
        pool_crossval(path, sb.templates["_data_ts"], progress=False)
    return path


def overflowing_weights(run: Path) -> None:
    """Scale the last layer of ``run``'s best checkpoint to +-3e38: finite weights (loading accepts them) whose
    activations overflow, so the logits hold NaN/inf."""
    import torch

    from focusseg.io.checkpoint import save_atomic

    path = run / "checkpoint_best.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = state["network"]
    last = [k for k, v in net.items() if v.is_floating_point() and k.endswith("weight") and v.ndim >= 2][-1]
    gen = torch.Generator().manual_seed(0)
    net[last] = torch.where(torch.rand(net[last].shape, generator=gen) < 0.5, -3e38, 3e38).to(net[last].dtype)
    save_atomic(state, path)


# ------------------------------------------------------------------------------------------------- crossval
@case("crossval")
def crossval_pool_into_symlinked_predictions(sb: Sandbox) -> Entry:
    """CV/validation/predictions links to a victim: pooling would link cases into it and unlink its 'stale'
    files. Refused before anything is written or removed there."""
    data = template_data(sb)
    cv = cv_folder(sb, sb.out / "cv", pooled=False)
    (cv / "validation").mkdir()
    (cv / "validation" / "predictions").symlink_to(victim(sb), target_is_directory=True)
    return Entry(["crossval", data, "--out", cv, "--folds", "0", "--no-progress", "--device", "cpu"],
                 "predictions", after=victim_intact(sb.root / "in" / "victim"))


@case("crossval")
def crossval_fold_folder_is_a_symlink(sb: Sandbox) -> Entry:
    """CV/fold_1 links to a victim folder: training fold 1 would write (and, with --overwrite, clean) there."""
    data = template_data(sb)
    cv = cv_folder(sb, sb.out / "cv", pooled=False)
    (cv / "fold_1").symlink_to(victim(sb), target_is_directory=True)
    return Entry(["crossval", data, "--out", cv, "--folds", "1", "--overwrite", "--recipe", tiny_recipe(sb),
                  "--no-progress", "--device", "cpu"], "fold_1", after=victim_intact(sb.root / "in" / "victim"))


# ---------------------------------------------------------------------------------------------------- train
@case("train")
def train_overwrite_symlinked_validation(sb: Sandbox) -> Entry:
    """A run folder whose validation/ links to a victim, trained again with --overwrite: the link is removed as a
    link (never the victim's files), and the run trains into a real validation folder (cope)."""
    data = template_data(sb)
    shutil.copytree(sb.templates["_run"], sb.out, symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(sb.out / "validation")
    (sb.out / "validation").symlink_to(victim(sb), target_is_directory=True)

    def after() -> None:
        victim_intact(sb.root / "in" / "victim")()
        assert not (sb.out / "validation").is_symlink() and (sb.out / "validation" / "predictions").is_dir()

    return Entry(["train", data, "--out", sb.out, "--overwrite", "--recipe", tiny_recipe(sb), "--no-progress",
                  "--device", "cpu"], None, refuse=False, after=after)


@case("train")
def train_resume_symlinked_validation_predictions(sb: Sandbox) -> Entry:
    """A run folder whose validation/predictions links to a victim, resumed: the final validation would clear
    'stale' files there. Refused before training starts."""
    data = template_data(sb)
    shutil.copytree(sb.templates["_run"], sb.out, symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(sb.out / "validation" / "predictions")
    (sb.out / "validation" / "predictions").symlink_to(victim(sb), target_is_directory=True)
    return Entry(["train", data, "--out", sb.out, "--resume", "--no-progress", "--device", "cpu"], "predictions",
                 after=victim_intact(sb.root / "in" / "victim"))


@case("train")
def train_lock_file_is_a_symlink(sb: Sandbox) -> Entry:
    """run/.lock links to a victim's file: taking the lock truncates and writes the file it opens."""
    data = template_data(sb)
    shutil.copytree(sb.templates["_run"], sb.out, symlinks=True, dirs_exist_ok=True)
    folder = victim(sb)
    (sb.out / ".lock").unlink(missing_ok=True)
    (sb.out / ".lock").symlink_to(folder / "precious.txt")
    return Entry(["train", data, "--out", sb.out, "--resume", "--no-progress", "--device", "cpu"], ".lock",
                 after=victim_intact(folder))


# -------------------------------------------------------------------------------------------------- predict
@case("predict")
def predict_into_symlinked_output_folder(sb: Sandbox) -> Entry:
    """The output folder is a link to a victim holding a file of an output's name: predict would overwrite it."""
    run, imgs = sb.run(), sb.test_images()
    sb.out.mkdir()
    (sb.out / "preds").symlink_to(victim(sb), target_is_directory=True)
    return Entry(["predict", run, imgs, sb.out / "preds", "--device", "cpu"], "preds",
                 after=victim_intact(sb.root / "in" / "victim"))


@case("predict")
def predict_over_a_symlinked_stale_output(sb: Sandbox) -> Entry:
    """An output folder holding case005.nii.gz as a link to a victim's file: the link is replaced by the
    prediction itself, the victim's file is never written (cope)."""
    run, imgs = sb.run(), sb.test_images()
    folder = victim(sb)
    sb.out.mkdir()
    (sb.out / "case005.nii.gz").symlink_to(folder / "case005.nii.gz")

    def after() -> None:
        victim_intact(folder)()
        out = sb.out / "case005.nii.gz"
        assert out.is_file() and not out.is_symlink()

    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], None, refuse=False, after=after)


@case("predict")
def predict_weights_that_overflow(sb: Sandbox) -> Entry:
    """Finite weights whose activations overflow: every case stops with one line naming its file (NaN/inf in
    the logits), nothing is written for it, the command exits non-zero."""
    run, imgs = sb.run(), sb.test_images()
    overflowing_weights(run)

    def after() -> None:
        written = sorted(p.name for p in sb.out.glob("*.nii.gz")) if sb.out.exists() else []
        assert written == [], f"segmentations written from non-finite logits: {written}"

    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], "_0000.nii.gz", max_error_lines=3,
                 after=after)


# ----------------------------------------------------------------------------------------------------- best
@case("best")
def best_crossval_json_without_data_dir(sb: Sandbox) -> Entry:
    """crossval.json without data_dir (a TypeError once): one line naming it."""
    cv = sb.root / "in" / "cv"
    cv.mkdir()
    (cv / "crossval.json").write_text(json.dumps({"folds": {"0": {"val_cases": 2}}, "pooled": {"cases": 2}}))
    return Entry(["best", cv, "--out", sb.out / "best", "--device", "cpu"], "crossval.json")


@case("best")
def best_crossval_json_nested_deep(sb: Sandbox) -> Entry:
    """crossval.json nested 100 000 levels deep: refused by the bounded reader, no recursion error."""
    cv = sb.root / "in" / "cv"
    cv.mkdir()
    (cv / "crossval.json").write_text("[" * 100_000 + "]" * 100_000)
    return Entry(["best", cv, "--out", sb.out / "best", "--device", "cpu"], "crossval.json", max_rss_mb=300)


@case("best")
def best_paths_with_spaces_and_semicolons(sb: Sandbox) -> Entry:
    """Cross-validation folders named ``cv a;b`` and ``cv $(touch x)``: ``best`` copes, and the printed predict
    command, pasted into a shell, gives back exactly those paths."""
    a = cv_folder(sb, sb.root / "in" / "cv a;b")
    b = cv_folder(sb, sb.root / "in" / "cv $(touch PWNED) 'q'")
    out = sb.out / "best"

    def after() -> None:
        command = json.loads((out / "best.json").read_text())["predict"]
        argv = shlex.split(command)
        assert argv[:2] == ["focusseg", "predict"] and argv[2] in (str(a), str(b)) and argv[3:5] == ["IN_DIR",
                                                                                                     "OUT_DIR"]

    return Entry(["best", a, b, "--out", out, "--no-pairs", "--device", "cpu"], None, refuse=False, after=after)
