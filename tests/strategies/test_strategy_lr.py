"""LR controllers: poly, cosine, constant, FP-PET metric-driven (both readings of eq. 2); state round trips."""

from __future__ import annotations

import math

import pytest
import torch
from strategy_helpers import through_torch_save

from focusseg.roles import LRController
from focusseg.strategies import LR_CONTROLLERS, CosineLR, MetricDrivenLR, PolyLR


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_poly_values_and_optimizer_groups() -> None:
    opt = _opt()
    ctl = PolyLR(opt, lr0=0.01, max_iterations=100)
    assert ctl.step(0) == pytest.approx(0.01)
    assert ctl.step(50) == pytest.approx(0.01 * 0.5**0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**0.9)
    assert ctl.step(50, metric=0.9) == pytest.approx(0.01 * 0.5**0.9)  # validation does not move poly
    assert ctl.step(100) == 0.0
    assert ctl.step(150) == 0.0  # clamped


def test_cosine_warmup_and_anneal() -> None:
    ctl = CosineLR(_opt(), lr0=1.0, max_iterations=110, warmup_iterations=10, min_lr=0.1)
    assert ctl.step(0) == pytest.approx(0.1)
    assert ctl.step(9) == pytest.approx(1.0)
    assert ctl.step(10) == pytest.approx(1.0)
    assert ctl.step(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert ctl.step(110) == pytest.approx(0.1)


def test_metric_driven_both_readings() -> None:
    pct = MetricDrivenLR(_opt(), lr0=3e-5)
    assert pct.lr == 3e-5  # before any validation
    assert pct.step(7, metric=0.8) == pytest.approx(3e-5 * 0.9**8)  # 80 % -> 0.9 ** 8 = 0.4305
    assert pct.step(8) == pytest.approx(3e-5 * 0.9**8)  # iteration calls keep the rate
    assert pct.step(9, metric=float("nan")) == pytest.approx(3e-5 * 0.9**8)
    literal = MetricDrivenLR(_opt(), lr0=3e-5, dice_in_percent=False)
    assert literal.step(7, metric=0.8) == pytest.approx(3e-5 * 0.9**0.08)
    assert literal.rate_for(1.0) / 3e-5 == pytest.approx(0.98952, abs=1e-5)  # at most ~1 % decay
    assert pct.rate_for(1.0) / 3e-5 == pytest.approx(0.9**10)


def test_registry_builds_all_and_round_trips() -> None:
    assert LR_CONTROLLERS.names() == ["constant", "cosine", "metric_driven", "poly"]
    for name in LR_CONTROLLERS.names():
        opt = _opt()
        ctl = LR_CONTROLLERS.build(name, optimizer=opt, lr0=0.02, max_iterations=50)
        assert isinstance(ctl, LRController)
        ctl.step(20)
        lr = ctl.step(21, metric=0.5)
        opt2 = _opt()
        ctl2 = LR_CONTROLLERS.build(name, optimizer=opt2, lr0=0.02, max_iterations=50)
        ctl2.load_state_dict(through_torch_save(ctl.state_dict()))
        assert opt2.param_groups[0]["lr"] == pytest.approx(lr)
        assert math.isclose(ctl2.step(22), ctl.step(22))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        PolyLR(_opt(), 0.01, 0)
    with pytest.raises(ValueError):
        CosineLR(_opt(), 0.01, 10, warmup_iterations=10)
    with pytest.raises(ValueError):
        MetricDrivenLR(_opt(), 3e-5, base=1.5)
