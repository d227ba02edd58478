"""Time budgets at iteration granularity with time reserved for the final validation (issue 15 part 7)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from focusseg.engine.budget import fit_iterations
from focusseg.engine.state import Trainer


def _trainer(ipe: int = 100, iteration: int = 100, elapsed: float = 30.0, **timing: float) -> Trainer:
    t = Trainer(plan={"training": {"iterations_per_epoch": ipe}}, run_dir=Path("."), parts=None, sampler=None,
                device=torch.device("cpu"), train_ids=[], val_ids=[])
    t.iteration, t.elapsed = iteration, elapsed
    t.timing = {"iteration_s": 0.25, "validation_s": 5.0, "val_every": 1.0, "reserve_s": 0.0, **timing}
    return t


def _tiny_budgeted_run(tmp_path: Path, max_epochs: int, iterations_per_epoch: int, budget_min: float
                       ) -> tuple[dict, list[dict]]:
    """Train a tiny UNet on a 5-case synthetic dataset within ``budget_min`` minutes: (summary, log lines)."""
    from focusseg_testdata import write_tiny_dataset

    from focusseg.runfolder import read_log
    from focusseg.workflows.train import run_training

    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "D", n_cases=5)
    plan = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
            "patch_size": [16, 16, 16], "batch_size": 2,
            "training": {"max_epochs": max_epochs, "iterations_per_epoch": iterations_per_epoch,
                         "augmentation": "light", "amp": "none"}}
    summary = run_training(data, tmp_path / "run", overrides=plan, progress=False, time_budget_min=budget_min,
                           check=False)
    return summary, read_log(tmp_path / "run")


def test_fit_iterations_fills_the_budget_inside_the_last_epoch():
    # 300 s budget, 30 s spent; an epoch is 100 * 0.25 + 5 = 30 s: 9 whole epochs = 270 s, nothing left
    assert fit_iterations(_trainer(), 300.0, 10**6) == 100 + 900
    # 5-minute budget where whole epochs would stop at 4.5 minutes: the last 29 s hold a partial epoch of
    # (29 - 5 s validation) / 0.25 = 96 iterations
    assert fit_iterations(_trainer(), 329.0, 10**6) == 100 + 900 + 96
    # the final validation's reserve comes off the budget first
    assert fit_iterations(_trainer(reserve_s=60.0), 329.0, 10**6) == 100 + 7 * 100 + 96
    # validation every 5 epochs is amortised: an epoch costs 25 + 1 s; 270 - 260 - 5 s leave 20 iterations
    assert fit_iterations(_trainer(val_every=5.0), 300.0, 10**6) == 100 + 10 * 100 + 20
    # never fewer than done, never more than the plan's epochs
    assert fit_iterations(_trainer(), 10.0, 10**6) == 100
    assert fit_iterations(_trainer(), 10**6, 500) == 500


def test_a_budgeted_run_records_its_timing_and_ends_inside_the_budget(tmp_path: Path):
    budget_min = 0.4
    summary, log = _tiny_budgeted_run(tmp_path, 1000, 4, budget_min)
    timing = log[0]["timing"]
    assert timing["iteration_s"] > 0 and timing["reserve_s"] > 0  # the final validation was reserved
    fitted = [r for r in log if "planned_iterations" in r]
    assert len(fitted) >= min(2, len(log) - 1)  # refitted after every epoch but the last
    assert fitted[-1]["planned_iterations"] == summary["iterations"] or summary["train_seconds"] >= \
        budget_min * 60 - timing["reserve_s"] - 1  # stopped by the plan, or by the clock at the reserve
    assert summary["total_seconds"] <= budget_min * 60 * 1.5  # loose: a shared 2-core machine
    state = torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    assert set(state["timing"]) == {"iteration_s", "validation_s", "val_every", "reserve_s"}  # kept for resume
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["final_validation"]["mean_dice"] is not None


def test_epoch_costs_leave_the_warm_up_epoch_out():
    from focusseg.engine.budget import epoch_costs

    first = {"iteration": 100, "train_time_s": 40.0, "val_time_s": 4.0}
    assert epoch_costs([first], 100) == (0.4, 4.0)  # one epoch: all there is
    history = [first, {"iteration": 200, "train_time_s": 25.0, "val_time_s": 2.0},
               {"iteration": 250, "train_time_s": 12.5}]  # a partial epoch without validation
    assert epoch_costs(history, 100) == (37.5 / 150, 2.0)
    assert epoch_costs([{"iteration": 30, "train_time_s": 3.0}], 100) == (0.1, None)


def test_a_slow_first_epoch_no_longer_shortens_the_schedule():
    """The schedule is refitted from the later epochs: after a warm-up epoch twice as slow as the rest, the first
    fit plans 540 iterations into a 300 s budget; the refit after the second epoch plans the 900 that fit."""
    from focusseg.engine.budget import epoch_costs

    t = _trainer(iteration=100, elapsed=55.0)
    t.history = [{"iteration": 100, "train_time_s": 50.0, "val_time_s": 5.0}]
    it_s, _ = epoch_costs(t.history, 100)
    t.timing["iteration_s"] = it_s
    after_first = fit_iterations(t, 300.0, 10**6)
    t.history.append({"iteration": 200, "train_time_s": 25.0, "val_time_s": 5.0})
    t.iteration, t.elapsed = 200, 85.0
    t.timing["iteration_s"], _ = epoch_costs(t.history, 100)
    refitted = fit_iterations(t, 300.0, 10**6)
    assert t.timing["iteration_s"] == 0.25
    assert (after_first, refitted) == (100 + 4 * 100 + 40, 200 + 7 * 100)


def test_a_first_epoch_longer_than_the_budget_is_fitted_inside_it(tmp_path: Path):
    """Steps so slow that one epoch outlasts the budget (a GPU-sized plan on a CPU): the schedule is fitted after
    the first few iterations, so the learning rate decays inside the budget and the final validation's time is
    kept, instead of the plan's full schedule running into the clock."""
    from focusseg.engine.budget import EARLY_FIT_AFTER

    budget_min = 0.25
    summary, log = _tiny_budgeted_run(tmp_path, 1, 100000, budget_min)
    early = log[0]["early_fit"]
    assert early["timing"]["iteration_s"] > 0 and early["timing"]["reserve_s"] > 0
    assert EARLY_FIT_AFTER <= early["planned_iterations"] < 100000
    assert summary["iterations"] <= early["planned_iterations"]
    assert log[0]["lr"] < 0.01 * 0.5  # the poly schedule ran towards its fitted end, not the plan's 100,000 steps
    assert summary["train_seconds"] <= budget_min * 60 + 5
