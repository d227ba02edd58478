"""Time one batched augmentation call (focusseg) against MONAI's dictionary transforms applied per sample.

Both pipelines do the same nnU-Net v2 set, in nnU-Net's order: rotation + scaling, Gaussian noise, Gaussian
blur, multiplicative brightness, contrast around the mean (range preserved), low-resolution simulation,
gamma (inverted and plain, statistics retained), mirroring on every axis. Two scenarios:

- ``nnunet``: nnU-Net's probabilities (what a training step costs on average);
- ``all``: every transform fires on every sample (the worst case; same work on both sides).

MONAI's ``RandAffined`` has a single probability for rotation and scaling together, set to
``1 - 0.8 * 0.8 = 0.36`` (either of nnU-Net's two independent draws). The MONAI pipeline runs sample by sample,
as in a ``Dataset`` + ``DataLoader`` worker, and its outputs are stacked into a batch (included in its time).

Run:  .venv/bin/python benchmarks/bench_augment.py [--repeats 10] [--device cpu] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import statistics
import time
from pathlib import Path

import monai
import monai.transforms as T
import torch

from focusseg.augment import AugmentConfig, BatchAugmenter

RESULTS = Path(__file__).resolve().parent / "results" / "augment.md"
ALL_ON = dict(p_mirror=1.0, p_rotation=1.0, p_scaling=1.0, p_noise=1.0, p_blur=1.0, p_blur_per_channel=1.0,
              p_brightness=1.0, p_contrast=1.0, p_lowres=1.0, p_lowres_per_channel=1.0, p_gamma=1.0,
              p_gamma_inverted=1.0)


def monai_pipeline(all_on: bool) -> T.Compose:
    k, img = ["image", "label"], ["image"]

    def p(v: float) -> float:
        return 1.0 if all_on else v

    return T.Compose([
        T.RandAffined(k, prob=p(0.36), rotate_range=(math.pi / 6,) * 3, scale_range=((-0.3, 0.4),) * 3,
                      mode=("bilinear", "nearest"), padding_mode="zeros"),
        T.RandGaussianNoised(img, prob=p(0.1), mean=0.0, std=0.1),
        T.RandGaussianSmoothd(img, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=p(0.2)),
        T.RandScaleIntensityd(img, factors=0.25, prob=p(0.15), channel_wise=True),
        T.RandScaleIntensityFixedMeand(img, factors=0.25, preserve_range=True, prob=p(0.15), channel_wise=True),
        T.RandSimulateLowResolutiond(img, prob=p(0.25), zoom_range=(0.5, 1.0)),
        T.RandAdjustContrastd(img, prob=p(0.1), gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
        T.RandAdjustContrastd(img, prob=p(0.3), gamma=(0.7, 1.5), retain_stats=True),
        T.RandFlipd(k, prob=p(0.5), spatial_axis=0),
        T.RandFlipd(k, prob=p(0.5), spatial_axis=1),
        T.RandFlipd(k, prob=p(0.5), spatial_axis=2),
    ])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_focusseg(images: torch.Tensor, labels: torch.Tensor, all_on: bool, repeats: int) -> list[float]:
    cfg = AugmentConfig(**ALL_ON) if all_on else AugmentConfig()
    aug = BatchAugmenter(cfg, spatial_dims=3)
    aug(images, labels, torch.Generator().manual_seed(999))  # warm-up
    times = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        _sync(images.device)
        t = time.perf_counter()
        aug(images, labels, g)
        _sync(images.device)
        times.append(time.perf_counter() - t)
    return times


def time_monai(images: torch.Tensor, labels: torch.Tensor, all_on: bool, repeats: int) -> list[float]:
    pipe = monai_pipeline(all_on)
    pipe.set_random_state(seed=999)
    pipe({"image": images[0], "label": labels[0]})  # warm-up
    times = []
    for r in range(repeats):
        pipe.set_random_state(seed=r)
        t = time.perf_counter()
        outs = [pipe({"image": images[b], "label": labels[b]}) for b in range(images.shape[0])]
        torch.stack([torch.as_tensor(o["image"]) for o in outs])
        torch.stack([torch.as_tensor(o["label"]) for o in outs])
        times.append(time.perf_counter() - t)
    return times


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="device of the focusseg batch (MONAI always runs on CPU)")
    ap.add_argument("--write", action="store_true", help=f"write the markdown section to {RESULTS}")
    args = ap.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 1, args.size, args.size, args.size)
    images = torch.randn(shape, generator=g)
    labels = torch.randint(0, 4, shape, generator=g)
    rows = []
    for scenario, all_on in (("nnunet", False), ("all", True)):
        ours = time_focusseg(images.to(device), labels.to(device), all_on, args.repeats)
        theirs = time_monai(images, labels, all_on, args.repeats)
        m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
        rows.append(f"| {scenario} | {1e3 * m_ours:.0f} (mean {1e3 * statistics.mean(ours):.0f}) | "
                    f"{1e3 * m_theirs:.0f} (mean {1e3 * statistics.mean(theirs):.0f}) | {m_theirs / m_ours:.1f}x |")
        print(rows[-1], flush=True)
    section = "\n".join([
        "## Augmentation: one batched call vs MONAI dictionary transforms per sample",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_augment.py --repeats {args.repeats} --device {args.device}"
        f"{' --write' if args.write else ''}`  ",
        f"Batch `{shape}` float32 images + int64 labels; focusseg on `{device}`, MONAI on CPU; "
        f"{args.repeats} calls per cell after one warm-up, each with its own seed.  ",
        f"Machine: {os.cpu_count()} CPU cores ({cpu_model()}), torch threads {torch.get_num_threads()}, "
        f"{'GPU ' + torch.cuda.get_device_name() if device.type == 'cuda' else 'no GPU'}; "
        f"torch {torch.__version__}, monai {monai.__version__}; {dt.date.today().isoformat()}; "
        f"1-min load average at the end {os.getloadavg()[0]:.1f} (other jobs share the cores).",
        "",
        "| scenario | focusseg `BatchAugmenter` ms, median | MONAI per-sample ms, median | MONAI / focusseg |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        "`nnunet`: nnU-Net v2 probabilities (random work per call, hence the means); `all`: every transform on "
        "every sample. Same transforms on both sides (MONAI: RandAffined, RandGaussianNoised, RandGaussianSmoothd, "
        "RandScaleIntensityd, RandScaleIntensityFixedMeand, RandSimulateLowResolutiond, RandAdjustContrastd x2, "
        "RandFlipd x3).",
        "",
    ])
    print(section)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(section)


if __name__ == "__main__":
    main()
