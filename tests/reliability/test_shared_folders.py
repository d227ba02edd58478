"""Shared-folder cases that need the environment (the corpus entries return argv only): a stray ``WORLD_SIZE`` /
``RANK`` without torchrun never makes ``predict`` write part of the cases and exit 0, and every partitioned run
says which part it predicts. Same trust rules as the corpus: exit code, lines on stderr, nothing changed outside
the output folder, bounded memory."""

from __future__ import annotations

import pytest

from focusseg.engine.distributed import launched_by_torchrun, prediction_share

from .conftest import peak_rss, snapshot

TORCHRUN = {"TORCHELASTIC_RUN_ID": "test-run", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500"}
LAUNCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", *TORCHRUN)


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for key in LAUNCH_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def _predict(sandbox, cli, extra: list[str] | None = None):
    run, imgs = sandbox.run(), sandbox.test_images()
    before = snapshot(sandbox.root, [sandbox.out])
    with peak_rss() as mem:
        res = cli(["predict", run, imgs, sandbox.out, "--device", "cpu", *(extra or [])])
    assert snapshot(sandbox.root, [sandbox.out]) == before
    assert mem["added_mb"] <= 1024 and "Traceback" not in res.out + res.err
    written = sorted(p.name for p in sandbox.out.glob("*.nii.gz")) if sandbox.out.exists() else []
    return res, written


def test_stray_world_size_without_torchrun_predicts_every_case(sandbox, cli, monkeypatch):
    _env(monkeypatch, WORLD_SIZE="2", RANK="1")
    res, written = _predict(sandbox, cli)
    assert res.code == 0, res.err
    assert written == ["case005.nii.gz", "case006.nii.gz"]
    warnings = [line for line in res.err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: WORLD_SIZE=2 RANK=1 set but not launched by torchrun: ignored; predicting all "
                        "cases (use --num-parts/--part-id to split)"], res.err
    assert "predicting part" not in res.err


def test_torchrun_share_is_taken_and_said(sandbox, cli, monkeypatch):
    _env(monkeypatch, WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", **TORCHRUN)
    res, written = _predict(sandbox, cli)
    assert res.code == 0, res.err
    assert written == ["case006.nii.gz"]  # every 2nd case of the sorted list, from the 2nd
    assert "predicting part 2 of 2 (part id 1): 1 of 2 cases" in res.err and "warning:" not in res.err


def test_explicit_parts_are_said_and_beat_the_environment(sandbox, cli, monkeypatch):
    _env(monkeypatch, WORLD_SIZE="2", RANK="1")  # ignored: the options decide, no warning about the variables
    res, written = _predict(sandbox, cli, ["--num-parts", "2", "--part-id", "0"])
    assert res.code == 0, res.err
    assert written == ["case005.nii.gz"]
    assert "predicting part 1 of 2 (part id 0): 1 of 2 cases" in res.err and "warning:" not in res.err


def test_prediction_share_reads_only_what_torchrun_set(capsys):
    assert prediction_share({}) is None and prediction_share({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert capsys.readouterr().err == ""
    assert prediction_share({"WORLD_SIZE": "4", "RANK": "3"}) is None
    assert capsys.readouterr().err.count("warning:") == 1
    assert prediction_share({"WORLD_SIZE": "4", "RANK": "3", **TORCHRUN}) == (3, 4)
    assert launched_by_torchrun(TORCHRUN) and not launched_by_torchrun({"WORLD_SIZE": "4", "RANK": "3"})
