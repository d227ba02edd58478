"""Cross-validation as one workflow (issue 15 part 1): folds into CV/fold_K with one plan and one store, folds
trained alone later are pooled too, pooled metrics and post-processing, `predict CV` ensembles every fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from focusseg_testdata import write_tiny_dataset

from focusseg.errors import UsageError
from focusseg.runfolder import fold_dirs
from focusseg.workflows.crossval import parse_folds, run_crossval

TINY = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
        "patch_size": [16, 16, 16], "batch_size": 2,
        "training": {"max_epochs": 2, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
        "inference": {"mirror_axes": []}}


def test_parse_folds():
    assert parse_folds("0-4", 5) == [0, 1, 2, 3, 4]
    assert parse_folds("0,2", 5) == [0, 2]
    assert parse_folds("3", 5) == [3]
    assert parse_folds("all", 3) == [0, 1, 2]
    assert parse_folds("1-2,0", 5) == [0, 1, 2]
    for bad in ("5", "a", "3-1", "", "-1"):
        with pytest.raises(UsageError):
            parse_folds(bad, 5)


def test_crossval_trains_pools_and_predicts_as_an_ensemble(tmp_path: Path):
    from focusseg.cli import main

    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "D", n_cases=5, with_test=True)
    cv = tmp_path / "cv"
    seen = []
    res = run_crossval(data, cv, "0-1", overrides=TINY, progress=False, device="cpu",
                       on_fold=lambda k, status, s: seen.append((k, status)))
    assert seen == [(0, "trained"), (1, "trained")]
    assert sorted(res["folds"]) == ["0", "1"] and res["pooled"]["cases"] == 2
    # one plan, one store, one split file for every fold
    plans = [json.loads((cv / f"fold_{k}" / "plan.json").read_text()) for k in (0, 1)]
    assert plans[0] == plans[1]
    assert not (cv / "fold_0" / "preprocessed").exists() and (cv / "preprocessed" / "store.json").is_file()
    splits = json.loads((cv / "splits_final.json").read_text())
    assert not (cv / "fold_0" / "splits_final.json").exists()
    held_out = {p.name.split(".")[0] for p in (cv / "validation" / "predictions").iterdir()}
    assert held_out == set(splits[0]["val"]) | set(splits[1]["val"])

    # a fold trained alone later joins the pool; finished folds are kept, not retrained
    mtime = (cv / "fold_0" / "checkpoint_best.pt").stat().st_mtime_ns
    seen.clear()
    res = run_crossval(data, cv, "0,2", overrides=TINY, progress=False, device="cpu",
                       on_fold=lambda k, status, s: seen.append((k, status)))
    assert seen == [(0, "kept"), (2, "trained")]
    assert (cv / "fold_0" / "checkpoint_best.pt").stat().st_mtime_ns == mtime
    assert res["pooled"]["cases"] == 3 and [d.name for d in fold_dirs(cv)] == ["fold_0", "fold_1", "fold_2"]
    stored = json.loads((cv / "crossval.json").read_text())
    assert stored["pooled"]["mean_dice"] == res["pooled"]["mean_dice"]
    assert (cv / "validation" / "summary.json").is_file() and (cv / "postprocessing.json").is_file()
    # the pooled Dice is the evaluator's over all held-out cases together: one metrics row per case and label
    import csv

    with open(cv / "validation" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len({r["case"] for r in rows}) == 3

    # predict CV: the three folds ensembled (equal weights), the pool's post-processing
    out = tmp_path / "pred"
    assert main(["predict", str(cv), str(data / "imagesTs"), str(out), "--device", "cpu"]) == 0
    written = sorted(out.iterdir())
    assert written
    from focusseg.inference.predictor import crossval_predictor

    ens = crossval_predictor(cv)
    assert len(ens.members) == 3 and ens.weights == pytest.approx([1 / 3] * 3)  # equal per fold
    import nibabel as nib

    seg = np.asarray(nib.load(written[0]).dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2}
    # an ensemble option on a CV folder is refused in one line
    assert main(["predict", str(cv), str(data / "imagesTs"), str(tmp_path / "p2"), "--ensemble", str(cv / "fold_0")]
                ) == 2


def test_crossval_cli_and_errors(tmp_path: Path, capsys):
    from focusseg.cli import main

    data = write_tiny_dataset(tmp_path / "D", n_cases=5)
    assert main(["crossval", str(data), "--out", str(tmp_path / "cv"), "--folds", "7", "--no-progress"]) == 2
    assert "fold 7 does not exist" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "cv"), str(data / "imagesTr"), str(tmp_path / "p")]) != 0


def test_best_ranks_configurations_and_their_ensemble(tmp_path: Path):
    from focusseg.cli import main
    from focusseg.workflows.best import find_best

    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "D", n_cases=5, with_test=True)
    wide = {**TINY, "network": {**TINY["network"], "channels": [8, 16, 16]}}
    run_crossval(data, tmp_path / "narrow", "0-1", overrides=TINY, progress=False, device="cpu")
    run_crossval(data, tmp_path / "wide", "0-2", overrides=wide, progress=False, device="cpu")  # one fold more
    res = find_best([tmp_path / "narrow", tmp_path / "wide"], tmp_path / "best", progress=False)
    names = [c["name"] for c in res["ranking"]]
    assert sorted(names) == ["narrow", "narrow+wide", "wide"] and res["folds"] == ["0", "1"]
    scores = [c["mean_dice"] for c in res["ranking"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert all(c["cases"] == 2 for c in res["ranking"])  # compared on the common folds' cases only
    pair = next(c for c in res["ranking"] if c["name"] == "narrow+wide")
    assert len(list((tmp_path / "best" / "ensembles" / "narrow+wide" / "validation" / "predictions").iterdir())) == 2
    assert json.loads((tmp_path / "best" / "best.json").read_text())["best"] == res["best"]
    assert pair["postprocessing_file"] and Path(pair["postprocessing_file"]).is_file()
    # the printed command runs as printed
    from focusseg.workflows.best import predict_command

    cmd = predict_command(pair).replace("IN_DIR", str(data / "imagesTs")).replace("OUT_DIR", str(tmp_path / "p"))
    assert main(cmd.split()[1:] + ["--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir())
    # --out inside an input CV folder is refused
    assert main(["best", str(tmp_path / "narrow"), "--out", str(tmp_path / "narrow" / "b")]) == 2
