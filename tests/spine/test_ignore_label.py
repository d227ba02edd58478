"""Issue 15 part 5: the ignore label (nnU-Net v2's ``documentation/ignore_label.md``).

A label named ``ignore`` (the highest label value K) marks unannotated voxels: it is no class (``n_classes``
excludes it, the network has no channel for it, so it is never predicted), every loss masks its voxels (no
gradient, not counted in any normalisation), the foreground sampler never centres on it, and validation,
evaluation and post-processing selection count annotated voxels only. Tiny synthetic data throughout.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from focusseg_testdata import write_partially_annotated_dataset, write_tiny_dataset

from focusseg.errors import DatasetError, PlanError
from focusseg.losses import DeepSupervisionLoss, build_loss, loss_names
from focusseg.losses.deep_supervision import downsample_target

K = 3  # the ignore value of the partially annotated dataset (classes: background 0, sphere 1, cube 2)
SHAPE = (6, 5, 4)

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 4, "iterations_per_epoch": 3, "augmentation": "light", "amp": "none",
                     "val_full_every": 2},
        "inference": {"mirror_axes": [0]}}


def _target(batch: int = 2, classes: int = 3, seed: int = 0, fraction: float = 0.4):
    """A label map ``(B, 1, *SHAPE)`` with about ``fraction`` of its voxels set to K, and that mask."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, classes, (batch, 1, *SHAPE), generator=g)
    ignored = torch.rand((batch, 1, *SHAPE), generator=g) < fraction
    return torch.where(ignored, torch.tensor(K), t), ignored


def _logits(batch: int, channels: int, seed: int = 1, shape=SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *shape, generator=g, dtype=torch.float64).requires_grad_(True)


# every loss the plan can build, with its channel count (sigmoid: 2 channels for labels 0..2, so K = 3 is no class)
SPECS = [
    ("ce", 3), ("bce", 2), ({"name": "topk_ce", "k": 10}, 3), ({"name": "topk_ce", "k": 50}, 3), ("focal", 3),
    ({"name": "focal", "activation": "sigmoid", "alpha": 0.25}, 2), ({"name": "focal", "include_background": False}, 3),
    ("dice", 3), ("soft_dice", 3), ({"name": "dice", "include_background": True}, 3),
    ({"name": "dice", "activation": "sigmoid"}, 2), ("tversky", 3), ({"ce": 1, "soft_dice": 1, "tversky": 1}, 3),
]
BLOBS = [({"name": "blob"}, 2), ({"name": "blob", "activation": "softmax"}, 3),
         ({"name": "blob", "blob": {"soft_dice": 1, "focal": 1, "tversky": 1}, "fused": False}, 2)]


def _id(value) -> str:
    return str(value) if isinstance(value, int) else json.dumps(value)


def _gathered(logits: torch.Tensor, target: torch.Tensor, ignored: torch.Tensor, b: int):
    """Sample ``b``'s annotated voxels only, as a ``(1, C, n, 1)`` image and its ``(1, 1, n, 1)`` labels."""
    keep = ~ignored[b, 0]
    return logits[b][:, keep][None, :, :, None], target[b, 0][keep][None, None, :, None]


# ---------------------------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------------------------

def test_ce_equals_torch_ignore_index():
    target, _ = _target()
    logits = _logits(2, 3)
    w = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    ours = build_loss("ce", ignore_label=K)(logits, target)
    assert torch.allclose(ours, F.cross_entropy(logits, target[:, 0], ignore_index=K), rtol=1e-12, atol=0)
    ours_w = build_loss("ce", ignore_label=K)(logits, target, class_weights=w)
    assert torch.allclose(ours_w, F.cross_entropy(logits, target[:, 0], weight=w, ignore_index=K), rtol=1e-12)
    per_sample = build_loss("ce", ignore_label=K, reduction="none")(logits, target)
    for b in range(2):
        ref = F.cross_entropy(logits[b:b + 1], target[b:b + 1, 0], ignore_index=K)
        assert torch.allclose(per_sample[b], ref, rtol=1e-12)


def test_dice_by_hand_on_the_annotated_voxels():
    target, ignored = _target()
    logits = _logits(2, 3)
    keep = ~ignored[:, 0]
    p = torch.softmax(logits, 1)
    s = 1e-5
    per_sample = []
    for b in range(2):
        per_class = []
        for c in (1, 2):  # nnU-Net's default: background excluded
            pc, gc = p[b, c][keep[b]], (target[b, 0][keep[b]] == c).double()
            per_class.append(1 - (2 * (pc * gc).sum() + s) / (pc.sum() + gc.sum() + s))
        per_sample.append(torch.stack(per_class).mean())
    hand = torch.stack(per_sample)
    assert torch.allclose(build_loss("dice", ignore_label=K, reduction="none")(logits, target), hand, rtol=1e-12)
    assert torch.allclose(build_loss("dice", ignore_label=K)(logits, target), hand.mean(), rtol=1e-12)
    sq = build_loss("soft_dice", ignore_label=K, batch=True)(logits, target)
    pk, gk = p.permute(1, 0, 2, 3, 4)[:, keep], F.one_hot(target[:, 0][keep], 4).T[:3].double()
    hand_sq = 1 - (2 * (pk * gk).sum(1) + s) / ((pk * pk).sum(1) + gk.sum(1) + s)
    assert torch.allclose(sq, hand_sq[1:].mean(), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("spec, channels", SPECS, ids=_id)
def test_every_loss_is_the_loss_of_the_annotated_voxels(spec, channels, reduction):
    """One sample: the masked loss equals the plain loss of the annotated voxels gathered into one image;
    several samples with ``reduction="none"``: the same per sample."""
    target, ignored = _target(batch=1 if reduction == "mean" else 2)
    logits = _logits(target.shape[0], channels)
    masked = build_loss(spec, ignore_label=K, reduction=reduction)(logits, target)
    plain = build_loss(spec, reduction=reduction)
    ref = torch.cat([plain(*_gathered(logits, target, ignored, b)).reshape(1) for b in range(target.shape[0])])
    assert torch.allclose(masked.reshape(-1), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec, channels", SPECS + BLOBS, ids=_id)
def test_ignored_voxels_get_no_gradient_and_change_nothing(spec, channels):
    target, ignored = _target(fraction=0.3)
    logits = _logits(2, channels)
    loss = build_loss(spec, ignore_label=K)
    value = loss(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(grad).all()
    assert (grad.abs() * ignored).sum() == 0, "an ignored voxel received a gradient"
    assert (grad.abs() * ~ignored).sum() > 0
    noise = torch.randn_like(logits) * 5 * ignored  # whatever the network says there
    assert torch.allclose(loss(logits.detach() + noise, target), value.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec, channels", SPECS + BLOBS, ids=_id)
def test_without_ignored_voxels_the_option_changes_no_value(spec, channels):
    target, _ = _target(fraction=0.0)
    logits = _logits(2, channels)
    for reduction in ("mean", "none"):
        a = build_loss(spec, reduction=reduction)(logits, target)
        b = build_loss(spec, reduction=reduction, ignore_label=K)(logits, target)
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_plan_without_ignore_label_builds_the_same_loss_bit_for_bit():
    from focusseg.engine.build import build_loss_from_plan

    spec = {"ce": 1.0, "soft_dice": 1.0, "tversky": {"weight": 0.5}}
    plan = {"training": {"loss": spec, "deep_supervision": {"weights": "nnunet"}}}
    outs = [_logits(2, 3, seed=s, shape=sh) for s, sh in ((1, SHAPE), (2, (3, 3, 2)), (3, (2, 2, 1)))]
    target = torch.randint(0, 3, (2, 1, *SHAPE), generator=torch.Generator().manual_seed(4))
    for reduction in ("mean", "none"):
        built = build_loss_from_plan(plan, reduction=reduction)
        assert all(getattr(m, "ignore_label", None) is None for m in built.modules())
        ref = DeepSupervisionLoss(build_loss(spec, reduction=reduction), weights="nnunet")
        assert torch.equal(built(outs, target), ref(outs, target))
    masked = build_loss_from_plan({**plan, "ignore_label": K})
    assert {m.ignore_label for m in masked.modules() if hasattr(m, "ignore_label")} == {K}


def test_deep_supervision_keeps_the_ignore_value_and_masks_every_resolution():
    target = torch.randint(0, 3, (2, 1, 8, 8, 4), generator=torch.Generator().manual_seed(5))
    target[:, :, :, 4:] = K  # a block of ignored voxels
    target[0, 0, 1::2, 1::2, 0] = K  # and scattered ones
    for mode, sl in (("nearest-exact", slice(1, None, 2)), ("nearest", slice(0, None, 2))):
        down = downsample_target(target, (4, 4, 2), mode)
        assert torch.equal(down, target[:, :, sl, sl, sl]), mode  # nearest: a voxel's own value, K kept
    inner = build_loss({"ce": 1, "dice": 1}, ignore_label=K)
    ds = DeepSupervisionLoss(inner, weights=[0.6, 0.4])
    outs = [_logits(2, 3, seed=7, shape=(8, 8, 4)), _logits(2, 3, seed=8, shape=(4, 4, 2))]
    total = ds(outs, target)
    manual = 0.6 * inner(outs[0], target) + 0.4 * inner(outs[1], downsample_target(target, (4, 4, 2)))
    assert torch.allclose(total, manual, rtol=1e-12)
    grads = torch.autograd.grad(total, outs)
    for g, t in zip(grads, (target, downsample_target(target, (4, 4, 2)))):
        assert (g.abs() * (t == K)).sum() == 0 and (g.abs() * (t != K)).sum() > 0


def test_every_registered_loss_takes_the_option():
    covered = {s if isinstance(s, str) else s.get("name", "compound") for s, _ in SPECS + BLOBS}
    # deep_supervision: tested above with its inner loss; region_dice_bce: a dataset with regions refuses an ignore
    # label (io.dataset, tests/regions)
    assert set(loss_names()) - covered == {"deep_supervision", "region_dice_bce"}
    assert build_loss({"name": "deep_supervision"}, ignore_label=K).loss.parts[0].ignore_label == K
    with pytest.raises(ValueError, match="ignore_label"):
        build_loss("ce", ignore_label=-1)


def test_step_class_counts_and_validation_counts_leave_ignored_voxels_out():
    from focusseg.engine.task import class_counts
    from focusseg.engine.validation import confusion_counts

    target, ignored = _target(fraction=0.5)
    logits = _logits(2, 3).detach()
    pred = logits.argmax(1)
    keep = ~ignored[:, 0]
    p, t = pred[keep], target[:, 0][keep]
    want = [[int(((p == c) & (t == c)).sum()) for c in range(3)], [int(((p == c) & (t != c)).sum()) for c in range(3)],
            [int(((p != c) & (t == c)).sum()) for c in range(3)]]
    tp, fp, fn = class_counts(logits, target, 3, ignore_label=K)
    assert [tp.tolist(), fp.tolist(), fn.tolist()] == want
    assert confusion_counts(pred, target[:, 0], 3, ignore_label=K).tolist() == want
    assert int(tp.sum() + fn.sum()) == int(keep.sum())  # every annotated voxel counted once, no ignored one


# ---------------------------------------------------------------------------------------------------------------
# dataset.json, the check, the plan
# ---------------------------------------------------------------------------------------------------------------

def _set_labels(root: Path, labels: dict) -> None:
    ds = json.loads((root / "dataset.json").read_text())
    ds["labels"] = labels
    (root / "dataset.json").write_text(json.dumps(ds))


def test_dataset_json_ignore_label_is_no_class(tmp_path: Path):
    from focusseg.io import load_dataset_spec

    root = write_partially_annotated_dataset(tmp_path / "P", n_cases=2)
    spec = load_dataset_spec(root)
    assert spec.ignore_label == K and spec.n_classes == 3 and spec.labels_contiguous
    assert spec.class_labels == {"background": 0, "sphere": 1, "cube": 2}
    assert spec.foreground_labels == [1, 2] and spec.label_values == [0, 1, 2, 3]
    _set_labels(root, {"background": 0, "sphere": 1, "cube": 2, "Ignore": 7})  # any case; any value above
    assert load_dataset_spec(root).ignore_label == 7 and load_dataset_spec(root).n_classes == 3
    plain = load_dataset_spec(write_tiny_dataset(tmp_path / "T", n_cases=1))
    assert plain.ignore_label is None and plain.n_classes == 3 and plain.label_values == [0, 1, 2]


@pytest.mark.parametrize("labels, needle", [
    ({"background": 0, "ignore": 1, "sphere": 2, "cube": 3}, "must be the highest label value"),
    ({"background": 0, "sphere": 1, "cube": 2, "ignore": 2}, "both have value 2"),
    ({"background": 0, "sphere": 1, "ignore": 4, "IGNORE": 5}, "2 ignore labels"),
])
def test_a_misplaced_ignore_label_is_refused_in_one_line(tmp_path: Path, capsys, labels, needle):
    from focusseg.cli import main

    root = write_partially_annotated_dataset(tmp_path / "P", n_cases=1)
    _set_labels(root, labels)
    with pytest.raises(DatasetError, match=needle):
        from focusseg.io import load_dataset_spec

        load_dataset_spec(root)
    rc = main(["check", str(root)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert rc != 0 and all(ln.startswith(("error: ", "hint: ")) for ln in lines), lines
    assert len(errors) == 1 and "dataset.json" in errors[0] and needle in errors[0], lines


def test_the_check_accepts_a_partially_annotated_dataset(tmp_path: Path, capsys):
    from focusseg.cli import main
    from focusseg.data.check import check_dataset

    root = write_partially_annotated_dataset(tmp_path / "P", n_cases=2)
    assert check_dataset(root, workers=1) == []
    assert main(["check", str(root)]) == 0
    _set_labels(root, {"background": 0, "sphere": 1, "cube": 2})  # the same files, no ignore label declared
    problems = [str(p) for p in check_dataset(root, workers=1)]
    assert len(problems) == 2 and all("label values [3] not declared" in p for p in problems)


def test_plan_records_the_ignore_label_apart(tmp_path: Path):
    from focusseg.io import load_dataset_spec
    from focusseg.planning.fingerprint import compute_fingerprint
    from focusseg.planning.planner import make_plan, validate_plan

    root = write_partially_annotated_dataset(tmp_path / "P", n_cases=2)
    fp = compute_fingerprint(root, workers=1, progress=False)
    assert fp["ignore_label"] == K and all(len(c["class_voxels"]) == 3 for c in fp["cases"])
    plan = make_plan(fp)
    assert plan["labels"] == {"background": 0, "sphere": 1, "cube": 2}
    assert plan["ignore_label"] == K and plan["n_classes"] == 3
    spec = load_dataset_spec(root)
    validate_plan(plan, spec)
    with pytest.raises(PlanError, match="ignore_label None differs"):
        validate_plan({k: v for k, v in plan.items() if k != "ignore_label"}, spec)
    with pytest.raises(PlanError, match="label values"):
        validate_plan({**plan, "labels": {**plan["labels"], "ignore": K}}, spec)
    plain = write_tiny_dataset(tmp_path / "T", n_cases=2)
    plain_plan = make_plan(compute_fingerprint(plain, workers=1, progress=False))
    assert "ignore_label" not in plain_plan and plain_plan["n_classes"] == 3
    with pytest.raises(PlanError, match="ignore_label 3 differs"):
        validate_plan({**plain_plan, "ignore_label": K}, load_dataset_spec(plain))


# ---------------------------------------------------------------------------------------------------------------
# training end to end on a partially annotated dataset (half of each case's voxels are K)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from focusseg.workflows.train import run_training

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ignore")
    data = write_partially_annotated_dataset(tmp / "P", n_cases=5)
    run = tmp / "run"
    summary = run_training(data, run, fold=0, overrides=TINY, device="cpu", progress=False)
    return data, run, summary


def test_training_validation_and_prediction_on_a_partially_annotated_dataset(trained):
    from focusseg.inference.predictor import Predictor
    from focusseg.io import discover_cases, read_case
    from focusseg.runfolder import read_log

    data, run, summary = trained
    plan = json.loads((run / "plan.json").read_text())
    assert plan["ignore_label"] == K and plan["n_classes"] == 3 and "ignore" not in plan["labels"]
    rows = read_log(run)
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    scores = [v for r in rows for v in (r.get("val_dice") or {}).values()]
    volume = [v for r in rows for v in (r.get("val_volume_dice") or {}).values()]
    assert len(scores) == 8 and all(v is not None and math.isfinite(v) for v in scores), scores
    assert len(volume) == 4 and all(v is not None and math.isfinite(v) for v in volume), volume
    assert summary["final_validation"]["mean_dice"] is not None
    predictor = Predictor.from_run(run, "best", torch.device("cpu"))
    for case in discover_cases(data):
        image, label, geo = read_case(list(case.images), case.label)
        seg = predictor.segment(image, geo)
        assert seg.shape == label.shape and K not in np.unique(seg)
    for f in (run / "validation" / "predictions").glob("*.nii.gz"):
        assert K not in np.unique(np.asarray(nib.load(f).dataobj))


def test_store_and_sampler_never_centre_foreground_on_ignored_voxels(trained):
    from focusseg.data.loader import PatchLoader
    from focusseg.data.samplers import ForegroundSampler
    from focusseg.engine.build import build_sampler
    from focusseg.preprocessing.preprocess import ANNOTATED
    from focusseg.preprocessing.store import PreprocessedStore

    data, run, _ = trained
    plan = json.loads((run / "plan.json").read_text())
    store = PreprocessedStore(run / "preprocessed")
    assert store.read_key()["fields"]["ignore_label"] == K
    cases = store.case_ids()
    labels = {c: np.asarray(store.label(c)) for c in cases}
    locations = {c: store.locations(c) for c in cases}
    for c in cases:
        assert set(locations[c]) == {1, 2, ANNOTATED} and K in labels[c]
        for cls in (1, 2):
            assert (labels[c][tuple(locations[c][cls].T)] == cls).all()
        assert (labels[c][tuple(locations[c][ANNOTATED].T)] != K).all()
    shapes = {c: store.shape(c) for c in cases}
    polluted = {c: {**locs, K: np.argwhere(labels[c] == K)} for c, locs in locations.items()}
    sampler = build_sampler(plan, shapes, polluted)
    assert all(K not in locs for locs in sampler.locations.values())
    g = torch.Generator().manual_seed(0)
    for p_fg, allowed in ((1.0, {1, 2}), (0.0, {0, 1, 2})):
        s = ForegroundSampler(shapes, (1, 1, 1), sampler.locations, p_foreground=p_fg)
        centres = [int(labels[r.case][r.start]) for r in s.next_batch(300, g)]
        assert set(centres) <= allowed, (p_fg, sorted(set(centres)))  # p = 0: on annotated voxels (nnU-Net)
    loader = PatchLoader(store, (8, 8, 8), n_classes=3, ignore_label=K, instances={"connectivity": 26})
    reqs = s.next_batch(4, g)
    _, y = loader.load(reqs)
    assert (y[:, 1][y[:, 0] == K] == 0).all()  # an ignored voxel is never a blob instance
    with pytest.raises(DatasetError, match="outside 0..2"):
        PatchLoader(store, (8, 8, 8), n_classes=3, ignore_label=None).load(reqs)


def test_validation_counts_and_scores_only_annotated_voxels(trained):
    from focusseg.data.loader import PatchLoader
    from focusseg.engine.validation import PatchValidator, masked_argmax, validate_volumes
    from focusseg.inference import sliding_window_predict
    from focusseg.metrics import dice_per_class
    from focusseg.nets.from_plan import build_inference_module
    from focusseg.preprocessing.store import PreprocessedStore

    _, run, _ = trained
    plan = json.loads((run / "plan.json").read_text())
    store = PreprocessedStore(run / "preprocessed")
    net = build_inference_module(plan)
    net.load_state_dict(torch.load(run / "checkpoint_final.pt", weights_only=True)["network"])
    net.eval()
    cases = store.case_ids()[:2]
    validator = PatchValidator(store, cases, plan, torch.device("cpu"))
    counts = validator.counts(net)
    _, y = PatchLoader(store, tuple(plan["patch_size"]), n_classes=3, ignore_label=K).load(validator.requests)
    assert int(counts[0].sum() + counts[2].sum()) == int((y != K).sum()) < y.numel()
    assert all(math.isfinite(v) for v in validator(net).values())
    validator.close()
    got = validate_volumes(net, store, cases, plan, torch.device("cpu"))
    want = {1: [], 2: []}
    for c in cases:
        with torch.no_grad():
            logits = sliding_window_predict(net, torch.from_numpy(np.array(store.image(c))), plan["patch_size"],
                                            overlap=plan["inference"]["overlap"], batch_size=2)
        pred = masked_argmax(logits, [0, 1, 2], dim=0).numpy()
        ref = np.asarray(store.label(c)).copy()
        pred[ref == K], ref[ref == K] = 0, 0
        for lab, d in dice_per_class(pred, ref, [1, 2]).items():
            want[lab].append(d)
    for lab in (1, 2):
        assert got[lab] == pytest.approx(float(np.nanmean(want[lab])), abs=1e-9)


def test_evaluation_and_postprocessing_count_only_annotated_voxels(trained, tmp_path: Path, capsys):
    from focusseg.cli import main
    from focusseg.inference.postprocess_selection import choose_postprocessing_for_run
    from focusseg.metrics import evaluate_folders

    data, run, _ = trained
    pred_dir, ref_dir = run / "validation" / "predictions", run / "validation" / "reference"
    summary = evaluate_folders(pred_dir, ref_dir, tmp_path / "ev", labels=[1, 2], ignore_label=K, workers=1,
                               progress=False)
    assert summary["ignore_label"] == K
    dice = {1: [], 2: []}
    for f in sorted(pred_dir.glob("*.nii.gz")):
        p = np.asarray(nib.load(f).dataobj).astype(np.int16)
        r = np.asarray(nib.load(ref_dir / f.name).dataobj).astype(np.int16)
        keep = r != K
        for lab in (1, 2):
            tp = int(((p == lab) & (r == lab) & keep).sum())
            denom = int(((p == lab) & keep).sum() + ((r == lab) & keep).sum())
            dice[lab].append(2 * tp / denom if denom else math.nan)
    for lab in (1, 2):
        assert summary["per_label"][str(lab)]["dice"]["mean"] == pytest.approx(float(np.nanmean(dice[lab])))
    # the CLI finds the ignore label in GT_DIR/../dataset.json, or is told it
    e = tmp_path / "E"
    shutil.copytree(ref_dir, e / "labelsTs")
    shutil.copy(data / "dataset.json", e / "dataset.json")
    assert main(["evaluate", str(pred_dir), str(e / "labelsTs"), "--out", str(tmp_path / "cli"), "--workers", "1"]) == 0
    assert f"ignore label {K}" in capsys.readouterr().err
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert cli["ignore_label"] == K and cli["labels"] == [1, 2]
    assert cli["per_label"]["1"]["dice"]["mean"] == pytest.approx(summary["per_label"]["1"]["dice"]["mean"])
    for source in (str(K), str(run), str(data / "dataset.json")):
        assert main(["evaluate", str(pred_dir), str(ref_dir), "--out", str(tmp_path / "s"), "--workers", "1",
                     "--ignore-label", source]) == 0
        assert json.loads((tmp_path / "s" / "summary.json").read_text())["ignore_label"] == K
    assert main(["evaluate", str(pred_dir), str(e / "labelsTs"), "--out", str(tmp_path / "n"), "--workers", "1",
                 "--ignore-label", "none"]) == 0
    assert K in json.loads((tmp_path / "n" / "summary.json").read_text())["labels"]  # told: evaluated as a label
    pp = choose_postprocessing_for_run(run, [1, 2])  # the ignore label from the run's plan
    assert pp["ignore_label"] == K and all(math.isfinite(v) for v in pp["dice_before"].values())
    assert pp["dice_before"][1] == pytest.approx(float(np.nanmean(dice[1])))
