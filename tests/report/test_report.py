"""The run report, the comparison page and the TensorBoard logger, on tiny real runs (trained once per module)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from focusseg_testdata import write_tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 3, "iterations_per_epoch": 3, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": [0]}}
STRATEGIES = {"training": {"class_weighter": {"name": "cbs", "window": 2},
                           "sampler": {"_replace": True, "name": "focused_practice", "overlap": 0.5,
                                       "hard_oversample": 2.0, "drop_hardest": 0.2}}}
IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def _train(data: Path, run: Path, recipe: dict, tmp: Path, *extra: str) -> None:
    from typer.testing import CliRunner

    from focusseg.cli import app

    path = tmp / f"{run.name}.json"
    path.write_text(json.dumps({"name": run.name, "plan": recipe}))
    res = CliRunner().invoke(app, ["train", str(data), "--out", str(run), "--recipe", str(path), "--no-progress",
                                   "--device", "cpu", *extra])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny trained runs on one 10-case dataset (2 held-out cases in fold 0): ``cbs`` (CBS class weights +
    Focused Practice, TensorBoard logger) and ``plain`` (the default strategies, another seed)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("report")
    data = write_tiny_dataset(tmp / "Dataset001_Tiny", n_cases=10)
    from focusseg.planning.planner import deep_merge

    _train(data, tmp / "cbs", deep_merge(TINY, STRATEGIES), tmp, "--logger", "tensorboard")
    _train(data, tmp / "plain", deep_merge(TINY, {"training": {"seed": 1}}), tmp)
    torch.set_num_threads(n)
    return {"cbs": tmp / "cbs", "plain": tmp / "plain", "data": data, "tmp": tmp}


def _cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    """(exit code, the phrases of ["at least two", "not a focusseg run folder"] found in one-line errors)."""
    from focusseg.cli import main

    rc = main(args)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return rc, [p for p in ("at least two", "not a focusseg run folder") if p in lines[0]]


def _images(text: str) -> list[tuple[str, bytes]]:
    return [(alt, base64.b64decode(b64, validate=True)) for alt, b64 in IMG.findall(text)]


def _decode(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_train_writes_a_self_contained_report(runs: dict[str, Path]) -> None:
    path = runs["cbs"] / "report.html"
    assert path.is_file(), "focusseg train did not write RUN/report.html"
    text = path.read_text()
    # offline and script-free: no network reference of any kind
    assert "<script" not in text.lower()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', text)
    for heading in ("Training curves", "Strategies", "Class weights (CBS)", "Focused Practice", "Timing",
                    "Validation", "Slice overlays"):
        assert f">{heading}" in text, heading
    # every image is a real PNG that decodes, with content (not one flat colour)
    imgs = _images(text)
    assert len(imgs) == text.count("<img")
    alts = [a for a, _ in imgs]
    for alt, png in imgs:
        arr = _decode(png)
        assert arr.shape[0] > 100 and arr.shape[1] > 100 and arr.std() > 5, alt
    assert "training curves" in alts and "class weights CBS" in alts and "focused practice" in alts
    assert "dice violin plot" in alts
    # the validation table lists the held-out cases with the evaluator's Dice
    rows = [line.split(",") for line in (runs["cbs"] / "validation" / "metrics.csv").read_text().splitlines()[1:]]
    cases = sorted({r[0] for r in rows})
    assert len(cases) == 2
    for c in cases:
        assert f"<td class=\"l\">{c}</td>" in text
    # overlays: best and worst (the median of two is the best one: not drawn twice)
    overlays = [a for a in alts if a.startswith(("best case", "median case", "worst case"))]
    assert len(overlays) == 2 and overlays[0].startswith("best") and overlays[1].startswith("worst")
    # header facts come from the run
    plan = json.loads((runs["cbs"] / "plan.json").read_text())
    assert plan["dataset"] in text and "cbs (window=2)" in text and "finished" in text


def test_report_command_and_strategy_panel_absent_without_strategy(runs: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from focusseg.cli import app

    out = tmp_path / "sub" / "plain.html"
    res = CliRunner().invoke(app, ["report", str(runs["plain"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert ">Training curves" in text and "Class weights" not in text and "Focused Practice" not in text
    assert all(_decode(png).std() > 5 for _, png in _images(text))


def test_report_of_a_run_in_progress_says_what_is_missing(runs: dict[str, Path], tmp_path: Path) -> None:
    from focusseg.reporting import write_report

    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(runs["cbs"] / "plan.json", partial / "plan.json")
    shutil.copy(runs["cbs"] / "run.json", partial / "run.json")
    lines = (runs["cbs"] / "log.jsonl").read_text().splitlines()
    (partial / "log.jsonl").write_text(lines[0] + "\n" + '{"epoch": 1, "iter')  # a line being appended
    text = write_report(partial).read_text()
    assert "in progress" in text and "no final validation yet" in text and "no validated case yet" in text
    assert "1 line(s) that are not epoch records" in text
    assert all(_decode(png).std() > 5 for _, png in _images(text))
    # a plan and nothing else: a page, not a crash
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs["cbs"] / "plan.json", bare / "plan.json")
    text = write_report(bare, tmp_path / "bare.html").read_text()
    assert "no epoch logged yet" in text


def test_report_refuses_a_folder_that_is_no_run_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            capsys: pytest.CaptureFixture) -> None:
    from focusseg.errors import MissingFileError, RunFolderError
    from focusseg.reporting import report_after_training, write_report

    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="not a focusseg run folder"):
        write_report(tmp_path / "empty")
    with pytest.raises(MissingFileError):
        write_report(tmp_path / "nowhere")
    rc, found = _cli(["report", str(tmp_path / "empty")], capsys)
    assert rc != 0 and found == ["not a focusseg run folder"]
    assert not (tmp_path / "empty" / "report.html").exists()
    # the end-of-training hook never raises: it logs a warning
    with caplog.at_level("WARNING", logger="focusseg.reporting"):
        assert report_after_training(tmp_path / "empty") is None
    assert "run report could not be written" in caplog.text


def test_compare_page(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from typer.testing import CliRunner

    from focusseg.cli import app

    out = tmp_path / "compare.html"
    res = CliRunner().invoke(app, ["compare", str(runs["cbs"]), str(runs["plain"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    a = json.loads((runs["cbs"] / "validation" / "summary.json").read_text())["per_label"]
    b = json.loads((runs["plain"] / "validation" / "summary.json").read_text())["per_label"]
    for k in ("1", "2"):  # the difference column is the real difference of the two final validations
        d = b[k]["dice"]["mean"] - a[k]["dice"]["mean"]
        assert f"{d:+.4f}" in text
    assert "Δ vs cbs" in text and "final validation (original geometry)" in text
    imgs = _images(text)
    assert len(imgs) == 1 and _decode(imgs[0][1]).std() > 5
    rc, found = _cli(["compare", str(runs["cbs"]), "--out", str(out)], capsys)
    assert rc != 0 and found == ["at least two"]


def test_tensorboard_scalars_match_the_log(runs: dict[str, Path]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from focusseg.runfolder import read_log

    tb = runs["cbs"] / "tensorboard"
    assert any(tb.glob("events.out.tfevents.*")), "no TensorBoard event file"
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/mean_dice", "val/dice/1", "val/dice/2", "class_weights/1",
            "sampler/threshold", "train/loss_iteration"} <= tags
    log = read_log(runs["cbs"])
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [r["iteration"] for r in log]
    assert np.allclose([e.value for e in loss], [r["train_loss"] for r in log], rtol=1e-6)
    dice = acc.Scalars("val/mean_dice")
    assert np.allclose([e.value for e in dice], [r["val_mean_dice"] for r in log if "val_mean_dice" in r], rtol=1e-6)
    assert len(acc.Scalars("train/loss_iteration")) == log[-1]["iteration"]
    assert not (runs["plain"] / "tensorboard").exists()  # only with --logger tensorboard


def test_unknown_logger_is_refused() -> None:
    from focusseg.errors import UsageError
    from focusseg.reporting.observers import make_loggers

    with pytest.raises(UsageError, match="--logger 'wandb'"):
        make_loggers("wandb")
