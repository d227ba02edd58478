"""On CUDA (marked ``cuda``, skipped without a device): every recipe's first steps, fp16 + GradScaler and bf16
steps finite, sliding-window logits equal to the CPU's (1e-4), augmentation with the CPU's shapes and dtypes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from focusseg_testdata import write_tiny_dataset

from focusseg.io import checkpoint as ckpt
from focusseg.workflows.train import run_training

pytestmark = pytest.mark.cuda

RECIPES = ["default", "fp-pet", "runtime-freezing", "cycle-flare21", "blob-valdo", "flare21-fast"]
SHORT = {"batch_size": 2, "training": {"max_epochs": 1, "iterations_per_epoch": 3},
         "inference": {"mirror_axes": []}}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("cuda_steps") / "D", n_cases=4, shape=(40, 48, 36))


def _finite_network(run: Path) -> bool:
    net = ckpt.load_checkpoint(run / "checkpoint_final.pt")["network"]
    return all(torch.isfinite(v).all() for v in net.values() if v.is_floating_point())


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_first_steps_on_cuda(data: Path, tmp_path: Path, name: str):
    """The recipe's own network and parts (current recipe forms; GPU forms pending), three steps on CUDA."""
    from focusseg.recipes import load_recipe

    summary = run_training(data, tmp_path / "run", fold=0, recipe=load_recipe(name), overrides=SHORT,
                           device="cuda", progress=False, final_validation=False)
    assert summary["iterations"] == 3 and _finite_network(tmp_path / "run")


@pytest.mark.parametrize("amp", ["fp16", "bf16", "auto"])
def test_amp_steps_are_finite(data: Path, tmp_path: Path, amp: str):
    over = json.loads(json.dumps(SHORT))
    over["training"]["amp"] = amp
    run_training(data, tmp_path / "run", fold=0, overrides=over, device="cuda", progress=False,
                 final_validation=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if x.strip()]
    epochs = [x for x in lines if "event" not in x]
    assert epochs and epochs[0]["nonfinite_steps"] == 0 and _finite_network(tmp_path / "run")


def test_fp16_task_uses_a_scaler_and_bf16_none():
    from focusseg.engine.task import SupervisedTask

    net = torch.nn.Conv3d(1, 2, 3, padding=1).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    from focusseg.losses import build_loss

    loss = build_loss({"ce": 1.0, "soft_dice": 1.0})
    for dtype, scaled in ((torch.float16, True), (torch.bfloat16, False)):
        task = SupervisedTask(net, opt, loss, 2, dtype)
        assert task.scaler.is_enabled() is scaled
        x = torch.randn(2, 1, 16, 16, 16, device="cuda")
        y = torch.randint(0, 2, (2, 1, 16, 16, 16), device="cuda")
        for _ in range(3):
            step = task.step(x, y, [], None)
            assert step.finite and torch.isfinite(torch.tensor(step.loss))


def test_sliding_window_cpu_and_cuda_agree():
    from focusseg.inference import sliding_window_predict
    from focusseg.nets import build_network

    torch.manual_seed(0)
    net = build_network("unet", in_channels=1, out_channels=3, spatial_dims=3, patch_size=(32, 32, 32),
                        channels=[8, 16, 32], strides=[2, 2], num_res_units=1).eval()
    image = torch.randn(1, 50, 61, 40)
    cpu = sliding_window_predict(net, image, (32, 32, 32), overlap=0.5, mirror_axes=(0, 2), device="cpu")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # full fp32 convolutions: TF32 alone differs by ~1e-3
    try:
        gpu = sliding_window_predict(net.cuda(), image.cuda(), (32, 32, 32), overlap=0.5, mirror_axes=(0, 2),
                                     device="cuda", out_device="cpu")
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert cpu.shape == gpu.shape and torch.allclose(cpu, gpu, atol=1e-4, rtol=1e-4), (cpu - gpu).abs().max()


@pytest.mark.parametrize("preset", ["nnunet", "light"])
def test_augmentation_on_cuda_matches_cpu_shapes_and_dtypes(preset: str):
    from focusseg.augment import AugmentConfig, BatchAugmenter

    aug = BatchAugmenter(AugmentConfig.from_dict({"preset": preset}), spatial_dims=3)
    x = torch.randn(2, 1, 24, 32, 28)
    y = torch.randint(0, 3, (2, 1, 24, 32, 28))
    with torch.no_grad():
        xc, yc = aug(x, y, torch.Generator().manual_seed(0))
        xg, yg = aug(x.cuda(), y.cuda(), torch.Generator().manual_seed(0))
    assert xg.device.type == "cuda" and yg.device.type == "cuda"
    assert (xc.shape, xc.dtype, yc.shape, yc.dtype) == (xg.shape, xg.dtype, yg.shape, yg.dtype)
    assert torch.isfinite(xg).all() and set(yg.unique().tolist()) <= {0, 1, 2}
