"""Contract over every registered strategy: builds from a spec, plays its role, survives a checkpoint."""

from __future__ import annotations

import pytest
import torch
from strategy_helpers import through_torch_save

from focusseg.roles import ClassWeighter, LRController, Sampler, StepOutput
from focusseg.strategies import CLASS_WEIGHTERS, LR_CONTROLLERS, OPTIMIZERS, SAMPLERS


@pytest.mark.parametrize("name", CLASS_WEIGHTERS.names())
def test_class_weighters(name: str) -> None:
    a, b = CLASS_WEIGHTERS.build(name, n_classes=4), CLASS_WEIGHTERS.build({"name": name}, n_classes=4)
    assert isinstance(a, ClassWeighter)
    assert a.weights().tolist() == [1.0] * 4
    for k in range(8):
        a.update(torch.tensor([0.95, 0.5, 0.3]) if k > 2 else torch.tensor([0.2 * k, 0.1, 0.1]))
    b.load_state_dict(through_torch_save(a.state_dict()))
    a.update(torch.tensor([0.95, 0.6, 0.3]))
    b.update(torch.tensor([0.95, 0.6, 0.3]))
    assert torch.equal(a.weights(), b.weights()) and a.weights()[0] == 1.0


@pytest.mark.parametrize("name", LR_CONTROLLERS.names())
def test_lr_controllers(name: str) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ctl = LR_CONTROLLERS.build(name, optimizer=opt, lr0=0.01, max_iterations=10)
    assert isinstance(ctl, LRController)
    for it in range(10):
        lr = ctl.step(it, 0.5 if it == 4 else None)
        assert lr == opt.param_groups[0]["lr"] and 0 <= lr <= 0.01


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizers(name: str) -> None:
    p = torch.nn.Parameter(torch.ones(4, 3))
    opt = OPTIMIZERS.build(name, params=[p], lr=0.01, total_iterations=10)
    (p**2).sum().backward()
    opt.step()
    assert p.detach().sum() < 12


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_samplers(name: str) -> None:
    s = SAMPLERS.build(name, case_shapes={"a": (20, 20), "b": (12, 30)}, patch_size=(8, 8))
    assert isinstance(s, Sampler)
    g = torch.Generator().manual_seed(0)
    reqs = s.next_batch(6, g)
    s.update(StepOutput(reqs, 1.0, torch.arange(6, dtype=torch.float32)))
    s.epoch_end(0)
    t = SAMPLERS.build(name, case_shapes={"a": (20, 20), "b": (12, 30)}, patch_size=(8, 8))
    t.load_state_dict(through_torch_save(s.state_dict()))
    assert s.next_batch(6, torch.Generator().manual_seed(1)) == t.next_batch(6, torch.Generator().manual_seed(1))
