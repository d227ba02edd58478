"""Corpus entries for the one gate on lists and plans read from files others made: post-processing steps checked
with their arguments (a run's ``postprocessing.json``, ``--postprocessing-file``), bounded JSON (deep nesting,
5,000-digit numbers, NaN), saved probability files read header-first (a header that claims 10^15 values, NaN
probabilities, pickled objects), recipes given by path, and plans given to ``train --plan`` (NaN or zero CT std, a
target spacing whose resampled grid would exceed the voxel limit)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .conftest import Payload, Sandbox
from .corpus import Entry, case, edit_json, marker_absent

# ------------------------------------------------------------------------------ post-processing steps of a run


def _predict_with_steps(sb: Sandbox, text: str) -> Entry:
    """A run whose ``postprocessing.json`` holds ``text``, predicted: refused naming the file, nothing written."""
    run, imgs = sb.run(), sb.test_images()
    edit_json(run / "plan.json", lambda p: {**p, "inference": {**p["inference"], "postprocessing": "auto"}})
    (run / "postprocessing.json").write_text(text)
    return Entry(["predict", run, imgs, sb.out, "--device", "cpu"], "postprocessing.json",
                 after=lambda: _nothing_written(sb.out))


def _nothing_written(out: Path) -> None:
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not written, f"predictions written despite a refused post-processing file: {written}"


@case("predict")
def gate_postprocessing_wrong_argument_type(sb: Sandbox) -> Entry:
    return _predict_with_steps(sb, json.dumps({"steps": [{"name": "remove_small_components", "min_size": "ten"}]}))


@case("predict")
def gate_postprocessing_min_size_1e300(sb: Sandbox) -> Entry:
    """``min_size: 1e300`` would remove every component: a silently emptied mask."""
    return _predict_with_steps(sb, '{"steps": [{"name": "remove_small_components", "min_size": 1e300}]}')


@case("predict")
def gate_postprocessing_unknown_argument(sb: Sandbox) -> Entry:
    return _predict_with_steps(sb, json.dumps({"steps": [{"name": "keep_largest_component", "labels": [1],
                                                          "exec": "import os"}]}))


@case("predict")
def gate_postprocessing_nan_argument(sb: Sandbox) -> Entry:
    return _predict_with_steps(sb, '{"steps": [{"name": "remove_small_components", "min_size": NaN}]}')


@case("predict")
def gate_postprocessing_label_not_in_plan(sb: Sandbox) -> Entry:
    return _predict_with_steps(sb, json.dumps({"steps": [{"name": "erode", "labels": [7], "iterations": 1}]}))


@case("predict")
def gate_postprocessing_bad_connectivity(sb: Sandbox) -> Entry:
    return _predict_with_steps(sb, json.dumps({"steps": [{"name": "dilate", "connectivity": 5}]}))


def _postprocessing_file(sb: Sandbox, name: str, text: str) -> Entry:
    run, imgs = sb.run(), sb.test_images()
    f = sb.root / "in" / name
    f.write_text(text)
    return Entry(["predict", run, imgs, sb.out, "--device", "cpu", "--postprocessing-file", f], name,
                 after=lambda: _nothing_written(sb.out), max_rss_mb=300)


@case("predict")
def gate_postprocessing_file_deeply_nested(sb: Sandbox) -> Entry:
    return _postprocessing_file(sb, "deep_postprocessing.json", "[" * 100_000)


@case("predict")
def gate_postprocessing_file_5000_digit_number(sb: Sandbox) -> Entry:
    return _postprocessing_file(sb, "digits_postprocessing.json",
                                '{"steps": [{"name": "remove_small_components", "min_size": ' + "9" * 5000 + "}]}")


# --------------------------------------------------------------------------------------- saved probabilities


def _probability_folder(sb: Sandbox, name: str, probs: np.ndarray | None = None) -> Path:
    """A prediction folder with one valid saved probability file ``c1_probabilities.npz`` (or ``probs``)."""
    from focusseg.inference.probabilities import save_probabilities
    from focusseg.io.geometry import Geometry

    folder = sb.root / "in" / name
    folder.mkdir()
    if probs is None:
        p = np.random.default_rng(0).random((3, 6, 7, 5)).astype(np.float32)
        probs = p / p.sum(0)
    save_probabilities(folder / "c1_probabilities.npz", probs, Geometry(np.eye(4), probs.shape[1:]), [0, 1, 2],
                       ".nii.gz")
    return folder


def _npy_bytes(header: dict, data: bytes) -> bytes:
    """A ``.npy`` member: magic, a version-1.0 header (padded as numpy pads it) and ``data``."""
    text = repr(header)
    pad = 64 - (10 + len(text) + 1) % 64
    head = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head + data


def _write_npz(path: Path, members: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)
    path.write_bytes(buf.getvalue())


def _array_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


@case("ensemble")
def gate_probabilities_header_claims_huge_shape(sb: Sandbox) -> Entry:
    """A zip whose probabilities member's header claims shape (100000, 100000, 100000) float16 (2 PB) but holds
    64 bytes: refused from the header, before numpy allocates."""
    good = _probability_folder(sb, "probs_good")
    bomb = sb.root / "in" / "probs_bomb"
    bomb.mkdir()
    header = {"descr": "<f2", "fortran_order": False, "shape": (100000, 100000, 100000)}
    _write_npz(bomb / "c1_probabilities.npz", {
        "probabilities": _npy_bytes(header, b"\x00" * 64),
        "affine": _array_bytes(np.eye(4)), "shape": _array_bytes(np.array([100000, 100000], np.int64)),
        "labels": _array_bytes(np.arange(3, dtype=np.int64)), "ending": _array_bytes(np.asarray(".nii.gz"))})
    return Entry(["ensemble", bomb, good, "--out", sb.out], "probs_bomb", max_rss_mb=300)


@case("ensemble")
def gate_probabilities_size_lies_about_header(sb: Sandbox) -> Entry:
    """A header that claims 2x6x7x5 float32 values in front of 8 bytes: the member's size does not match."""
    good = _probability_folder(sb, "probs_good")
    short = sb.root / "in" / "probs_short"
    short.mkdir()
    header = {"descr": "<f4", "fortran_order": False, "shape": (3, 6, 7, 5)}
    _write_npz(short / "c1_probabilities.npz", {
        "probabilities": _npy_bytes(header, b"\x00" * 8),
        "affine": _array_bytes(np.eye(4)), "shape": _array_bytes(np.array([6, 7, 5], np.int64)),
        "labels": _array_bytes(np.arange(3, dtype=np.int64)), "ending": _array_bytes(np.asarray(".nii.gz"))})
    return Entry(["ensemble", short, good, "--out", sb.out], "probs_short", max_rss_mb=300)


@case("ensemble")
def gate_probabilities_nan(sb: Sandbox) -> Entry:
    good = _probability_folder(sb, "probs_good")
    p = np.full((3, 6, 7, 5), 1 / 3, np.float32)
    p[1, 2, 3, 4] = np.nan
    bad = _probability_folder(sb, "probs_nan", p)
    return Entry(["ensemble", good, bad, "--out", sb.out], "probs_nan")


@case("ensemble")
def gate_probabilities_out_of_range(sb: Sandbox) -> Entry:
    good = _probability_folder(sb, "probs_good")
    bad = _probability_folder(sb, "probs_big", np.full((3, 6, 7, 5), 7.0, np.float32))
    return Entry(["ensemble", good, bad, "--out", sb.out], "probs_big")


@case("ensemble")
def gate_probabilities_pickled_objects(sb: Sandbox) -> Entry:
    """An object array whose unpickling would run ``open(marker, 'w')``: never loaded."""
    good = _probability_folder(sb, "probs_good")
    evil = sb.root / "in" / "probs_pickle"
    evil.mkdir()
    marker = sb.root / "PWNED"
    objects = np.empty((3, 6, 7, 5), dtype=object)
    objects[0, 0, 0, 0] = Payload(marker)
    buf = io.BytesIO()
    np.save(buf, objects, allow_pickle=True)
    _write_npz(evil / "c1_probabilities.npz", {
        "probabilities": buf.getvalue(), "affine": _array_bytes(np.eye(4)),
        "shape": _array_bytes(np.array([6, 7, 5], np.int64)), "labels": _array_bytes(np.arange(3, dtype=np.int64)),
        "ending": _array_bytes(np.asarray(".nii.gz"))})
    return Entry(["ensemble", good, evil, "--out", sb.out], "probs_pickle", after=marker_absent(marker))


@case("ensemble")
def gate_probabilities_grids_differ(sb: Sandbox) -> Entry:
    good = _probability_folder(sb, "probs_good")
    other = _probability_folder(sb, "probs_other_grid", np.full((3, 6, 7, 4), 1 / 3, np.float32))
    return Entry(["ensemble", good, other, "--out", sb.out], "probs_other_grid")


# ------------------------------------------------------------------------------------------ recipes and plans


@case("train")
def gate_recipe_deeply_nested(sb: Sandbox) -> Entry:
    d = sb.dataset()
    recipe = sb.root / "in" / "deep_recipe.json"
    recipe.write_text('{"plan": ' + "[" * 100_000)
    return Entry(["train", d, "--out", sb.out, "--recipe", recipe, "--no-progress"], "deep_recipe.json",
                 max_rss_mb=300)


@case("train")
def gate_recipe_nan(sb: Sandbox) -> Entry:
    d = sb.dataset()
    recipe = sb.root / "in" / "nan_recipe.json"
    recipe.write_text('{"name": "nan", "plan": {"training": {"grad_clip": NaN}}}')
    return Entry(["train", d, "--out", sb.out, "--recipe", recipe, "--no-progress"], "nan_recipe.json")


def _plan_file(sb: Sandbox, name: str, edit) -> tuple[Path, Path]:
    """The template run's plan (made for the sandbox dataset) edited by ``edit`` and written to ``name``."""
    d = sb.dataset()
    plan = json.loads((sb.templates["_run"] / "plan.json").read_text())
    edit(plan)
    f = sb.root / "in" / name
    f.write_text(json.dumps(plan))  # json writes NaN as NaN, as a careless tool would
    return d, f


def _ct(std: float) -> callable:
    def edit(plan: dict) -> None:
        plan["normalization"] = [{"scheme": "ct", "clip": [-1.0, 1.0], "mean": 0.0, "std": std}]
    return edit


@case("train")
def gate_plan_nan_normalization_std(sb: Sandbox) -> Entry:
    """NaN std: refused before preprocessing, whether the plan reader or the gate catches it (the line names the
    file, plan_bad_normalization.json, or the field, normalization[0].std)."""
    d, f = _plan_file(sb, "plan_bad_normalization.json", _ct(float("nan")))
    return Entry(["train", d, "--out", sb.out, "--plan", f, "--no-progress"], "normalization",
                 after=lambda: _no_preprocessed(sb.out))


@case("train")
def gate_plan_zero_normalization_std(sb: Sandbox) -> Entry:
    d, f = _plan_file(sb, "zero_std_plan.json", _ct(0.0))
    return Entry(["train", d, "--out", sb.out, "--plan", f, "--no-progress"], "normalization[0].std",
                 after=lambda: _no_preprocessed(sb.out))


@case("train")
def gate_plan_unknown_normalization_scheme(sb: Sandbox) -> Entry:
    def edit(plan: dict) -> None:
        plan["normalization"] = [{"scheme": "histogram"}]
    d, f = _plan_file(sb, "scheme_plan.json", edit)
    return Entry(["train", d, "--out", sb.out, "--plan", f, "--no-progress"], "normalization[0].scheme")


@case("train")
def gate_plan_resampled_grid_over_voxel_limit(sb: Sandbox) -> Entry:
    """target_spacing 0.01 mm on 1 mm images: every case would grow 10^6-fold; refused per case from the computed
    grid before an array is allocated."""
    def edit(plan: dict) -> None:
        plan["target_spacing"] = [0.01, 0.01, 0.01]
    d, f = _plan_file(sb, "fine_plan.json", edit)
    return Entry(["train", d, "--out", sb.out, "--plan", f, "--no-progress"], "voxel limit", max_rss_mb=300)


def _no_preprocessed(run: Path) -> None:
    assert not (run / "preprocessed").exists() or not any((run / "preprocessed").iterdir()), \
        "cases were preprocessed with a refused plan"
    assert not (run / "checkpoint_latest.pt").exists()
