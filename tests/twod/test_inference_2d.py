"""2D inference: slice by slice (batched slices, in-plane Gaussian window and mirror TTA), stacked to 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from focusseg.inference import sliding_window_predict
from focusseg.inference.sliding_window import SlicesAsDepth


class Counting2D(nn.Module):
    """A small 2D conv net that counts the slices it is given."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, k, 3, padding=1))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4, x.shape
        self.seen += x.shape[0]
        return self.conv(x)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slicewise_prediction_equals_2d_windows_stacked(slice_axis):
    image = torch.randn(2, 9, 14, 11, generator=torch.Generator().manual_seed(slice_axis))
    net = Counting2D()
    patch = [8, 8]
    out = sliding_window_predict(net, image, patch, overlap=0.5, mirror_axes=(0, 1), batch_size=8,
                                 slice_axis=slice_axis)
    assert tuple(out.shape) == (3, 9, 14, 11)
    ref = [sliding_window_predict(net, image.select(1 + slice_axis, s), patch, overlap=0.5, mirror_axes=(0, 1),
                                  batch_size=8) for s in range(image.shape[1 + slice_axis])]
    torch.testing.assert_close(out, torch.stack(ref, dim=1 + slice_axis), atol=1e-5, rtol=1e-5)


def test_each_slice_window_runs_once_and_passes_hold_several_slices():
    image = torch.randn(2, 10, 8, 8)
    net = Counting2D()
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    sliding_window_predict(net, image, [8, 8], overlap=0.5, mirror_axes=(), batch_size=4, slice_axis=0)
    assert net.seen == 10 and max(calls) == 4  # 10 slices, one window each, 4 slices per pass


def test_mask_skips_empty_slices_as_background():
    image = torch.zeros(2, 6, 8, 8)
    image[:, 2] = 1.0
    net = Counting2D()
    out = sliding_window_predict(net, image, [8, 8], batch_size=2, slice_axis=0, mask=image.any(0).bool())
    assert net.seen == 1
    assert bool((out[:, 0].argmax(0) == 0).all()) and bool((out[0, 3] == 20.0).all())


def test_slicewise_refuses_bad_arguments():
    with pytest.raises(ValueError, match="slice"):
        sliding_window_predict(Counting2D(), torch.zeros(2, 4, 8, 8), [8, 8, 8], slice_axis=0)
    with pytest.raises(ValueError, match="in-plane"):
        sliding_window_predict(Counting2D(), torch.zeros(2, 4, 8, 8), [8, 8], mirror_axes=(2,), slice_axis=0)
    with pytest.raises(ValueError, match=r"\(B, C, 1, H, W\)"):
        SlicesAsDepth(Counting2D())(torch.zeros(1, 2, 2, 8, 8))


def test_predictor_on_a_2d_plan_gives_3d_probabilities(tmp_path):
    from focusseg.inference.predictor import Predictor
    from focusseg.io.geometry import Geometry
    from focusseg.nets.from_plan import build_network_from_plan
    from focusseg.planning.planner import make_plan
    from focusseg.workflows.plan import finish_plan

    fp = {"dataset": "s", "n_cases": 10, "channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1},
          "median_spacing": [1.0, 1.0, 2.0], "spacing_percentile_10": [1.0, 1.0, 2.0],
          "median_shape_after_crop": [16, 12, 7], "median_crop_fraction": 1.0,
          "intensity": [{"channel": "MR", "mean": 0.0, "std": 1.0, "percentile_00_5": -1.0, "percentile_99_5": 1.0}]}
    plan = finish_plan(make_plan(fp), None, {"configuration": "2d", "training": {"amp": "none"},
                                             "network": {"channels": [4, 8, 16], "strides": [2, 2]}})
    net = build_network_from_plan(plan)
    pred = Predictor(plan, net.state_dict(), device="cpu")
    image = np.random.default_rng(0).normal(size=(1, 16, 12, 7)).astype(np.float32)
    geo = Geometry(affine=np.diag([1.0, 1.0, 2.0, 1.0]), shape=(16, 12, 7))
    probs, _ = pred.probabilities(image, geo)
    assert tuple(probs.shape) == (2, 16, 12, 7)
    torch.testing.assert_close(probs.sum(0), torch.ones(16, 12, 7), atol=1e-4, rtol=1e-4)
    seg = pred.segment(image, geo)
    assert seg.shape == (16, 12, 7)
