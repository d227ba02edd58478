"""The malformed-input corpus: each entry breaks a tiny valid dataset, run folder or prediction folder in one
everyday (or hostile) way and names the command to run, the file its one error line must name, and whether
the command must refuse (non-zero exit) or cope (exit 0). Generated on the fly from tiny arrays: no data is
copied into the repository. ``test_corpus.py`` runs every entry and asserts the trust rules."""

from __future__ import annotations

import gzip
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .conftest import TINY_PLAN, Payload, Sandbox


@dataclass
class Entry:
    argv: list
    culprit: str | None  # a file/folder name the error line must contain (None: any one line)
    refuse: bool = True  # True: non-zero exit with one clear line; False: exit 0
    outputs: list[Path] = field(default_factory=list)  # folders the command may write to (default: sandbox.out)
    after: Callable[[], None] | None = None  # extra assertions after the command
    max_error_lines: int = 2
    max_rss_mb: float = 1024.0  # peak resident memory the command may add (measured: VmHWM reset before it runs)
    max_seconds: float = 120.0  # wall time the command may take


CORPUS: dict[str, tuple[str, Callable[[Sandbox], Entry]]] = {}
#: Which corpus module registered each entry (``corpus``: the first corpus; ``corpus_shared_*``: shared models
#: and folders), for the trust table.
GROUP: dict[str, str] = {}


def case(command: str):
    """Register the decorated ``fn(sandbox) -> Entry`` as a corpus entry named after the function."""
    def register(fn: Callable[[Sandbox], Entry]):
        if fn.__name__ in CORPUS:
            raise KeyError(f"corpus entry {fn.__name__} is registered twice")
        CORPUS[fn.__name__] = (command, fn)
        GROUP[fn.__name__] = fn.__module__.rsplit(".", 1)[-1]
        return fn

    return register


# ------------------------------------------------------------------------------------------------ file makers
def rewrite(path: Path, fn: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    img = nib.load(path)
    data, affine = fn(np.asarray(img.dataobj).copy(), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def header_bomb(path: Path, shape=(1000, 1000, 1000), compress: bool = True) -> None:
    """A NIfTI whose header claims ``shape`` float32 voxels (4 GB at 1000^3) but holds a few bytes."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_zooms((1.0,) * len(shape))
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    blob = hdr.binaryblock + b"\x00" * 4 + np.ones(64, np.float32).tobytes()
    path.write_bytes(gzip.compress(blob) if compress else blob)


def zero_spacing(path: Path, axis: int = 2) -> None:
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    new = nib.Nifti1Image(data, np.eye(4))
    new.header.set_sform(None, code=0)
    new.header.set_qform(None, code=0)
    new.header["pixdim"][1 + axis] = 0.0
    nib.save(new, path)


def corrupt_gzip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(64)
    path.write_bytes(bytes(raw))


def truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def edit_json(path: Path, fn: Callable[[dict], dict | list | str]) -> None:
    d = json.loads(path.read_text())
    path.write_text(json.dumps(fn(d)))


def malicious_checkpoint(path: Path, marker: Path) -> None:
    import torch

    torch.save({"plan": Payload(marker), "network": {}, "epoch": 0}, path)


def marker_absent(marker: Path) -> Callable[[], None]:
    def check() -> None:
        assert not marker.exists(), f"{marker} exists: unpickling a checkpoint executed code"

    return check


def _img(d: Path, case_id: str = "case001", ch: int = 0) -> Path:
    return d / "imagesTr" / f"{case_id}_{ch:04d}.nii.gz"


def _lab(d: Path, case_id: str = "case002") -> Path:
    return d / "labelsTr" / f"{case_id}.nii.gz"


# ----------------------------------------------------------------------------------------------------- check
@case("check")
def dataset_json_missing(sb: Sandbox) -> Entry:
    d = sb.dataset()
    (d / "dataset.json").unlink()
    return Entry(["check", d], "dataset.json")


@case("check")
def dataset_json_not_json(sb: Sandbox) -> Entry:
    d = sb.dataset()
    (d / "dataset.json").write_text("{'name': 'single quotes',")
    return Entry(["check", d], "dataset.json")


@case("check")
def dataset_json_not_an_object(sb: Sandbox) -> Entry:
    d = sb.dataset()
    (d / "dataset.json").write_text("[1, 2, 3]")
    return Entry(["check", d], "dataset.json")


@case("check")
def dataset_json_no_labels(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {k: v for k, v in j.items() if k != "labels"})
    return Entry(["check", d], "dataset.json")


@case("check")
def dataset_json_labels_wrong_type(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "labels": ["background", "sphere"]})
    return Entry(["check", d], "dataset.json")


@case("check")
def dataset_json_label_value_not_int(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "labels": {"background": 0, "sphere": "one"}})
    return Entry(["check", d], "dataset.json")


@case("check")
def dataset_json_channel_names_wrong_type(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "channel_names": "MR"})
    return Entry(["check", d], "dataset.json")


@case("check")
def dataset_json_hostile_file_ending(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "file_ending": "/../../../evil.nii.gz"})
    return Entry(["check", d], "dataset.json")


@case("train")
def train_hostile_file_ending(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "file_ending": "/../../../evil.nii.gz"})
    return Entry(["train", d, "--out", sb.out, "--no-progress", "--no-check"], "dataset.json")


@case("check")
def dataset_json_unknown_file_ending(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "file_ending": ".exe"})
    return Entry(["check", d], "dataset.json")


@case("check")
def nan_voxels(sb: Sandbox) -> Entry:
    d = sb.dataset()
    rewrite(_img(d), lambda x, a: (np.where(x > 2, np.nan, x).astype(np.float32), a))
    return Entry(["check", d], "case001_0000.nii.gz")


@case("check")
def inf_voxels(sb: Sandbox) -> Entry:
    d = sb.dataset()
    rewrite(_img(d), lambda x, a: (np.where(x > 2, np.inf, x).astype(np.float32), a))
    return Entry(["check", d], "case001_0000.nii.gz")


@case("check")
def image_2d_among_3d(sb: Sandbox) -> Entry:
    d = sb.dataset()
    rewrite(_img(d), lambda x, a: (x[:, :, 0], a))
    return Entry(["check", d], "case001")


@case("check")
def image_4d_in_nnunet_layout(sb: Sandbox) -> Entry:
    d = sb.dataset()
    rewrite(_img(d), lambda x, a: (np.stack([x, x, x], -1), a))
    return Entry(["check", d], "case001_0000.nii.gz")


@case("check")
def image_5d(sb: Sandbox) -> Entry:
    d = sb.dataset()
    rewrite(_img(d), lambda x, a: (np.stack([np.stack([x, x], -1)] * 2, -1), a))
    return Entry(["check", d], "case001_0000.nii.gz")


@case("check")
def wrong_channel_count(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "channel_names": {"0": "MR", "1": "MR"}})
    return Entry(["check", d], "_0001.nii.gz", max_error_lines=10)


@case("check")
def missing_channel_file(sb: Sandbox) -> Entry:
    d = sb.dataset(n_channels=2)
    _img(d, "case003", 1).unlink()
    return Entry(["check", d], "case003_0001.nii.gz")


@case("check")
def extra_channel_file(sb: Sandbox) -> Entry:
    d = sb.dataset()
    src = _img(d, "case003", 0)
    (src.parent / "case003_0001.nii.gz").write_bytes(src.read_bytes())
    return Entry(["check", d], "case003_0001.nii.gz")


@case("check")
def empty_channel_file(sb: Sandbox) -> Entry:
    d = sb.dataset(n_channels=2)
    _img(d, "case004", 1).write_bytes(b"")
    return Entry(["check", d], "case004_0001.nii.gz")


@case("check")
def label_shape_mismatch(sb: Sandbox) -> Entry:
    d = sb.dataset()
    rewrite(_lab(d), lambda x, a: (x[:-1], a))
    return Entry(["check", d], "case002.nii.gz")


@case("check")
def channel_affine_mismatch(sb: Sandbox) -> Entry:
    d = sb.dataset(n_channels=2)

    def shift(x, a):
        a[0, 3] += 5.0
        return x, a

    rewrite(_img(d, "case002", 1), shift)
    return Entry(["check", d], "case002_0001.nii.gz")


@case("check")
def zero_spacing_image(sb: Sandbox) -> Entry:
    d = sb.dataset()
    zero_spacing(_img(d, "case003"))
    return Entry(["check", d], "case003_0000.nii.gz", max_error_lines=3)


@case("check")
def undeclared_label(sb: Sandbox) -> Entry:
    d = sb.dataset()
    rewrite(_lab(d, "case004"), lambda x, a: (np.where(x == 2, 7, x).astype(np.uint8), a))
    return Entry(["check", d], "case004.nii.gz")


@case("check")
def non_integer_label(sb: Sandbox) -> Entry:
    d = sb.dataset()
    rewrite(_lab(d), lambda x, a: (x.astype(np.float32) * 0.5, a))
    return Entry(["check", d], "case002.nii.gz", max_error_lines=3)


@case("check")
def label_value_too_large_for_store(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "labels": {**j["labels"], "huge": 40000}})
    rewrite(_lab(d), lambda x, a: (np.where(x == 2, 40000, x).astype(np.int32), a))
    return Entry(["check", d], None, max_error_lines=3)


@case("check")
def truncated_gzip(sb: Sandbox) -> Entry:
    d = sb.dataset()
    truncate(_img(d, "case005"), 0.6)
    return Entry(["check", d], "case005_0000.nii.gz")


@case("check")
def corrupt_gzip_image(sb: Sandbox) -> Entry:
    d = sb.dataset()
    corrupt_gzip(_img(d, "case000"))
    return Entry(["check", d], "case000_0000.nii.gz")


@case("check")
def header_size_bomb(sb: Sandbox) -> Entry:
    d = sb.dataset()
    header_bomb(_img(d, "case001"))
    return Entry(["check", d], "case001_0000.nii.gz", max_error_lines=3)


@case("check")
def header_size_bomb_uncompressed(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "file_ending": ".nii"})
    for p in sorted(d.rglob("*.nii.gz")):
        nib.save(nib.load(p), p.with_name(p.name[:-3]))
        p.unlink()
    header_bomb(d / "imagesTr" / "case001_0000.nii", shape=(400, 400, 400), compress=False)
    return Entry(["check", d], "case001_0000.nii", max_error_lines=3)


@case("check")
def orphan_label(sb: Sandbox) -> Entry:
    d = sb.dataset()
    (d / "labelsTr" / "case099.nii.gz").write_bytes(_lab(d).read_bytes())
    return Entry(["check", d], "case099.nii.gz")


@case("check")
def hostile_case_id(sb: Sandbox) -> Entry:
    d = sb.dataset()
    _img(d, "case001").rename(d / "imagesTr" / "-rf_0000.nii.gz")
    _lab(d, "case001").rename(d / "labelsTr" / "-rf.nii.gz")
    return Entry(["check", d], "-rf", max_error_lines=3)


# ------------------------------------------------------------------------------------------------------ plan
@case("plan")
def plan_thin_slab_terminates(sb: Sandbox) -> Entry:
    d = sb.dataset(shape=(200, 200, 2), n_cases=3)
    return Entry(["plan", d, "--out", sb.out / "plan.json", "--device", "cpu"], None, refuse=False,
                 after=lambda: _assert_patch(sb.out / "plan.json"))


def _assert_patch(plan_path: Path) -> None:
    plan = json.loads(plan_path.read_text())
    assert all(int(p) >= 1 for p in plan["patch_size"]) and len(plan["patch_size"]) == 3


@case("plan")
def plan_single_case(sb: Sandbox) -> Entry:
    d = sb.dataset(n_cases=1)
    return Entry(["plan", d, "--out", sb.out / "plan.json", "--device", "cpu"], None, refuse=False,
                 after=lambda: _assert_patch(sb.out / "plan.json"))


@case("plan")
def plan_runs_check_first(sb: Sandbox) -> Entry:
    d = sb.dataset()
    rewrite(_img(d, "case004"), lambda x, a: (np.where(x > 2, np.nan, x).astype(np.float32), a))
    return Entry(["plan", d, "--out", sb.out / "plan.json"], "case004_0000.nii.gz",
                 after=lambda: _absent(sb.out / "plan.json"))


def _absent(path: Path) -> None:
    assert not path.exists(), f"{path} was written although the command failed"


@case("plan")
def plan_bad_set(sb: Sandbox) -> Entry:
    d = sb.dataset()
    return Entry(["plan", d, "--set", "patch_size"], None)


# ----------------------------------------------------------------------------------------------------- train
def _tiny_recipe(sb: Sandbox, **training) -> Path:
    plan = json.loads(json.dumps(TINY_PLAN))
    plan["training"].update(training)
    p = sb.root / "in" / "tiny_recipe.json"
    p.write_text(json.dumps({"name": "tiny", "plan": plan}))
    return p


@case("train")
def train_runs_check_first(sb: Sandbox) -> Entry:
    d = sb.dataset()
    rewrite(_lab(d, "case003"), lambda x, a: (np.where(x == 1, 9, x).astype(np.uint8), a))
    return Entry(["train", d, "--out", sb.out, "--recipe", _tiny_recipe(sb), "--no-progress"], "case003.nii.gz",
                 after=lambda: _absent(sb.out / "checkpoint_latest.pt"))


@case("train")
def train_noncontiguous_labels_with_class_weighter(sb: Sandbox) -> Entry:
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "labels": {"background": 0, "sphere": 1, "cube": 3}})
    for p in (d / "labelsTr").glob("*.nii.gz"):
        rewrite(p, lambda x, a: (np.where(x == 2, 3, x).astype(np.uint8), a))
    recipe = _tiny_recipe(sb, class_weighter={"name": "pcf"})
    return Entry(["train", d, "--out", sb.out, "--recipe", recipe, "--no-progress"], None,
                 after=lambda: _absent(sb.out / "checkpoint_latest.pt"))


@case("train")
def train_noncontiguous_labels_work_without_weighter(sb: Sandbox) -> Entry:
    """{0, 1, 3}: the network has 4 outputs (index == label value, index 2 never trained), so predictions and
    scores keep the dataset's values."""
    d = sb.dataset()
    edit_json(d / "dataset.json", lambda j: {**j, "labels": {"background": 0, "sphere": 1, "cube": 3}})
    for p in (d / "labelsTr").glob("*.nii.gz"):
        rewrite(p, lambda x, a: (np.where(x == 2, 3, x).astype(np.uint8), a))

    def scored_with_dataset_values() -> None:
        summary = json.loads((sb.out / "summary.json").read_text())
        assert set(summary["final_validation"]["dice_per_label"]) == {"1", "3"}, summary
        for p in (sb.out / "validation" / "predictions").glob("*.nii.gz"):
            assert set(np.unique(np.asarray(nib.load(p).dataobj)).tolist()) <= {0, 1, 3}

    return Entry(["train", d, "--out", sb.out, "--recipe", _tiny_recipe(sb), "--no-progress"], None, refuse=False,
                 after=scored_with_dataset_values)


@case("train")
def train_single_case_numbered_fold(sb: Sandbox) -> Entry:
    d = sb.dataset(n_cases=1)
    return Entry(["train", d, "--out", sb.out, "--fold", "0", "--recipe", _tiny_recipe(sb), "--no-progress"], None)


@case("train")
def train_split_names_missing_case(sb: Sandbox) -> Entry:
    d = sb.dataset()
    (d / "splits_final.json").write_text(json.dumps(
        [{"train": ["case000", "case001", "case404"], "val": ["case002"]}] * 5))
    return Entry(["train", d, "--out", sb.out, "--recipe", _tiny_recipe(sb), "--no-progress"], "splits_final.json")


@case("train")
def train_split_not_json(sb: Sandbox) -> Entry:
    d = sb.dataset()
    (d / "splits_final.json").write_text("[{\"train\": [")
    return Entry(["train", d, "--out", sb.out, "--recipe", _tiny_recipe(sb), "--no-progress"], "splits_final.json")


@case("train")
def train_fold_out_of_range(sb: Sandbox) -> Entry:
    d = sb.dataset()
    return Entry(["train", d, "--out", sb.out, "--fold", "7", "--recipe", _tiny_recipe(sb), "--no-progress"], None)


@case("train")
def train_unknown_recipe(sb: Sandbox) -> Entry:
    d = sb.dataset()
    return Entry(["train", d, "--out", sb.out, "--recipe", "no-such-recipe"], "no-such-recipe")


@case("train")
def train_bad_recipe_json(sb: Sandbox) -> Entry:
    d = sb.dataset()
    bad = sb.root / "in" / "bad_recipe.json"
    bad.write_text("{\"plan\": ")
    return Entry(["train", d, "--out", sb.out, "--recipe", bad], "bad_recipe.json")


@case("train")
def train_bad_set(sb: Sandbox) -> Entry:
    d = sb.dataset()
    return Entry(["train", d, "--out", sb.out, "--set", "training.max_epochs"], None)


@case("train")
def train_resume_without_checkpoint(sb: Sandbox) -> Entry:
    d = sb.dataset()
    return Entry(["train", d, "--out", sb.out, "--resume", "--recipe", _tiny_recipe(sb), "--no-progress"], None,
                 after=lambda: _absent(sb.out / "checkpoint_latest.pt"))


@case("train")
def train_resume_malicious_checkpoint(sb: Sandbox) -> Entry:
    d = sb.dataset()
    run = sb.out
    import shutil

    shutil.copytree(sb.templates["_run"], run, symlinks=True, dirs_exist_ok=True)
    marker = sb.root / "PWNED"
    malicious_checkpoint(run / "checkpoint_latest.pt", marker)
    prev = run / "checkpoint_previous.pt"
    if prev.exists():
        malicious_checkpoint(prev, marker)
    return Entry(["train", d, "--out", run, "--resume", "--no-progress"], "checkpoint_", after=marker_absent(marker))


@case("train")
def train_into_folder_of_another_fold(sb: Sandbox) -> Entry:
    import shutil

    d = sb.dataset()
    shutil.copytree(sb.templates["_run"], sb.out, symlinks=True, dirs_exist_ok=True)
    return Entry(["train", d, "--out", sb.out, "--fold", "1", "--recipe", _tiny_recipe(sb), "--no-progress"],
                 None)


@case("train")
def train_resume_and_overwrite(sb: Sandbox) -> Entry:
    d = sb.dataset()
    return Entry(["train", d, "--out", sb.out, "--resume", "--overwrite"], None)


@case("train")
def train_nonpositive_time_budget(sb: Sandbox) -> Entry:
    d = sb.dataset()
    return Entry(["train", d, "--out", sb.out, "--time-budget", "-5"], None)


@case("train")
def train_nan_learning_stops(sb: Sandbox) -> Entry:
    d = sb.dataset()
    recipe = _tiny_recipe(sb, max_epochs=4, max_nonfinite_steps=3, grad_clip=None,
                          optimizer={"name": "sgd", "lr": 1e30, "momentum": 0.99, "nesterov": True})
    return Entry(["train", d, "--out", sb.out, "--recipe", recipe, "--no-progress"], None,
                 after=lambda: _no_nonfinite_best(sb.out))


def _no_nonfinite_best(run: Path) -> None:
    import torch

    best = run / "checkpoint_best.pt"
    if best.exists():
        state = torch.load(best, map_location="cpu", weights_only=True)
        for k, v in state["network"].items():
            assert torch.isfinite(v).all(), f"checkpoint_best.pt holds non-finite {k}"
    for line in (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").exists() else []:
        json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(f"{c} in log.jsonl")))


# --------------------------------------------------------------------------------------------------- predict
@case("predict")
def predict_out_equals_in(sb: Sandbox) -> Entry:
    run, imgs = sb.run(), sb.test_images()
    return Entry(["predict", run, imgs, imgs, "--device", "cpu"], "imagesTs")


@case("predict")
def predict_malicious_checkpoint(sb: Sandbox) -> Entry:
    run, imgs = sb.run(), sb.test_images()
    marker = sb.root / "PWNED"
    malicious_checkpoint(run / "checkpoint_best.pt", marker)
    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], "checkpoint_best.pt",
                 after=marker_absent(marker))


@case("predict")
def predict_truncated_checkpoint(sb: Sandbox) -> Entry:
    run, imgs = sb.run(), sb.test_images()
    truncate(run / "checkpoint_best.pt", 0.5)
    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], "checkpoint_best.pt")


@case("predict")
def predict_no_checkpoint(sb: Sandbox) -> Entry:
    run, imgs = sb.run(), sb.test_images()
    for p in run.glob("checkpoint_*.pt"):
        p.unlink()
    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], run.name)


@case("predict")
def predict_not_a_checkpoint(sb: Sandbox) -> Entry:
    run, imgs = sb.run(), sb.test_images()
    (run / "checkpoint_best.pt").write_bytes(pickle.dumps([1, 2, 3]))
    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], "checkpoint_best.pt")


@case("predict")
def predict_nan_case_reported_others_done(sb: Sandbox) -> Entry:
    run, imgs = sb.run(), sb.test_images()
    files = sorted(imgs.glob("*_0000.nii.gz"))
    rewrite(files[0], lambda x, a: (np.where(x > 2, np.nan, x).astype(np.float32), a))
    good = files[1].name.replace("_0000", "")

    def others_done() -> None:
        assert (sb.out / good).is_file(), "the valid case was not predicted"
        assert not (sb.out / files[0].name.replace("_0000", "")).exists()

    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], files[0].name, after=others_done)


@case("predict")
def predict_truncated_image_reported_others_done(sb: Sandbox) -> Entry:
    run, imgs = sb.run(), sb.test_images()
    files = sorted(imgs.glob("*_0000.nii.gz"))
    truncate(files[1], 0.5)
    good = files[0].name.replace("_0000", "")
    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], files[1].name,
                 after=lambda: _exists(sb.out / good))


def _exists(path: Path) -> None:
    assert path.is_file(), f"{path} missing"


@case("predict")
def predict_empty_folder(sb: Sandbox) -> Entry:
    run = sb.run()
    empty = sb.root / "in" / "empty"
    empty.mkdir()
    return Entry(["predict", run, empty, sb.out, "--device", "cpu"], "empty")


@case("predict")
def predict_ignores_temp_and_side_files(sb: Sandbox) -> Entry:
    run, imgs = sb.run(), sb.test_images()
    first = sorted(imgs.glob("*_0000.nii.gz"))[0]
    n = len(list(imgs.glob("*_0000.nii.gz")))
    (imgs / f".{first.name}.abc123.tmp.nii.gz").write_bytes(b"half a file")
    (imgs / ".hidden_0000.nii.gz").write_bytes(b"junk")

    def only_cases() -> None:
        written = sorted(p.name for p in sb.out.iterdir())
        assert len(written) == n and not any(w.startswith(".") for w in written), written

    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], None, refuse=False, after=only_cases)


@case("predict")
def predict_bad_overlap(sb: Sandbox) -> Entry:
    run, imgs = sb.run(), sb.test_images()
    return Entry(["predict", run, imgs, sb.out, "--overlap", "1.5"], None)


# -------------------------------------------------------------------------------------------------- evaluate
def _pred_from_gt(sb: Sandbox) -> tuple[Path, Path]:
    gt = sb.test_labels()
    pred = sb.root / "in" / "pred"
    import shutil

    shutil.copytree(gt, pred)
    return pred, gt


@case("evaluate")
def evaluate_missing_prediction(sb: Sandbox) -> Entry:
    pred, gt = _pred_from_gt(sb)
    victim = sorted(pred.glob("*.nii.gz"))[0]
    victim.unlink()
    return Entry(["evaluate", pred, gt, "--out", sb.out, "--workers", "1"], victim.name)


@case("evaluate")
def evaluate_shape_mismatch(sb: Sandbox) -> Entry:
    pred, gt = _pred_from_gt(sb)
    victim = sorted(pred.glob("*.nii.gz"))[0]
    rewrite(victim, lambda x, a: (x[:-2], a))
    return Entry(["evaluate", pred, gt, "--out", sb.out, "--workers", "1"], victim.name)


@case("evaluate")
def evaluate_non_integer_prediction(sb: Sandbox) -> Entry:
    pred, gt = _pred_from_gt(sb)
    victim = sorted(pred.glob("*.nii.gz"))[0]
    rewrite(victim, lambda x, a: (x.astype(np.float32) + 0.25, a))
    return Entry(["evaluate", pred, gt, "--out", sb.out, "--workers", "1"], victim.name)


@case("evaluate")
def evaluate_corrupt_prediction(sb: Sandbox) -> Entry:
    pred, gt = _pred_from_gt(sb)
    victim = sorted(pred.glob("*.nii.gz"))[0]
    corrupt_gzip(victim)
    return Entry(["evaluate", pred, gt, "--out", sb.out, "--workers", "1"], victim.name)


@case("evaluate")
def evaluate_huge_label_value(sb: Sandbox) -> Entry:
    pred, gt = _pred_from_gt(sb)
    for p in list(pred.glob("*.nii.gz")) + list(gt.glob("*.nii.gz")):
        rewrite(p, lambda x, a: (np.where(x == 2, 100_000_000, x).astype(np.int32), a))
    return Entry(["evaluate", pred, gt, "--out", sb.out, "--workers", "1"], None, refuse=False,
                 after=lambda: _exists(sb.out / "metrics.csv"))


@case("evaluate")
def evaluate_ignores_temp_files(sb: Sandbox) -> Entry:
    pred, gt = _pred_from_gt(sb)
    first = sorted(pred.glob("*.nii.gz"))[0]
    (pred / f".{first.name}.x1y2.tmp.nii.gz").write_bytes(b"partial")
    (pred / f"{first.name[:-7]}_uncertainty.nii.gz").write_bytes(first.read_bytes())
    return Entry(["evaluate", pred, gt, "--out", sb.out, "--workers", "1"], None, refuse=False,
                 after=lambda: _exists(sb.out / "summary.json"))


@case("evaluate")
def evaluate_gt_folder_missing(sb: Sandbox) -> Entry:
    pred, _ = _pred_from_gt(sb)
    return Entry(["evaluate", pred, sb.root / "in" / "nowhere", "--out", sb.out], "nowhere")


@case("evaluate")
def evaluate_bad_connectivity(sb: Sandbox) -> Entry:
    pred, gt = _pred_from_gt(sb)
    return Entry(["evaluate", pred, gt, "--out", sb.out, "--connectivity", "5"], None)


# ----------------------------------------------------------------------------------------------- postprocess
@case("postprocess")
def postprocess_not_a_run(sb: Sandbox) -> Entry:
    folder = sb.root / "in" / "notarun"
    folder.mkdir()
    return Entry(["postprocess", folder], "notarun")


@case("postprocess")
def postprocess_without_validation(sb: Sandbox) -> Entry:
    run = sb.run()
    import shutil

    shutil.rmtree(run / "validation")
    return Entry(["postprocess", run], "validation")


@case("postprocess")
def postprocess_corrupt_plan(sb: Sandbox) -> Entry:
    run = sb.run()
    (run / "plan.json").write_text("{")
    return Entry(["postprocess", run], "plan.json")


@case("postprocess")
def postprocess_bad_candidates(sb: Sandbox) -> Entry:
    run = sb.run()
    return Entry(["postprocess", run, "--candidates", "[{"], None)
