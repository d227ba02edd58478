"""Validation during training (issue 13 part 3): fixed validation patches scored on the device, whole volumes
with the argmax on the device, both equal to the evaluator's Dice; the loop's per-epoch patch score and its
whole-volume validation every K epochs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from focusseg.engine.validation import (
    PatchValidator,
    confusion_counts,
    dice_from_counts,
    draw_validation_patches,
    masked_argmax,
    validate_volumes,
)
from focusseg.metrics import dice_per_class
from focusseg.preprocessing.store import PreprocessedStore

SHAPES = {"c0": (12, 10, 8), "c1": (9, 14, 11), "c2": (5, 6, 7)}  # c2 smaller than the patch
PATCH = [8, 8, 8]
PLAN = {"labels": {"background": 0, "a": 1, "b": 2}, "n_classes": 3, "patch_size": PATCH, "batch_size": 2,
        "channel_names": {"0": "x"}, "training": {"seed": 3, "val_patches": 7},
        "inference": {"overlap": 0.5, "batch_size": 2}}


def make_store(root: Path) -> PreprocessedStore:
    store = PreprocessedStore(root)
    store.write_key({"labels": PLAN["labels"]})
    rng = np.random.default_rng(0)
    for cid, shape in SHAPES.items():
        img = rng.standard_normal((1, *shape)).astype(np.float32)
        lab = np.zeros(shape, np.int16)
        lab[1:4, 1:4, 1:3] = 1
        if cid != "c2":
            lab[5:8, 5:8, 4:7] = 2
        locs = {c: np.argwhere(lab == c) for c in (1, 2) if (lab == c).any()}
        store.write_case(cid, img, lab, {"shape_preprocessed": list(shape)}, locs)
    return store


class ThresholdNet(nn.Module):
    """A fixed 'network': class 1 where the image > 0.5, class 2 where < -0.5, else background (3 logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, :1]
        return torch.cat([torch.zeros_like(v), (v - 0.5) * self.scale, (-v - 0.5) * self.scale], 1)


def test_validation_patches_are_fixed_spread_and_hit_foreground(tmp_path: Path):
    store = make_store(tmp_path / "s")
    a = draw_validation_patches(store, list(SHAPES), PATCH, n_patches=7, seed=3)
    b = draw_validation_patches(store, list(SHAPES), PATCH, n_patches=7, seed=3)
    assert a == b and len(a) == 9  # ceil(7 / 3) = 3 per case
    assert [r.case for r in a] == ["c0"] * 3 + ["c1"] * 3 + ["c2"] * 3
    assert draw_validation_patches(store, list(SHAPES), PATCH, n_patches=7, seed=4) != a
    for r in a[::3] + a[2::3]:  # even-numbered patches are centred on foreground: they contain some
        lab = store.label(r.case)
        sl = tuple(slice(max(s, 0), max(s, 0) + p) for s, p in zip(r.start, PATCH))
        assert (lab[sl] > 0).any(), r
    # a case smaller than the patch is padded: the patch holds the whole volume
    for r in a[6:]:
        assert all(s <= 0 and s + p >= n for s, p, n in zip(r.start, PATCH, SHAPES["c2"]))
    assert len(draw_validation_patches(store, list(SHAPES), PATCH, n_patches=1)) == 3  # at least one per case


def test_patch_pseudo_dice_equals_counts_on_the_host(tmp_path: Path):
    store = make_store(tmp_path / "s")
    net = ThresholdNet()
    val = PatchValidator(store, list(SHAPES), PLAN, torch.device("cpu"))
    assert len(val) == 9 and val._batches is not None  # small: kept in memory
    scores = val(net)
    tp = np.zeros(3)
    fp = np.zeros(3)
    fn = np.zeros(3)
    from focusseg.data.loader import PatchLoader

    images, labels = PatchLoader(store, tuple(PATCH)).load(val.requests)
    pred = net(images).argmax(1).numpy()
    ref = labels[:, 0].numpy()
    for c in range(3):
        tp[c] += ((pred == c) & (ref == c)).sum()
        fp[c] += ((pred == c) & (ref != c)).sum()
        fn[c] += ((pred != c) & (ref == c)).sum()
    for c in (1, 2):
        assert scores[c] == pytest.approx(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]))
    assert set(scores) == {1, 2}
    # scored again: the same patches, the same numbers; the network's mode is restored
    net.train()
    assert val(net) == scores and net.training


def test_volume_validation_equals_the_evaluators_dice(tmp_path: Path):
    from focusseg.inference import sliding_window_predict

    store = make_store(tmp_path / "s")
    net = ThresholdNet()
    got = validate_volumes(net, store, list(SHAPES), PLAN, torch.device("cpu"))
    per_case = []
    for cid in SHAPES:
        logits = sliding_window_predict(net, torch.from_numpy(store.image(cid)), PATCH, overlap=0.5)
        per_case.append(dice_per_class(logits.argmax(0).numpy(), store.label(cid), [1, 2]))
    for c in (1, 2):
        vals = [d[c] for d in per_case if not np.isnan(d[c])]
        assert got[c] == pytest.approx(np.mean(vals))


def test_undeclared_indices_never_win_and_counts():
    logits = torch.zeros(2, 4, 3, 3)
    logits[:, 2] = 5.0  # index 2 is no label value (labels {0, 1, 3})
    logits[:, 3, 0] = 6.0
    pred = masked_argmax(logits, [0, 1, 3], dim=1)
    assert not (pred == 2).any() and (pred[:, 0] == 3).all()
    assert masked_argmax(logits[0], [0, 1, 3], dim=0).equal(pred[0])
    ref = torch.zeros(2, 3, 3, dtype=torch.uint8)
    ref[:, 0] = 3
    counts = confusion_counts(pred, ref, 4)
    assert counts.shape == (3, 4) and counts[0, 3] == 6 and counts[1, 3] == 0 and counts[2, 3] == 0
    d = dice_from_counts(counts, [1, 3])
    assert d[3] == 1.0 and np.isnan(d[1])  # label 1 absent from both: NaN


def test_loop_scores_patches_every_epoch_and_volumes_every_k(tmp_path: Path):
    from focusseg_testdata import write_tiny_dataset

    from focusseg.runfolder import read_log
    from focusseg.workflows.train import run_training

    data = write_tiny_dataset(tmp_path / "D", n_cases=5)
    plan = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
            "patch_size": [16, 16, 16], "batch_size": 2,
            "training": {"max_epochs": 4, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none",
                         "val_full_every": 2, "val_patches": 5}}
    torch.set_num_threads(1)
    run_training(data, tmp_path / "run", overrides=plan, progress=False, final_validation=False, check=False)
    log = read_log(tmp_path / "run")
    assert [r["val_kind"] for r in log] == ["patches"] * 4
    assert all(0.0 <= r["val_mean_dice"] <= 1.0 for r in log)
    assert ["val_volume_mean_dice" in r for r in log] == [False, True, False, True]
    stored = json.loads((tmp_path / "run" / "plan.json").read_text())["training"]
    assert stored["validation"] == "patches" and stored["val_full_every"] == 2

    # whole volumes as the per-epoch score (the former behaviour) on request
    run_training(data, tmp_path / "vol", progress=False, final_validation=False, check=False,
                 overrides={**plan, "training": {**plan["training"], "validation": "volumes", "max_epochs": 2}})
    log = read_log(tmp_path / "vol")
    assert all("val_kind" not in r and "val_volume_mean_dice" not in r for r in log) and len(log) == 2


def test_bad_validation_settings_are_refused(tmp_path: Path):
    from focusseg_testdata import write_tiny_dataset

    from focusseg.errors import PlanError
    from focusseg.workflows.train import run_training

    data = write_tiny_dataset(tmp_path / "D", n_cases=4)
    base = {"network": {"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 0},
            "patch_size": [16, 16, 16], "batch_size": 2,
            "training": {"max_epochs": 1, "iterations_per_epoch": 1, "augmentation": "light", "amp": "none"}}
    for bad in ({"validation": "everything"}, {"val_full_every": -1}, {"val_full_every": 1.5}):
        over = {**base, "training": {**base["training"], **bad}}
        with pytest.raises(PlanError):
            run_training(data, tmp_path / f"r{len(str(bad))}", overrides=over, progress=False,
                         final_validation=False, check=False)
