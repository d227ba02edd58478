"""Contract over every registered loss (docs/CONTRACTS.md): built by name, scalar and per-sample outputs,
finite gradients (random, empty and all-foreground masks, bf16 autocast), batched equals per-sample, bad inputs."""

from __future__ import annotations

import pytest
import torch
from loss_helpers import random_case

from focusseg.losses import LOSSES, build_loss, loss_names

NAMES = loss_names()
K = 3


def test_registry_names():
    expected = {"bce", "blob", "ce", "compound", "deep_supervision", "dice", "focal", "region_dice_bce", "soft_dice",
                "topk_ce"}
    assert expected | {"tversky"} == set(NAMES)
    assert all(name in LOSSES for name in NAMES)


def _grad(name: str, logits: torch.Tensor, target: torch.Tensor, reduction: str, weights=None) -> torch.Tensor:
    x = logits.clone().requires_grad_(True)
    out = build_loss({"name": name, "reduction": reduction})(x, target, weights)
    assert torch.isfinite(out).all(), f"{name}: non-finite loss {out}"
    out.sum().backward()
    assert torch.isfinite(x.grad).all(), f"{name}: non-finite gradient"
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial", [(8, 8), (6, 6, 4)])
def test_scalar_and_per_sample_with_finite_gradients(name, spatial):
    logits, target = random_case(2, K, spatial, seed=0)
    w = torch.tensor([0.5, 1.0, 2.0])
    mean = _grad(name, logits, target, "mean", w)
    per = _grad(name, logits, target, "none", w)
    assert mean.shape == () and per.shape == (2,)
    squeezed = build_loss(name)(logits, target[:, 0], w)  # (B, *spatial) targets are accepted too
    torch.testing.assert_close(squeezed, mean)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("fill", ["empty", "all_foreground"])
def test_finite_gradients_for_degenerate_masks(name, fill):
    logits, _ = random_case(2, K, (6, 6, 4), seed=1)
    target = torch.zeros(2, 1, 6, 6, 4, dtype=torch.long) + (0 if fill == "empty" else 1)
    for reduction in ("mean", "none"):
        _grad(name, logits, target, reduction)
    _grad(name, logits * 40, target, "mean")  # saturated probabilities


@pytest.mark.parametrize("name", NAMES)
def test_finite_gradients_under_bf16_autocast(name):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, K, 3, padding=1)
    image = torch.randn(2, 2, 6, 6, 4)
    _, target = random_case(2, K, (6, 6, 4), seed=2)
    loss = build_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(image)
        assert logits.dtype == torch.bfloat16
        out = loss(logits, target)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    reference = loss(conv(image).float(), target)
    assert abs(out.item() - reference.item()) < 0.05 * max(1.0, abs(reference.item()))


@pytest.mark.parametrize("name", NAMES)
def test_batched_per_sample_equals_each_sample_alone(name):
    logits, target = random_case(3, K, (6, 6, 4), seed=3)
    target[1] = 0  # one sample without foreground
    w = torch.tensor([1.0, 0.5, 2.0])
    per = build_loss(name, reduction="none")(logits, target, w)
    single = build_loss(name)
    for i in range(3):
        torch.testing.assert_close(per[i], single(logits[i : i + 1], target[i : i + 1], w), atol=1e-6, rtol=1e-6)


# the mean of per-sample losses equals the batch loss where the definition allows it (per-sample means of
# equal-sized samples, no class weights for CE): documented exceptions are batch Dice, TopK and blob loss.
@pytest.mark.parametrize(
    "spec",
    ["ce", "bce", "focal", "dice", "soft_dice", "tversky", {"ce": 1, "dice": 1}, {"name": "topk_ce", "k": 100}],
)
def test_per_sample_mean_equals_batch(spec):
    logits, target = random_case(3, K, (6, 6, 4), seed=4)
    per = build_loss(spec, reduction="none")(logits, target)
    torch.testing.assert_close(per.mean(), build_loss(spec)(logits, target))


def test_deep_supervision_contract_with_list():
    logits, target = random_case(2, K, (8, 8, 8), seed=5)
    x = logits.clone().requires_grad_(True)
    outs = [x, x[:, :, ::2, ::2, ::2], x[:, :, ::4, ::4, ::4]]
    for reduction, shape in (("mean", ()), ("none", (2,))):
        out = build_loss({"name": "deep_supervision", "reduction": reduction})(outs, target)
        assert out.shape == shape
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise(name):
    loss = build_loss(name)
    checked = build_loss(name, validate_labels=True)  # value checks: the debug switch (host syncs)
    logits, target = random_case(2, K, (6, 6, 4), seed=6)
    with pytest.raises(ValueError):
        loss(logits, target[:, :, :5])  # spatial mismatch
    if name != "blob":  # blob loss takes (labels, instance map) as a two-channel target
        with pytest.raises(ValueError):
            loss(logits, target.repeat(1, 2, 1, 1, 1))  # two target channels
    with pytest.raises(TypeError):
        loss(logits, target.float())  # not a label map
    with pytest.raises(ValueError):
        loss(logits, target, torch.ones(K + 1))  # class weights of the wrong length
    with pytest.raises(ValueError):
        checked(logits, target, -torch.ones(K))  # negative class weights
    with pytest.raises(ValueError):
        checked(logits, target + 5)  # labels out of range
    with pytest.raises(ValueError):
        checked(logits, target - 1)  # negative labels
    with pytest.raises(ValueError):
        loss(logits[:, :, 0, 0, 0], target[:, :, 0, 0, 0])  # (B, K) is not an image
    with pytest.raises(ValueError):
        build_loss({"name": name, "reduction": "sum"})


def test_bad_specs():
    with pytest.raises(KeyError, match="unknown loss"):
        build_loss("dcie")
    with pytest.raises(ValueError, match="activation"):
        build_loss({"name": "dice", "activation": "relu"})
    with pytest.raises(ValueError):
        build_loss(build_loss("ce"), reduction="none")
