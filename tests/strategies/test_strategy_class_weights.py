"""TCF / PCF / CBS (paper 003 eqs. 2-4) on hand-made score sequences; both readings of the eq. 3 trigger."""

from __future__ import annotations

import math

import pytest
import torch
from strategy_helpers import through_torch_save

from focusseg.roles import ClassWeighter
from focusseg.strategies import CBSWeighter, PCFWeighter, TCFWeighter

# Class 1 rises, then stalls: 0.805 at epoch 4 is its best; epochs 4-6 stay within 0.01 of it.
RISE_THEN_STALL = [0.5, 0.6, 0.7, 0.8, 0.805, 0.80, 0.79]
CLASS2 = [0.1, 0.2, 0.3, 0.35, 0.45, 0.5, 0.6]


def _feed(w: PCFWeighter, rows: list[list[float]]) -> list[list[float]]:
    out = []
    for r in rows:
        w.update(torch.tensor(r))
        out.append(w.weights().tolist())
    return out


def test_tcf_eq2_memoryless() -> None:
    w = TCFWeighter(4)
    assert w.weights().tolist() == [1.0, 1.0, 1.0, 1.0]
    w.update(torch.tensor([0.95, 0.5, 0.9]))  # 0.9 is not > 0.9
    assert w.weights().tolist() == pytest.approx([1.0, 0.1, 1.0, 1.0])
    w.update(torch.tensor([0.85, 0.91, float("nan")]))  # as printed, eq. 2 re-evaluates every epoch
    assert w.weights().tolist() == pytest.approx([1.0, 1.0, 0.1, 1.0])


def test_pcf_plateau_reading_freezes_stalled_best_class() -> None:
    w = PCFWeighter(3, window=2, epsilon=0.01)
    # D for class 1 at j = 3..6: 0.8-0.5, 0.805-0.6, 0.805-0.7, 0.805-0.8 = 0.005 <= eps -> trigger at j = 6
    rows = [[a, b] for a, b in zip(RISE_THEN_STALL, CLASS2)]
    hist = _feed(w, rows[:6])
    assert w.improvement(0, 2) is None  # fewer than delta + 2 epochs
    assert [w.improvement(0, j) for j in (3, 4, 5)] == pytest.approx([0.3, 0.205, 0.105])
    assert all(h == [1.0, 1.0, 1.0] for h in hist)
    assert _feed(w, rows[6:])[0] == pytest.approx([1.0, 0.1, 1.0])
    assert w.triggers == [6] and w.last_trigger == 6
    # the next trigger needs delta + 2 epochs in [u, j] (u included, as in eq. 3): class 2 is flat from 6 on
    hist = _feed(w, [[0.79, 0.6]] * 4)
    assert [h[2] for h in hist] == pytest.approx([1.0, 1.0, 0.1, 0.1])
    assert w.triggers == [6, 9]
    # everything frozen: nothing changes any more
    assert _feed(w, [[0.1, 0.1]] * 5)[-1] == pytest.approx([1.0, 0.1, 0.1])


def test_literal_reading_needs_a_decline() -> None:
    lit = PCFWeighter(2, window=2, epsilon=0.01, criterion="literal")
    plat = PCFWeighter(2, window=2, epsilon=0.01)
    stall = [[v] for v in RISE_THEN_STALL]
    assert _feed(lit, stall)[-1] == [1.0, 1.0]  # D = +0.005: the printed C > eps does not fire on a plateau
    assert _feed(plat, stall)[-1] == pytest.approx([1.0, 0.1])
    lit, plat = PCFWeighter(2, window=2, epsilon=0.01, criterion="literal"), PCFWeighter(2, window=2, epsilon=0.01)
    decline = [[0.8], [0.9], [0.7], [0.7], [0.7]]  # j = 4: pre [0.8, 0.9], window [0.7] * 3, D = -0.2
    assert [h[1] for h in _feed(lit, decline)] == [1.0, 1.0, 1.0, 1.0, pytest.approx(0.1)]
    assert [h[1] for h in _feed(plat, decline)] == [1.0, 1.0, 1.0, 1.0, pytest.approx(0.1)]
    rising = PCFWeighter(2, window=2, epsilon=0.01)
    assert _feed(rising, [[0.1 * k] for k in range(1, 9)])[-1] == [1.0, 1.0]


def test_pcf_tests_the_best_unfrozen_class_only() -> None:
    # class 2 has plateaued, but class 1 is the best and still improving: no trigger
    w = PCFWeighter(3, window=1, epsilon=0.01)
    hist = _feed(w, [[0.5, 0.3], [0.6, 0.3], [0.7, 0.3], [0.8, 0.3]])
    assert hist[-1] == [1.0, 1.0, 1.0]


def test_cbs_eq4_boosts_unfrozen_classes() -> None:
    w = CBSWeighter(3, window=2, epsilon=0.01)
    hist = _feed(w, [[a, b] for a, b in zip(RISE_THEN_STALL, CLASS2)])
    assert all(h == [1.0, 1.0, 1.0] for h in hist[:6])
    assert hist[6] == pytest.approx([1.0, 0.1, 1.0 / (0.6 + 1e-3)])
    low = CBSWeighter(3, window=2, epsilon=0.01)
    hist = _feed(low, [[a, b - 0.3 if b > 0.3 else b] for a, b in zip(RISE_THEN_STALL, CLASS2)])
    assert hist[6] == pytest.approx([1.0, 0.1, 2.0])  # 1 / 0.301 = 3.32 capped at 2
    nofreeze = CBSWeighter(3, window=2, epsilon=0.01, freeze=False)
    hist = _feed(nofreeze, [[a, b] for a, b in zip(RISE_THEN_STALL, CLASS2)])
    assert hist[6] == pytest.approx([1.0, 1.0 / (0.79 + 1e-3), 1.0 / (0.6 + 1e-3)])
    assert _feed(nofreeze, [[0.5, 0.2]])[-1] == pytest.approx(hist[6])  # kept between triggers


def test_nan_scores_keep_weights_and_bad_shapes_raise() -> None:
    w = PCFWeighter(3, window=1, epsilon=0.01)
    _feed(w, [[float("nan"), 0.5]] * 5)
    assert w.frozen == [False, True]
    assert math.isnan(w.history[0][0])
    with pytest.raises(ValueError):
        w.update(torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError):
        TCFWeighter(1)
    with pytest.raises(ValueError):
        PCFWeighter(3, criterion="sometimes")


@pytest.mark.parametrize("cls", [TCFWeighter, PCFWeighter, CBSWeighter])
def test_state_round_trip(cls: type) -> None:
    rows = [[a, b] for a, b in zip(RISE_THEN_STALL + [0.7, 0.7, 0.7], CLASS2 + [0.95, 0.6, 0.6])]
    a = cls(3, **({} if cls is TCFWeighter else {"window": 2}))
    _feed(a, rows[:5])
    assert isinstance(a, ClassWeighter)
    b = cls(3, **({} if cls is TCFWeighter else {"window": 2}))
    b.load_state_dict(through_torch_save(a.state_dict()))
    assert _feed(a, rows[5:]) == _feed(b, rows[5:])
    assert b.weights().dtype == torch.float32 and b.weights().shape == (3,)
