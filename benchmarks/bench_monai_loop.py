"""A plain MONAI training loop on a wall-clock budget: MSD Hippocampus fold 0, the peer a MONAI user would write.

What a MONAI user writes from the 3D segmentation tutorials, with the patch made to fit this dataset's small images:
``LoadImaged`` / ``EnsureChannelFirstd`` / ``NormalizeIntensityd`` (z-score per image) / ``SpatialPadd`` and
``RandCropByPosNegLabeld`` (patch 40 x 56 x 40, 1:1 positive:negative centres, 4 patches per image, 2 images per
step: batch 8), ``RandFlipd`` on the three axes, ``RandScaleIntensityd`` / ``RandShiftIntensityd``; all training
images cached in memory after the deterministic transforms (``CacheDataset``); MONAI ``UNet(channels=(16, 32, 64,
128), strides=(2, 2, 2), num_res_units=2, norm=batch)`` (the tutorials' UNet with one level fewer, as the patch is
divisible by 8 and not 16: focusseg's default network but with batch norm), ``DiceCELoss(softmax,
to_onehot_y)``, Adam at 1e-3 with no schedule, fp32, ``--threads`` torch threads, data loading in the main
process (the machine has two cores). Choices where a tutorial is silent: the learning rate (1e-4 of the spleen
tutorial barely moves in minutes; 1e-3 is the common choice for short runs) and the batch.

Training stops at ``--minutes`` of training wall time (from the first step; the caching before it is reported
apart) and keeps a copy of the weights at each of ``--snapshots`` minutes. Afterwards each snapshot predicts the 42
fold-0 held-out cases (focusseg's split, which is nnU-Net's) with ``sliding_window_inference`` (Gaussian, overlap
0.5, no TTA: a plain loop has none) in their original geometry, and ``focusseg.api.evaluate`` scores them as
``focusseg train``'s final validation does (mean foreground Dice over the cases, then the labels).

    .venv/bin/python benchmarks/bench_monai_loop.py --minutes 30 --snapshots 5,10,20 [--out DIR]

Writes ``DIR/result.json`` (default /tmp/focusseg_monai_loop) and, per snapshot,
``benchmarks/results/time_to_dice/monai_<minutes>.json`` with ``--write`` (``bench_time_to_dice.py`` plots them).
Run with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
DATA = (REPO / ".." / "shared" / "data" / "Dataset004_Hippocampus").resolve()
PATCH = (40, 56, 40)


def fold0() -> tuple[list[str], list[str]]:
    """Training and held-out case ids of fold 0 (focusseg's split of the labelled cases)."""
    from focusseg.data.splits import make_splits

    ids = sorted(p.name[: -len(".nii.gz")] for p in (DATA / "labelsTr").glob("*.nii.gz"))
    split = make_splits(ids)[0]
    return sorted(split["train"]), sorted(split["val"])


def build_net():  # noqa: ANN201 - monai type
    from monai.networks.nets import UNet

    return UNet(3, 1, 3, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm="batch")


def train(args: argparse.Namespace, out: Path) -> dict:
    import torch
    from monai import transforms as T
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_ids, _ = fold0()
    files = [{"image": str(DATA / "imagesTr" / f"{c}_0000.nii.gz"), "label": str(DATA / "labelsTr" / f"{c}.nii.gz")}
             for c in train_ids]
    keys = ["image", "label"]
    transform = T.Compose([
        T.LoadImaged(keys), T.EnsureChannelFirstd(keys), T.NormalizeIntensityd("image"),
        T.SpatialPadd(keys, PATCH),
        T.RandCropByPosNegLabeld(keys, "label", PATCH, pos=1, neg=1, num_samples=4),
        T.RandFlipd(keys, prob=0.5, spatial_axis=0), T.RandFlipd(keys, prob=0.5, spatial_axis=1),
        T.RandFlipd(keys, prob=0.5, spatial_axis=2),
        T.RandScaleIntensityd("image", factors=0.1, prob=0.5), T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
    ])
    t0 = time.perf_counter()
    ds = CacheDataset(files, transform, cache_rate=1.0, num_workers=0, progress=False)
    cache_s = time.perf_counter() - t0
    loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=0)
    net = build_net()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    snaps = sorted(float(s) for s in args.snapshots.split(",") if s) + [args.minutes]
    taken: list[dict] = []
    its, start = 0, time.perf_counter()
    net.train()
    done = False
    while not done:
        for batch in loader:
            x, y = batch["image"].as_tensor(), batch["label"].as_tensor().long()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            its += 1
            elapsed = time.perf_counter() - start
            while len(taken) < len(snaps) and elapsed >= snaps[len(taken)] * 60:
                minutes = snaps[len(taken)]
                path = out / f"snapshot_{minutes:g}min.pt"
                torch.save(net.state_dict(), path)
                taken.append({"minutes": minutes, "iterations": its, "seconds": round(elapsed, 1), "file": str(path),
                              "loss": float(loss)})
                print(json.dumps(taken[-1]), flush=True)
            if len(taken) == len(snaps):
                done = True
                break
    return {"cache_s": round(cache_s, 1), "snapshots": taken}


def predict_and_score(snapshot: dict, out: Path, threads: int) -> dict:
    import nibabel as nib
    import numpy as np
    import torch
    from bench_nnunet_budget import score  # focusseg.api.evaluate on the references
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(threads)
    _, val_ids = fold0()
    net = build_net()
    net.load_state_dict(torch.load(snapshot["file"], weights_only=True))
    net.eval()
    pred = out / f"pred_{snapshot['minutes']:g}min"
    shutil.rmtree(pred, ignore_errors=True)
    pred.mkdir(parents=True)
    t0 = time.perf_counter()
    for c in val_ids:
        img = nib.load(DATA / "imagesTr" / f"{c}_0000.nii.gz")
        a = np.asarray(img.dataobj, dtype=np.float32)
        a = (a - a.mean()) / max(float(a.std()), 1e-8)
        with torch.inference_mode():
            logits = sliding_window_inference(torch.from_numpy(a)[None, None], PATCH, 4, net, overlap=0.5,
                                              mode="gaussian")
        seg = logits[0].argmax(0).numpy().astype(np.uint8)
        nib.save(nib.Nifti1Image(seg, img.affine), pred / f"{c}.nii.gz")
    predict_s = time.perf_counter() - t0
    return {**score(pred, val_ids, out / f"eval_{snapshot['minutes']:g}min"), "predict_s": round(predict_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--snapshots", default="5,10,20", help="minutes at which a weight copy is kept")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/focusseg_monai_loop"))
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/time_to_dice/monai_*.json")
    args = ap.parse_args()
    if not (DATA / "dataset.json").is_file():
        raise SystemExit(f"{DATA} not found: the benchmark needs ../shared/data/Dataset004_Hippocampus")
    from machine import machine_line

    args.out.mkdir(parents=True, exist_ok=True)
    record = train(args, args.out)
    rows = []
    for snap in record["snapshots"]:
        rows.append({**snap, **predict_and_score(snap, args.out, args.threads)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"tool": "monai", "cache_s": record["cache_s"], "rows": rows, "machine": machine_line(),
              "date": time.strftime("%Y-%m-%d"),
              "command": f".venv/bin/python benchmarks/bench_monai_loop.py --minutes {args.minutes:g} "
                         f"--snapshots {args.snapshots} --write"}
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    if args.write:
        folder = HERE / "results" / "time_to_dice"
        folder.mkdir(parents=True, exist_ok=True)
        for r in rows:
            point = {"tool": "monai", "minutes": r["minutes"], "mean_dice": r["mean_dice"], "per_label": r["per_label"],
                     "iterations": r["iterations"], "how": "snapshot of one run (no schedule to fit)",
                     "machine": result["machine"], "date": result["date"], "command": result["command"]}
            (folder / f"monai_{r['minutes']:g}.json").write_text(json.dumps(point, indent=1))
    for r in rows:
        print(f"{r['minutes']:g} min: {r['iterations']} iterations, mean Dice {r['mean_dice']:.4f}")


if __name__ == "__main__":
    main()
