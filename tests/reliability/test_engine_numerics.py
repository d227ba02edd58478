"""Numerical guard: a NaN/inf loss or gradient skips the step (weights untouched) and is counted in the log; too
many in a row stop training with a message naming the epoch and a lower learning rate; a non-finite network is
never saved as best; every log line, summary.json and run.json are strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from focusseg_testdata import write_tiny_dataset

from focusseg.errors import TrainingError
from focusseg.runfolder import dumps_line, read_log
from focusseg.workflows.train import run_training

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 3, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": []}}


def _with(**training) -> dict:
    return {**TINY, "training": {**TINY["training"], **training}}


def _strict(text: str) -> list:
    def refuse(c):
        raise AssertionError(f"{c} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("engine_num") / "D", n_cases=4)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


class PoisonGradients:
    """Makes the gradient of the first parameter NaN at the given iterations (the loss stays finite), and records
    whether the weights changed in those steps."""

    def __init__(self, iterations: set[int], networks=lambda t: [t.parts.task.network]) -> None:
        self.iterations, self.networks = iterations, networks
        self.unchanged: dict[int, bool] = {}

    def on_train_start(self, trainer) -> None:
        self.t = trainer
        for net in self.networks(trainer):
            next(net.parameters()).register_hook(
                lambda g: g * math.nan if self.t.iteration in self.iterations else g)

    def before_batch(self, trainer, requests) -> None:
        self.before = [_params(n) for n in self.networks(trainer)]

    def after_batch(self, trainer, step) -> None:
        if trainer.iteration in self.iterations:
            after = [_params(n) for n in self.networks(trainer)]
            self.unchanged[trainer.iteration] = all(
                torch.equal(a, b) for pa, pb in zip(self.before, after) for a, b in zip(pa, pb))
            assert not step.finite


def test_nonfinite_gradient_skips_the_step_and_is_counted(data: Path, tmp_path: Path):
    poison = PoisonGradients({1, 2, 4})  # two in a row, then one: below the limit of 3
    summary = run_training(data, tmp_path / "run", fold=0, overrides=_with(max_nonfinite_steps=3), progress=False,
                           final_validation=False, callbacks=[poison])
    assert summary["iterations"] == 6
    assert poison.unchanged == {1: True, 2: True, 4: True}  # the optimiser did not step
    log = read_log(tmp_path / "run")
    assert [r["nonfinite_steps"] for r in log] == [1, 1, 1]
    assert all(r["train_loss"] is not None and math.isfinite(r["train_loss"]) for r in log)
    state = torch.load(tmp_path / "run" / "checkpoint_final.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["network"].values())


def test_cycle_training_guard(data: Path, tmp_path: Path):
    from focusseg.recipes import load_recipe

    nets = lambda t: t.parts.task.networks  # noqa: E731
    poison = PoisonGradients({1}, networks=nets)
    over = _with(max_epochs=1)
    over["network"] = {**TINY["network"], "_replace": True}
    run_training(data, tmp_path / "run", fold=0, recipe=load_recipe("cycle-flare21"), overrides=over,
                 progress=False, final_validation=False, callbacks=[poison])
    assert poison.unchanged == {1: True}
    assert read_log(tmp_path / "run")[0]["nonfinite_steps"] == 1


class PoisonWeights:
    """Sets a weight to NaN before the given iteration: every later loss is NaN."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_batch(self, trainer, requests) -> None:
        if trainer.iteration == self.at:
            with torch.no_grad():
                next(trainer.parts.task.network.parameters()).fill_(math.nan)


def test_nonfinite_loss_in_a_row_stops_with_epoch_and_lr_hint(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        run_training(data, run, fold=0, overrides=_with(max_nonfinite_steps=3), progress=False,
                     callbacks=[PoisonWeights(1)])
    msg = str(err.value)
    assert msg.startswith(str(run)) and "3 steps in a row" in msg and "(epoch 1, iteration 3)" in msg
    assert "--set training.optimizer.lr=0.001" in err.value.hint
    # epoch 0 was validated with a NaN network: never saved as best; the log stays strict JSON
    assert not (run / "checkpoint_best.pt").exists()
    lines = _strict((run / "log.jsonl").read_text())
    assert lines[0]["epoch"] == 0 and lines[0]["nonfinite_steps"] == 1 and "best" not in lines[0]
    assert lines[-1]["event"] == "diverged" and lines[-1]["iteration"] == 3


def test_diverging_learning_rate_never_saves_a_nonfinite_best(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    over = _with(max_epochs=4, max_nonfinite_steps=3, grad_clip=None,
                 optimizer={"name": "sgd", "lr": 1e30, "momentum": 0.99, "nesterov": True})
    with pytest.raises(TrainingError, match="NaN/inf"):
        run_training(data, run, fold=0, overrides=over, progress=False)
    best = run / "checkpoint_best.pt"
    if best.exists():
        state = torch.load(best, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["network"].values())
    _strict((run / "log.jsonl").read_text())


def test_nan_validation_dice_is_logged_as_null(tmp_path: Path):
    rec = {"epoch": 0, "train_loss": math.nan, "val_dice": {"1": math.inf}, "x": [-math.inf, 1.0]}
    assert json.loads(dumps_line(rec)) == {"epoch": 0, "train_loss": None, "val_dice": {"1": None}, "x": [None, 1.0]}


def test_summary_and_run_json_are_strict(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    summary = run_training(data, run, fold="all", overrides=_with(max_epochs=1), progress=False)
    assert summary["best_val_mean_dice"] is None  # never validated: not -Infinity
    for name in ("summary.json", "run.json", "plan.json"):
        _strict(" ".join((run / name).read_text().split()))  # one line: the whole file is strict JSON
    assert (run / "checkpoint_best.pt").is_file()  # no validation: the (finite) final weights are the best
