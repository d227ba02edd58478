"""Loading a run for ``predict``: never executes code from a checkpoint, loads onto the CPU first, and every
unusable run folder / checkpoint / artefact is one error naming the file (issue 12, points 1 and 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from inference.run_helpers import make_run, tiny_plan, tiny_weights, tree_hashes, write_inputs

from focusseg.errors import CheckpointError, MissingFileError, UsageError
from focusseg.inference.predictor import Predictor

from .conftest import Payload


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from focusseg.cli import main

    rc = main(args)
    return rc, capsys.readouterr().err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_valid_run_loads_through_load_checkpoint_on_cpu(tmp_path: Path, monkeypatch):
    import focusseg.inference.predictor as ckpt  # the load_checkpoint the predictor calls

    run = make_run(tmp_path / "run")
    calls = []
    real = ckpt.load_checkpoint

    def spy(path, *a, **k):
        calls.append(Path(path))
        return real(path, *a, **k)

    monkeypatch.setattr(ckpt, "load_checkpoint", spy)
    loaded = []
    real_torch_load = torch.load

    def torch_spy(*a, **k):
        loaded.append(k)
        return real_torch_load(*a, **k)

    monkeypatch.setattr(torch, "load", torch_spy)
    p = Predictor.from_run(run, device="cpu")
    assert calls == [run / "checkpoint_best.pt"] and p.run_dir == run
    assert loaded and all(k.get("weights_only") is True and k.get("map_location") == "cpu" for k in loaded)
    assert next(p.network.parameters()).device.type == "cpu"


def test_best_falls_back_to_final_then_latest(tmp_path: Path):
    run = make_run(tmp_path / "run", checkpoint="latest")
    assert Predictor.from_run(run, device="cpu").plan["n_classes"] == 3
    with pytest.raises(MissingFileError, match=r"run: no checkpoint_final\.pt in this run folder") as e:
        Predictor.from_run(run, "final", device="cpu")
    assert "checkpoint_latest.pt" in e.value.hint  # says what is there


def test_missing_run_folder_and_checkpoint(tmp_path: Path):
    with pytest.raises(MissingFileError, match="nowhere: run folder not found") as e:
        Predictor.from_run(tmp_path / "nowhere", device="cpu")
    assert "train first" in e.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="empty: no checkpoint_best.pt or checkpoint_final.pt or "
                                               "checkpoint_latest.pt in this run folder") as e:
        Predictor.from_run(tmp_path / "empty", device="cpu")
    assert "train first" in e.value.hint
    with pytest.raises(UsageError, match="checkpoint must be one of"):
        Predictor.from_run(tmp_path / "empty", "newest", device="cpu")


def test_pickle_payload_never_runs(tmp_path: Path, capsys):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"plan": tiny_plan(), "network": tiny_weights(tiny_plan()), "x": Payload(marker)},
               run / "checkpoint_best.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint_best\.pt: refusing to load"):
        Predictor.from_run(run, device="cpu")
    assert not marker.exists()
    write_inputs(tmp_path / "in", 1)
    rc, err = _cli(["predict", str(run), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu"], capsys)
    assert rc == 1 and not marker.exists() and "Traceback" not in err
    assert _error_lines(err)[0].startswith(f"error: {run / 'checkpoint_best.pt'}: refusing to load")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_one_line(tmp_path: Path, damage: str, capsys):
    run = make_run(tmp_path / "run")
    f = run / "checkpoint_best.pt"
    data = f.read_bytes()
    f.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint" * 10}[damage])
    with pytest.raises(CheckpointError, match=r"checkpoint_best\.pt: ") as e:
        Predictor.from_run(run, device="cpu")
    assert "\n" not in str(e.value)
    write_inputs(tmp_path / "in", 1)
    rc, err = _cli(["predict", str(run), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu"], capsys)
    assert rc == 1 and "Traceback" not in err and len(_error_lines(err)) == 1
    assert str(f) in _error_lines(err)[0]


@pytest.mark.parametrize("state, message", [
    ({"network": {}}, "holds no plan"),
    ({"plan": ["not", "a", "dict"], "network": {}}, "holds no plan"),
    ({"plan": {"labels": {}}, "network": {}}, "its plan lacks channel_names"),
    ("no-weights", "holds no network weights"),
    ("nan-weights", "holds NaN/inf"),
    ("wrong-shape", "network weights do not fit"),
    ("unknown-net", "its plan does not build a network"),
])
def test_bad_checkpoint_content(tmp_path: Path, state, message: str):
    plan = tiny_plan()
    if state == "no-weights":
        state = {"plan": plan, "network": {"a": "b"}}
    elif state == "nan-weights":
        w = tiny_weights(plan)
        next(iter(w.values())).fill_(float("nan"))
        state = {"plan": plan, "network": w}
    elif state == "wrong-shape":
        state = {"plan": tiny_plan(n_channels=2), "network": tiny_weights(plan)}
    elif state == "unknown-net":
        state = {"plan": {**plan, "network": {"name": "no-such-net"}}, "network": tiny_weights(plan)}
    run = make_run(tmp_path / "run", state=state)
    with pytest.raises(CheckpointError, match=message) as e:
        Predictor.from_run(run, device="cpu")
    assert e.value.path == run / "checkpoint_best.pt" and "\n" not in str(e.value)


@pytest.mark.parametrize("content, message", [
    ("{not json", "unreadable post-processing choice"),
    ('{"trials": []}', "no list of 'steps'"),
    ('{"steps": [{"name": "rm_rf"}]}', "unknown post-processing step 'rm_rf'"),
])
def test_bad_postprocessing_json(tmp_path: Path, content: str, message: str):
    plan = tiny_plan()
    plan["inference"]["postprocessing"] = "auto"
    run = make_run(tmp_path / "run", plan=plan)
    (run / "postprocessing.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as e:
        Predictor.from_run(run, device="cpu")
    assert e.value.path == run / "postprocessing.json" and "\n" not in str(e.value)


def test_good_postprocessing_json_is_used(tmp_path: Path):
    plan = tiny_plan()
    plan["inference"]["postprocessing"] = "auto"
    run = make_run(tmp_path / "run", plan=plan)
    steps = [{"name": "keep_largest_component", "labels": [1]}]
    (run / "postprocessing.json").write_text(json.dumps({"steps": steps}))
    assert Predictor.from_run(run, device="cpu").postprocessing == steps


def test_cli_missing_run_is_one_line_and_writes_nothing(tmp_path: Path, capsys):
    write_inputs(tmp_path / "in", 1)
    before = tree_hashes(tmp_path / "in")
    rc, err = _cli(["predict", str(tmp_path / "norun"), str(tmp_path / "in"), str(tmp_path / "out"),
                    "--device", "cpu"], capsys)
    assert rc == 1 and "Traceback" not in err
    assert _error_lines(err) == [f"error: {tmp_path / 'norun'}: run folder not found"]
    assert "hint: train first" in err
    assert tree_hashes(tmp_path / "in") == before and not (tmp_path / "out").exists()
