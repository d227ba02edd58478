"""Host syncs in the data path (issue 13: "never data-bound"), counted on the CPU.

The batch is marked as device data (a ``torch.Tensor`` subclass that every op propagates); the counter
(:class:`focusseg.engine.syncs.HostReadCounter`) then counts ``item``/``tolist``/``cpu``/``numpy``/``bool``/
``int``/``float``/``index`` reads of *device data only* -- reads of host parameters (the augmenter's CPU draws)
cost nothing on a GPU and are not counted. The loader is counted whole (every tensor read). Default path:
0 reads in the loader, the augmentation, the losses (default, FP-PET, FLARE21, blob with the loader's instance
map) and the TP/FP/FN counts; the debug switch ``validate_labels=True`` and in-loss blob labelling do read.
A ``cuda`` test repeats it with the exact CUDA sync counter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from focusseg.augment import AugmentConfig, BatchAugmenter
from focusseg.data.loader import PatchLoader
from focusseg.engine.syncs import CudaSyncCounter, HostReadCounter
from focusseg.losses import BlobLoss, DeepSupervisionLoss, build_loss
from focusseg.roles import PatchRequest
from focusseg.strategies.cycle import class_counts

from .test_datapath_loader import make_store


class Dev(torch.Tensor):
    """Marks device-resident data (propagates through every torch op)."""


class DeviceReadCounter(HostReadCounter):
    def _record(self, name: str, tensor: torch.Tensor) -> None:
        if isinstance(tensor, Dev):
            super()._record(name, tensor)


class TinyDS(nn.Module):
    """Conv net with two deep-supervision outputs (full and half resolution)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv3d(1, k, 3, padding=1), nn.Conv3d(k, k, 1)

    def forward(self, x):
        y = self.a(x)
        return [self.b(y), y[:, :, ::2, ::2, ::2]]


ALL_ON = AugmentConfig.from_dict({"p_rotation": 1.0, "p_scaling": 1.0, "p_noise": 1.0, "p_blur": 1.0,
                                  "p_brightness": 1.0, "p_contrast": 1.0, "p_lowres": 1.0, "p_gamma": 1.0,
                                  "p_gamma_inverted": 0.5})
LOSSES = {
    "default": lambda: DeepSupervisionLoss(build_loss({"ce": 1, "dice": 1})),
    "fp-pet": lambda: DeepSupervisionLoss(build_loss({"ce": 1, "soft_dice": 1, "tversky": 1})),
    "flare21": lambda: DeepSupervisionLoss(build_loss({"dice": 1, "topk_ce": 1}), weights=[0.7, 0.3]),
    # compact_instances=False: the GPU default (on the CPU the map is compacted by reading it, which is free)
    "blob": lambda: DeepSupervisionLoss(BlobLoss(activation="softmax", compact_instances=False)),
    "per-sample": lambda: DeepSupervisionLoss(build_loss({"ce": 1, "dice": 1, "focal": 1}, reduction="none")),
}


def iterations(store, instances: bool, n: int = 3):
    loader = PatchLoader(store, (8, 8, 8), n_classes=3,
                         instances={"connectivity": 26} if instances else None, workers=1)
    reqs = [[PatchRequest("c0", (i, 0, 0)), PatchRequest("c1", (2, i, 0))] for i in range(n)]
    return loader, reqs


@pytest.mark.parametrize("recipe", sorted(LOSSES))
def test_no_host_reads_in_loss_and_augmentation(tmp_path: Path, recipe: str):
    torch.manual_seed(0)
    store = make_store(tmp_path / "s")
    loader, batches = iterations(store, instances=recipe == "blob")
    net, loss = TinyDS(3), LOSSES[recipe]()
    aug = BatchAugmenter(ALL_ON, spatial_dims=3)
    gen = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.5, 1.0, 2.0]).as_subclass(Dev)  # class weights kept on the device
    with HostReadCounter() as host:
        loaded = [loader.load(reqs) for reqs in batches]
    assert host.count == 0, f"loader: {dict(host.by_method)}"
    with DeviceReadCounter() as dev:
        for images, labels in loaded:
            x, y = images.as_subclass(Dev), labels.as_subclass(Dev)  # "copied to the device"
            with torch.no_grad():
                x, y = aug(x, y, gen)
            outputs = net(x)
            value = loss(outputs, y, class_weights=weights)
            value.sum().backward()
            class_counts(outputs[0].detach(), y, 3)
    assert dev.count == 0, f"{recipe}: {dict(dev.by_method)}"


def test_the_counter_sees_what_reads(tmp_path: Path):
    """The debug switch and in-loss blob labelling read device data (so the zeros above mean something)."""
    store = make_store(tmp_path / "s")
    loader, batches = iterations(store, instances=False, n=1)
    images, labels = loader.load(batches[0])
    x, y = images.as_subclass(Dev), labels.as_subclass(Dev)
    logits = TinyDS(3)(x)[0]
    with DeviceReadCounter() as dev:
        build_loss({"ce": 1, "dice": 1}, validate_labels=True)(logits, y)
    assert dev.count == 4  # min and max per part
    with DeviceReadCounter() as dev:
        BlobLoss(activation="softmax")(logits, y)  # one-channel target: cc3d on the host
    assert dev.by_method["cpu"] >= 1


def test_augmentation_carries_the_instance_map_with_the_labels(tmp_path: Path):
    """Two label channels go through every spatial transform alike (nearest): the instance map stays an
    instance map of the augmented labels (instance voxels on foreground only, each instance in one class)."""
    store = make_store(tmp_path / "s")
    loader, batches = iterations(store, instances=True, n=1)
    images, labels = loader.load(batches[0])
    aug = BatchAugmenter(ALL_ON, spatial_dims=3)
    params = aug.draw(2, (8, 8, 8), torch.Generator().manual_seed(3), n_channels=1)
    _, y2 = aug.apply(images, labels, params)
    _, y1 = aug.apply(images, labels[:, :1], params)
    assert y2.dtype == torch.int16 and torch.equal(y2[:, :1], y1)
    lab, inst = y2[:, 0], y2[:, 1]
    assert not ((inst > 0) & (lab == 0)).any() and not ((inst == 0) & (lab > 0)).any()
    for i in inst.unique().tolist():
        if i:
            assert lab[inst == i].unique().numel() == 1


@pytest.mark.cuda
def test_no_cuda_syncs_in_loss_and_augmentation(tmp_path: Path):
    store = make_store(tmp_path / "s")
    dev = torch.device("cuda")
    for recipe in sorted(LOSSES):
        loader, batches = iterations(store, instances=recipe == "blob")
        loader.pin_memory = True
        net, loss = TinyDS(3).to(dev), LOSSES[recipe]()
        aug = BatchAugmenter(ALL_ON, spatial_dims=3)
        gen = torch.Generator().manual_seed(0)
        weights = torch.tensor([0.5, 1.0, 2.0], device=dev)
        loaded = [loader.load(reqs) for reqs in batches]
        assert loaded[0][0].is_pinned()
        for i, (images, labels) in enumerate(loaded):
            x, y = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            with CudaSyncCounter() as counter:
                with torch.no_grad():
                    x, y = aug(x, y, gen)
                outputs = net(x)
                loss(outputs, y, class_weights=weights).sum().backward()
                class_counts(outputs[0].detach(), y, 3)
            if i > 0:  # the first iteration may initialise kernels/allocator
                assert counter.count == 0, f"{recipe}: {[str(w.message) for w in counter._records]}"
