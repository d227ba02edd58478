"""The callback contract of ``focusseg.engine.events``: observers never change training; the callbacks that do
(fine-tuning's load, freeze and warm-up) declare ``changes_training = True`` and act only at the training hooks;
neither opens its own ``log.jsonl`` writer (the loop's ``trainer.log`` is the one)."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import torch

import focusseg
from focusseg.engine import finetune
from focusseg.engine.events import EVENTS, TRAINING_HOOKS, call, changes_training
from focusseg.reporting.observers import make_loggers
from focusseg.roles import PatchRequest, StepOutput
from focusseg.runfolder import EpochLog

SRC = Path(focusseg.__file__).resolve().parent
TRAINING_CHANGERS = (finetune.InitFrom, finetune.FreezeEncoder, finetune.LRWarmup)


def _hooks(obj: object) -> set[str]:
    return {e for e in EVENTS if callable(getattr(obj, e, None))}


def test_training_changers_declare_it_and_act_only_at_the_training_hooks():
    for cls in TRAINING_CHANGERS:
        assert changes_training(cls), cls
        assert _hooks(cls) and _hooks(cls) <= set(TRAINING_HOOKS), (cls, _hooks(cls))


def test_callbacks_for_a_resumed_fine_tuning_run_are_declared_training_changers():
    plan = {"training": {"init_from": {"source": "src.pt", "freeze_encoder_epochs": 1, "warmup_epochs": 1}}}
    cbs = finetune.callbacks_for(plan, resume=True)
    assert [type(c) for c in cbs] == [finetune.FreezeEncoder, finetune.LRWarmup]
    assert all(changes_training(c) for c in cbs)


class Untouchable:
    """Stands for what training uses: any read or write fails the test."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __getattr__(self, attr: str):
        raise AssertionError(f"an observer read trainer.{self.name}.{attr}")

    def __setattr__(self, attr: str, value) -> None:
        raise AssertionError(f"an observer wrote trainer.{self.name}.{attr}")


def _observers() -> list:
    out = make_loggers("none")
    if importlib.util.find_spec("tensorboard") is not None:
        out += [o for o in make_loggers("tensorboard") if not any(type(o) is type(p) for p in out)]
    return out


def test_observers_are_not_training_changers_and_never_touch_the_task(tmp_path):
    observers = _observers()
    assert observers
    trainer = SimpleNamespace(plan={"training": {}}, run_dir=tmp_path, log=EpochLog(tmp_path),
                              parts=Untouchable("parts"), sampler=Untouchable("sampler"), device=torch.device("cpu"),
                              train_ids=["a"], val_ids=["b"], epoch=0, iteration=0, max_iterations=2, best=0.0,
                              elapsed=0.0, history=[], nonfinite_run=0, timing={}, world=SimpleNamespace(is_main=True))
    before = dict(vars(trainer))
    requests = [PatchRequest("a", (0, 0, 0)), PatchRequest("a", (4, 0, 0))]
    losses = torch.rand(3, 2, generator=torch.Generator().manual_seed(0))
    step = StepOutput(requests, 0.5, losses.mean(0),
                      extras={"masks": torch.ones(3, 2, dtype=torch.bool), "per_network_loss": losses, "keep": 1.0})
    record = {"epoch": 0, "iteration": 1, "train_loss": 0.5, "lr": 0.01, "val_mean_dice": 0.5}
    for o in observers:
        assert not changes_training(o), o
    call(observers, "on_train_start", trainer)
    call(observers, "before_batch", trainer, requests)
    call(observers, "after_loss", trainer, step)
    call(observers, "after_batch", trainer, step)
    call(observers, "after_validation", trainer, torch.tensor([0.5, 0.5]))
    call(observers, "on_epoch_end", trainer, record)
    call(observers, "on_train_end", trainer, {"epochs": 1})
    after = vars(trainer)
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before), [k for k in before if after[k] is not before[k]]
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["cycle"]  # the observers ran, and wrote through trainer.log


def _names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}


def test_callbacks_write_log_jsonl_only_through_trainer_log():
    files = sorted((SRC / "engine" / "finetune").glob("*.py")) + [SRC / "reporting" / "observers.py"]
    assert len(files) > 2
    assert {str(p.relative_to(SRC)) for p in files if "EpochLog" in _names(p)} == set()
