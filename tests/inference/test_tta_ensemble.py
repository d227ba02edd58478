from __future__ import annotations

import pytest
import torch
from inference_helpers import CountingNet, TinyConvNet

from focusseg.inference import (
    EnsembleMember,
    count_tta_passes,
    ensemble_predict,
    sliding_window_predict,
    tta_passes,
    tta_predict,
)

torch.manual_seed(0)
PATCH = (12, 12, 8)


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(2, 16, 14, 10)


def test_tta_without_augmentation_is_softmax_of_sliding_window(image):
    net = TinyConvNet()
    res = tta_predict(net, image, PATCH, return_uncertainty=True)
    ref = sliding_window_predict(net, image, PATCH).softmax(0)
    torch.testing.assert_close(res.probabilities, ref)
    assert res.n_predictions == 1 and res.variance.abs().max() == 0


def test_noise_passes_are_seeded_and_averaged_on_probabilities(image):
    net = TinyConvNet()
    g = torch.Generator().manual_seed(3)
    res = tta_predict(net, image, PATCH, noise_passes=2, noise_sigma=0.5, generator=g, return_uncertainty=True)
    assert res.n_predictions == 3 == count_tta_passes((), 2)
    g = torch.Generator().manual_seed(3)
    noisy = [image + 0.5 * torch.randn(image.shape, generator=g) for _ in range(2)]
    probs = [sliding_window_predict(net, x, PATCH).softmax(0) for x in [image, *noisy]]
    stack = torch.stack(probs)
    torch.testing.assert_close(res.probabilities, stack.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.variance, stack.var(0, unbiased=False), atol=1e-6, rtol=1e-4)
    assert res.variance.max() > 0 and res.mean_variance().shape == image.shape[1:]


def test_split_mirrors_one_pass_per_flip(image):
    net = TinyConvNet()
    passes = list(tta_passes(net, image, PATCH, mirror_axes=(0, 2), split_mirrors=True))
    assert len(passes) == 4 == count_tta_passes((0, 2), 0, split_mirrors=True)
    flipped = torch.flip(image, [1, 3])
    expected = torch.flip(sliding_window_predict(net, flipped, PATCH), [1, 3]).softmax(0)
    torch.testing.assert_close(passes[3], expected)
    # without splitting, mirrors are averaged on logits inside a single pass
    merged = list(tta_passes(net, image, PATCH, mirror_axes=(0, 2), include_clean=False))
    assert len(merged) == 1
    torch.testing.assert_close(merged[0], sliding_window_predict(net, image, PATCH, mirror_axes=(0, 2)).softmax(0))
    with pytest.raises(ValueError):
        next(tta_passes(net, image, PATCH, noise_passes=1, noise_sigma=0.0))


def test_ensemble_weighted_mean_with_own_patch_sizes(image):
    a, b = TinyConvNet(), TinyConvNet()
    b_counter = CountingNet(b)
    res = ensemble_predict(
        [(a, 3.0, PATCH), EnsembleMember(b_counter, 1.0, (8, 8, 8), overlap=0.25)],
        image,
        mirror_axes=(1,),
        return_uncertainty=True,
    )
    pa = sliding_window_predict(a, image, PATCH, mirror_axes=(1,)).softmax(0)
    pb = sliding_window_predict(b, image, (8, 8, 8), overlap=0.25, mirror_axes=(1,)).softmax(0)
    torch.testing.assert_close(res.probabilities, (3 * pa + pb) / 4, atol=1e-6, rtol=1e-5)
    mean = (3 * pa + pb) / 4
    torch.testing.assert_close(res.variance, (3 * (pa - mean) ** 2 + (pb - mean) ** 2) / 4, atol=1e-6, rtol=1e-4)
    assert b_counter.samples > 0 and res.n_predictions == 2
    torch.testing.assert_close(res.probabilities.sum(0), torch.ones(image.shape[1:]))


def test_ensemble_with_noise_passes_weights_each_member_equally(image):
    a, b = TinyConvNet(), TinyConvNet()
    g = torch.Generator().manual_seed(0)
    res = ensemble_predict([a, b], image, PATCH, noise_passes=1, noise_sigma=0.2, generator=g)
    assert res.n_predictions == 4 and res.variance is None
    g = torch.Generator().manual_seed(0)
    pa = tta_predict(a, image, PATCH, noise_passes=1, noise_sigma=0.2, generator=g).probabilities
    pb = tta_predict(b, image, PATCH, noise_passes=1, noise_sigma=0.2, generator=g).probabilities
    torch.testing.assert_close(res.probabilities, (pa + pb) / 2, atol=1e-6, rtol=1e-5)


def test_ensemble_bad_members(image):
    net = TinyConvNet()
    with pytest.raises(ValueError):
        ensemble_predict([], image, PATCH)
    with pytest.raises(ValueError):
        ensemble_predict([net], image)  # no patch size anywhere
    with pytest.raises(ValueError):
        ensemble_predict([(net, 0.0)], image, PATCH)
    with pytest.raises(TypeError):
        ensemble_predict(["net"], image, PATCH)
    with pytest.raises(ValueError):  # members disagree on the number of classes
        ensemble_predict([net, TinyConvNet(2, 2)], image, PATCH)


def test_resample_argmax_equals_interpolating_every_class():
    import torch.nn.functional as F

    from focusseg.inference.predictor import resample_argmax, softmax_

    torch.manual_seed(0)
    z = torch.randn(7, 9, 11, 6)
    probs = softmax_(z.clone())
    torch.testing.assert_close(probs, torch.softmax(z, 0))
    full = F.interpolate(probs[None], size=(13, 17, 10), mode="trilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(resample_argmax(probs, (13, 17, 10)).long(), full)
    assert torch.equal(resample_argmax(probs, (9, 11, 6)).long(), probs.argmax(0))


def test_streaming_single_run_path_equals_probability_path(tmp_path):
    """One run without uncertainty takes the streaming path (class-chunked resampling); it must give the label
    map of the general path (softmax -> resample K channels -> argmax) on a case that is resampled."""
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from focusseg_testdata import write_tiny_dataset

    from focusseg.inference.predictor import EnsemblePredictor, Predictor
    from focusseg.io import read_case
    from focusseg.nets.from_plan import build_inference_module
    from focusseg.workflows.plan import plan_dataset

    data = write_tiny_dataset(tmp_path / "D", n_cases=3)
    plan = plan_dataset(data, "cpu", None, tmp_path / "fp.json", progress=False)
    plan["target_spacing"] = [1.0, 1.3, 1.1]  # every case is resampled to and from the network grid
    torch.manual_seed(0)
    net = build_inference_module(plan)
    with torch.no_grad():  # a non-trivial map: bias the classes so that all three appear
        for p in net.parameters():
            p.mul_(3.0)
    pred = Predictor(plan, net.state_dict(), "cpu")
    image, _, geo = read_case(sorted((data / "imagesTr").glob("case000_*.nii.gz")))
    streamed = EnsemblePredictor([pred]).segment(image, geo, tta=False)
    probs, props = pred.probabilities(image, geo, tta=False)
    general = np.zeros(geo.shape, np.uint8)
    general[tuple(slice(lo, hi) for lo, hi in props["bbox"])] = probs.argmax(0).numpy()
    assert len(np.unique(general)) >= 2
    assert (streamed == general).mean() > 0.9999


def test_predictor_noise_tta_from_the_plan(tmp_path):
    """``inference.noise_passes`` adds seeded noisy passes: the result equals tta_predict's, differs from the clean
    prediction, and is reproducible."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from focusseg_testdata import write_tiny_dataset

    from focusseg.inference.predictor import Predictor
    from focusseg.inference.tta import tta_predict
    from focusseg.io import read_case
    from focusseg.nets.from_plan import build_inference_module
    from focusseg.preprocessing.preprocess import preprocess_array
    from focusseg.workflows.plan import plan_dataset

    data = write_tiny_dataset(tmp_path / "D", n_cases=3)
    plan = plan_dataset(data, "cpu", None, tmp_path / "fp.json", progress=False)
    plan["inference"].update(mirror_axes=[0], noise_passes=2, noise_sigma=0.5, noise_seed=3)
    torch.manual_seed(0)
    pred = Predictor(plan, build_inference_module(plan).state_dict(), "cpu")
    image, _, geo = read_case(sorted((data / "imagesTr").glob("case000_*.nii.gz")))
    noisy, _ = pred.softmax_on_network_grid(image, geo)
    again, _ = pred.softmax_on_network_grid(image, geo)
    clean, _ = pred.softmax_on_network_grid(image, geo, tta=False)
    x = torch.from_numpy(preprocess_array(image, geo, plan)[0])
    ref = tta_predict(pred.network, x, plan["patch_size"], mirror_axes=(0,), noise_passes=2, noise_sigma=0.5,
                      generator=torch.Generator().manual_seed(3), overlap=0.5, batch_size=2,
                      amp_dtype=pred.amp).probabilities
    torch.testing.assert_close(noisy, ref)
    torch.testing.assert_close(noisy, again)
    assert (noisy - clean).abs().max() > 1e-4


def test_resample_add_equals_weighted_interpolation():
    import torch.nn.functional as F

    from focusseg.inference.predictor import resample_add_

    torch.manual_seed(1)
    a, b = torch.rand(5, 6, 7, 8), torch.rand(5, 9, 9, 9)
    acc = torch.zeros(5, 9, 9, 9)
    resample_add_(acc, a, 0.7, chunk=2)
    resample_add_(acc, b, 0.3)
    ref = 0.7 * F.interpolate(a[None], size=(9, 9, 9), mode="trilinear", align_corners=False)[0] + 0.3 * b
    torch.testing.assert_close(acc, ref)
