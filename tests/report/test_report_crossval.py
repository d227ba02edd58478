"""The cross-validation report (a real two-fold CV) and the cycle-training statistics observer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from report_fixtures import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def test_crossval_report(tmp_path: Path) -> None:
    from focusseg_testdata import write_tiny_dataset

    from focusseg.reporting import write_compare, write_report
    from focusseg.workflows.crossval import run_crossval

    data = write_tiny_dataset(tmp_path / "Dataset001_Tiny", n_cases=10)
    plan = json.loads(json.dumps(TINY))
    plan["training"].update(max_epochs=1, iterations_per_epoch=2)
    plan["inference"]["mirror_axes"] = []
    cv = tmp_path / "cv"
    result = run_crossval(data, cv, folds="0-1", recipe={"name": "tiny", "plan": plan}, device="cpu", progress=False)
    text = write_report(cv).read_text()
    assert "cross-validation report" in text and ">Per fold and pooled Dice" in text
    assert ">Pooled validation" in text and ">fold_0<" in text and ">fold_1<" in text
    pooled = result["pooled"]["mean_dice"]
    assert f"{pooled:.4f}" in text
    for k, f in result["folds"].items():
        assert f"{f['mean_dice']:.4f}" in text, k
    imgs = re.findall(r'<img alt="([^"]*)"', text)
    assert imgs.count("training curves") == 2  # each fold's curves
    # every fold also has its own run report from training; a CV folder compares by its pooled Dice
    assert (cv / "fold_0" / "report.html").is_file() and (cv / "fold_1" / "report.html").is_file()
    page = write_compare([cv, cv / "fold_0"], tmp_path / "c.html").read_text()
    assert "pooled cross-validation" in page and "cv/fold_0" in page


def test_cycle_stats_are_logged_and_reported(tmp_path: Path) -> None:
    """The observer measures the committee's selection of real :func:`cycle_select` masks; the report draws it."""
    from types import SimpleNamespace

    from focusseg.reporting import write_report
    from focusseg.reporting.collect import read_log_lines
    from focusseg.reporting.observers import CycleStats
    from focusseg.roles import StepOutput
    from focusseg.runfolder import EpochLog, read_log
    from focusseg.strategies.cycle import cycle_select

    gen = torch.Generator().manual_seed(0)
    obs = CycleStats()
    trainer = SimpleNamespace(run_dir=tmp_path, iteration=0, log=EpochLog(tmp_path))
    expect_kept, expect_dis = [], []
    for _ in range(4):
        losses = torch.rand(3, 8, generator=gen)
        masks = torch.stack([cycle_select(losses[(i + 1) % 3], losses[(i + 2) % 3], 0.75) for i in range(3)])
        step = StepOutput([], float(losses.mean()), losses.mean(0),
                          extras={"masks": masks, "per_network_loss": losses, "keep": 0.75})
        obs.after_batch(trainer, step)
        expect_kept.append(masks.float().mean().item())
        expect_dis.append(np.mean([(losses[(i + 1) % 3] - losses[(i + 2) % 3]).abs().mean().item() for i in range(3)]))
    log = EpochLog(tmp_path)
    record = {"epoch": 0, "iteration": 4, "train_loss": 0.5, "lr": 0.01, "elapsed_s": 1.0, "train_time_s": 1.0}
    log.write(record)
    obs.on_epoch_end(trainer, record)
    _, events = read_log_lines(tmp_path / "log.jsonl", [])
    assert [e["event"] for e in events] == ["cycle"]
    assert events[0]["kept_fraction"] == pytest.approx(np.mean(expect_kept)) == pytest.approx(0.75)
    assert events[0]["disagreement"] == pytest.approx(np.mean(expect_dis), rel=1e-6)
    assert [r["epoch"] for r in read_log(tmp_path)] == [0]  # the event is no epoch record
    (tmp_path / "plan.json").write_text(json.dumps({"dataset": "T", "labels": {"background": 0, "a": 1},
                                                    "training": {"task": {"name": "cycle", "keep": 0.75,
                                                                          "ramp_epochs": 2}}}))
    text = write_report(tmp_path).read_text()
    assert ">Cycle training" in text and 'alt="cycle training"' in text and "not in this run" not in text
