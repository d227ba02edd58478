"""Focused Practice: patch index, Otsu threshold, hard/easy split, sampling frequencies, exclusion, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategy_helpers import through_torch_save

from focusseg.roles import PatchRequest, Sampler, StepOutput
from focusseg.strategies import SAMPLERS, FocusedPracticeSampler, otsu_threshold


def _brute_force_otsu(values: np.ndarray, bins: int) -> float:
    """Otsu by definition: try every split between histogram bins, compute the between-class variance
    from the two classes' weights and means directly, keep the best (first on ties)."""
    hist, edges = np.histogram(values, bins=bins, range=(values.min(), values.max()))
    centers = (edges[:-1] + edges[1:]) / 2
    best, best_t = -1.0, None
    for k in range(bins - 1):
        w0, w1 = hist[: k + 1].sum(), hist[k + 1 :].sum()
        if w0 == 0 or w1 == 0:
            var = 0.0
        else:
            m0 = (hist[: k + 1] * centers[: k + 1]).sum() / w0
            m1 = (hist[k + 1 :] * centers[k + 1 :]).sum() / w1
            var = w0 * w1 * (m0 - m1) ** 2
        if var > best:
            best, best_t = var, centers[k]
    return float(best_t)


def _bimodal(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.2, 0.03, 500), rng.normal(0.8, 0.05, 200)])


def test_otsu_on_bimodal_losses() -> None:
    # overlapping modes (no empty bins): a unique maximum, equal to the definition's
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.3, 0.08, 3000), rng.normal(0.75, 0.08, 1500)])
    t = otsu_threshold(torch.from_numpy(v))
    assert 0.45 < t < 0.6
    assert t == pytest.approx(_brute_force_otsu(v, 256), abs=1e-12)
    assert otsu_threshold(v, bins=16) == pytest.approx(_brute_force_otsu(v, 16), abs=1e-12)
    assert otsu_threshold(v, edge=True) == pytest.approx(t + (v.max() - v.min()) / 256 / 2)
    # separated modes: every split inside the gap has the same variance; the edge threshold splits the modes
    v = _bimodal()
    t_edge = otsu_threshold(v, edge=True)
    assert v[:500].max() <= t_edge < v[500:].min()
    assert otsu_threshold([0.3, 0.3, 0.3]) == 0.3
    with pytest.raises(ValueError):
        otsu_threshold([float("nan")])


def test_otsu_matches_skimage() -> None:
    filters = pytest.importorskip("skimage.filters")
    for seed in range(3):
        v = _bimodal(seed)
        assert otsu_threshold(v) == pytest.approx(filters.threshold_otsu(v), abs=1e-9)


def test_patch_grid_is_nnunet_placement() -> None:
    s = FocusedPracticeSampler({"b": (110, 64, 30), "a": (64, 64, 64)}, (64, 64, 32))
    assert s.cases == ["a", "b"]  # sorted
    # a: 1 x 1 x ceil(32 / 16) + 1 = 3 starts [0, 16, 32]; b: [0, 23, 46] x [0] x centred [-1]
    assert s.grids[0] == [[0], [0], [0, 16, 32]]
    assert s.grids[1] == [[0, 23, 46], [0], [-1]]
    assert s.n_patches == 6
    reqs = [s.request(k) for k in range(6)]
    assert reqs[0] == PatchRequest("a", (0, 0, 0), 0)
    assert reqs[4] == PatchRequest("b", (23, 0, -1), 4)
    with pytest.raises(IndexError):
        s.request(6)
    assert s.keys_containing("b", np.array([[100, 10, 5]])) == [5]
    assert s.keys_containing("b", np.array([[50, 10, 5], [1, 1, 1]])) == [3, 4, 5]
    assert s.keys_containing("a", np.zeros((0, 3))) == []


def _sampler(**kw: object) -> FocusedPracticeSampler:
    """100 patches of one case (10 x 10 grid of 2D patches)."""
    return FocusedPracticeSampler({"c": (55, 55)}, (10, 10), overlap=0.5, **kw)


def _report(s: FocusedPracticeSampler, keys: list[int], losses: list[float]) -> None:
    s.update(StepOutput([s.request(k) for k in keys], 0.0, torch.tensor(losses)))


def _hard_easy_losses(s: FocusedPracticeSampler) -> tuple[list[int], list[int]]:
    """80 easy patches with loss ~0.1, 20 hard ones with losses 1.0 .. 1.95; returns (hard, hardest-4)."""
    rng = np.random.default_rng(1)
    keys = list(range(100))
    hard = keys[::5]
    losses = [0.1 + 0.01 * rng.random() for _ in keys]
    for rank, k in enumerate(hard):
        losses[k] = 1.0 + 0.05 * rank
    _report(s, keys, losses)
    return hard, hard[-4:]


def test_split_log_and_sampling_frequencies() -> None:
    s = _sampler()
    assert s.n_patches == 100
    hard, hardest = _hard_easy_losses(s)
    log = s.epoch_end(0)
    assert 0.11 < log["threshold"] < 1.0
    assert (log["n_hard"], log["n_excluded"], log["n_easy"]) == (16, 4, 80)
    assert sum(log["loss_hist"]["counts"]) == 100 and len(log["loss_hist"]["edges"]) == 33
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([r.key for _ in range(200) for r in s.next_batch(100, g)])
    counts = torch.bincount(draws, minlength=100).double()
    assert counts[hardest].sum() == 0  # excluded patches are never drawn
    kept = sorted(set(hard) - set(hardest))
    easy = sorted(set(range(100)) - set(hard))
    expected = torch.zeros(100, dtype=torch.float64)
    expected[kept], expected[easy] = 2.0, 1.0
    expected *= draws.numel() / expected.sum()
    # group frequencies: 32 / 112 of the draws go to kept hard patches (ratio hard:easy = 2:1 per patch)
    frac_hard = counts[kept].sum() / draws.numel()
    sd = (32 / 112 * 80 / 112 / draws.numel()) ** 0.5
    assert abs(frac_hard - 32 / 112) < 5 * sd
    # per-patch chi-square over the 96 drawable patches: df = 95, mean 95, sd sqrt(190)
    m = expected > 0
    chi2 = float(((counts[m] - expected[m]) ** 2 / expected[m]).sum())
    assert chi2 < 95 + 5 * 190**0.5
    assert (counts[kept].mean() / counts[easy].mean()).item() == pytest.approx(2.0, rel=0.05)


def test_configurable_ratio_and_forgetting_excluded() -> None:
    s = _sampler(hard_oversample=5.0, drop_hardest=0.5)
    hard, _ = _hard_easy_losses(s)
    log = s.epoch_end(0)
    assert log["n_excluded"] == 10
    assert sorted(torch.nonzero(s.sample_weights == 5.0).flatten().tolist()) == hard[:10]
    assert s.sample_weights[hard[10:]].sum() == 0
    # the excluded patches were not trained on: at the next split they are unseen -> hard under "max"
    log = s.epoch_end(1)
    assert log["n_unseen"] == 10 and log["n_excluded"] == 5
    assert s.hard[hard[10:]].all()


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_unseen_default(mode: str) -> None:
    s = _sampler(unseen_loss=mode, drop_hardest=0.0)
    # seen: 45 easy spread over [0, 0.44], 5 hard at 1.0 -> mean 0.298 lies below the threshold (~0.44)
    _report(s, list(range(50)), [1.0 if k < 5 else 0.01 * (k - 5) for k in range(50)])
    log = s.epoch_end(0)
    assert log["n_unseen"] == 50
    assert bool(s.hard[50:].all()) is (mode == "max")
    assert log["n_hard"] == (55 if mode == "max" else 5)


def test_before_any_loss_uniform_and_update_checks() -> None:
    s = _sampler()
    log = s.epoch_end(0)
    assert log["n_seen"] == 0 and bool((s.sample_weights == 1).all())
    s.update(StepOutput([PatchRequest("c", (0, 0), -1)], 0.0, torch.tensor([3.0])))  # key -1 ignored
    assert torch.isnan(s.losses).all()
    with pytest.raises(ValueError):
        s.update(StepOutput([s.request(0)], 0.0, torch.tensor([1.0, 2.0])))
    with pytest.raises(ValueError):
        _sampler(unseen_loss="min")


def test_foreground_positions() -> None:
    fg = {3, 17, 42}
    s = _sampler(foreground_keys=fg, foreground_fraction=0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        keys = [r.key for r in s.next_batch(4, g)]
        assert set(keys[2:]) <= fg  # positions b >= round(B (1 - f)) are foreground
    assert {r.key for _ in range(50) for r in s.next_batch(4, g)[:2]} - fg  # the others are not restricted


def test_state_round_trip_and_protocol() -> None:
    s = SAMPLERS.build("focused_practice", case_shapes={"c": (55, 55)}, patch_size=(10, 10))
    assert isinstance(s, Sampler)
    _hard_easy_losses(s)
    s.epoch_end(0)
    t = _sampler()
    t.load_state_dict(through_torch_save(s.state_dict()))
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [r.key for r in s.next_batch(64, ga)] == [r.key for r in t.next_batch(64, gb)]
    assert s.epoch_end(1) == t.epoch_end(1)
    with pytest.raises(ValueError):
        FocusedPracticeSampler({"c": (20, 20)}, (10, 10)).load_state_dict(s.state_dict())
