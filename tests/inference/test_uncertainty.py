from __future__ import annotations

import math

import pytest
import torch

from focusseg.inference import ProbabilisticPrediction, StreamingMoments, activate, entropy, inverse_confidence


def test_entropy_hand_values():
    p = torch.tensor([[1.0, 0.5, 0.25], [0.0, 0.5, 0.25], [0.0, 0.0, 0.5]])  # 3 classes, 3 voxels
    h = entropy(p)
    torch.testing.assert_close(h, torch.tensor([0.0, math.log(2), 1.5 * math.log(2)]))
    torch.testing.assert_close(entropy(p, normalize=True), h / math.log(3))
    fg = torch.tensor([[0.0, 0.5, 1.0]])  # single channel = binary foreground probability
    torch.testing.assert_close(entropy(fg, normalize=True), torch.tensor([0.0, 1.0, 0.0]))
    multi = torch.tensor([[0.5, 0.5], [0.5, 1.0]])  # two sigmoid channels: mean binary entropy
    torch.testing.assert_close(entropy(multi, normalize=True, binary=True), torch.tensor([1.0, 0.5]))


def test_inverse_confidence_reading():
    z = torch.tensor([[-4.0, -1.0, 0.0, 2.0]])
    p = torch.sigmoid(z)
    u = inverse_confidence(p)
    torch.testing.assert_close(u, 1 - torch.tanh(z[0].abs() / 2))  # monotone in 1/|z|, bounded
    assert u[2] == 1.0 and torch.all(torch.diff(u[:3]) > 0)
    two = torch.cat([1 - p, p])  # K = 2 softmax gives the same map
    torch.testing.assert_close(inverse_confidence(two), u)
    three = torch.tensor([[0.6, 0.4], [0.3, 0.35], [0.1, 0.25]])
    torch.testing.assert_close(inverse_confidence(three), torch.tensor([1 - 0.3, 1 - 0.05]))


def test_streaming_moments_weighted_mean_and_variance():
    preds = [torch.rand(3, 4, 5) for _ in range(4)]
    weights = [1.0, 2.0, 0.5, 1.5]
    m = StreamingMoments(track_variance=True)
    for p, w in zip(preds, weights):
        m.add(p, w)
    stack = torch.stack(preds).double()
    w = torch.tensor(weights, dtype=torch.float64).view(-1, 1, 1, 1)
    mean = (w * stack).sum(0) / w.sum()
    var = (w * (stack - mean) ** 2).sum(0) / w.sum()
    torch.testing.assert_close(m.mean().double(), mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m.variance().double(), var, atol=1e-6, rtol=1e-6)
    assert m.count == 4
    with pytest.raises(ValueError):
        m.add(torch.rand(3, 4, 4))
    with pytest.raises(ValueError):
        m.add(preds[0], 0.0)
    with pytest.raises(RuntimeError):
        StreamingMoments().mean()
    with pytest.raises(RuntimeError):
        StreamingMoments(track_variance=False).variance()


def test_prediction_segmentation_and_activation():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    probs = activate(logits, "softmax")
    torch.testing.assert_close(probs.sum(0), torch.ones(2))
    pred = ProbabilisticPrediction(probs, "softmax")
    assert pred.segmentation().tolist() == [0, 1]
    sig = ProbabilisticPrediction(activate(logits, "sigmoid"), "sigmoid")
    assert sig.segmentation().tolist() == [[1, 0], [1, 1]]
    assert sig.entropy().shape == (2,) and sig.inverse_confidence().shape == (2,)
    with pytest.raises(ValueError):
        activate(logits, "relu")
    with pytest.raises(RuntimeError):
        pred.mean_variance()
