"""Post-processing steps from files others made (postprocessing.json, --postprocessing-file, a bundle's member, a
plan) pass one checker with their arguments: read bounded, each kwarg checked by type and range (min_size against
the voxel limit in force), one CheckpointError line naming the file and the step index; the checker's table of
steps is the registry's."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from focusseg.errors import CheckpointError, FocussegError, UsageError
from focusseg.inference.postprocess import POSTPROCESSORS, apply_postprocessing
from focusseg.inference.postprocess_selection import (
    DEFAULT_CANDIDATES,
    check_steps,
    choose_postprocessing,
    load_run_postprocessing,
    read_postprocessing_file,
)
from focusseg.settings import POSTPROCESSING_STEPS


def test_the_checker_knows_exactly_the_registered_steps_and_their_arguments():
    assert set(POSTPROCESSING_STEPS) == set(POSTPROCESSORS.names())
    for name, args in POSTPROCESSING_STEPS.items():
        params = list(inspect.signature(POSTPROCESSORS.get(name)).parameters)[1:]  # after the label map
        assert sorted(args) == sorted(params), name


def test_default_candidates_and_chosen_steps_pass():
    assert check_steps([dict(c) for c in DEFAULT_CANDIDATES], "x.json", "postprocessing.json") == DEFAULT_CANDIDATES
    steps = [{"name": "keep_largest_component", "regions": [[1, 2], [2]]},
             {"name": "remove_small_components", "min_size": 10, "labels": [1]}]
    assert check_steps(steps, "x.json", "postprocessing.json", labels={0, 1, 2}) == steps


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "postprocessing.json"
    f.write_text(text)
    return f


@pytest.mark.parametrize("text,fragment", [
    ("[" * 100_000, "nested more than 64 levels"),
    ('{"steps": [{"name": "remove_small_components", "min_size": ' + "7" * 5000 + "}]}", "5000 digits"),
    ('{"steps": [{"name": "remove_small_components", "min_size": NaN}]}', "NaN"),
    ('{"steps": [{"name": "remove_small_components", "min_size": Infinity}]}', "Infinity"),
    ('{"steps": [{"name": "remove_small_components", "min_size": 1e300}]}', "steps[0].min_size = 1e+300"),
    ('{"steps": [{"name": "remove_small_components", "min_size": -1}]}', "steps[0].min_size = -1"),
    ('{"steps": [{"name": "remove_small_components", "min_size": true}]}', "min_size = True"),
    ('{"steps": [{"name": "erode"}, {"name": "erode", "iterations": "2"}]}', "steps[1].iterations = '2'"),
    ('{"steps": [{"name": "dilate", "labels": [1], "radius": 3}]}', "takes no argument 'radius'"),
    ('{"steps": [{"name": "keep_largest_component", "regions": [[]]}]}', "steps[0].regions[0]"),
    ('{"steps": [{"name": "keep_largest_component", "connectivity": 5}]}', "connectivity = 5"),
    ('{"steps": [{"name": "rm_rf"}]}', "unknown post-processing step 'rm_rf'"),
])
def test_a_bad_file_is_one_checkpoint_error_naming_it(tmp_path: Path, text: str, fragment: str):
    f = _write(tmp_path, text)
    with pytest.raises(CheckpointError) as err:
        read_postprocessing_file(f)
    assert err.value.path == f and fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_min_size_is_bounded_by_the_voxel_limit_in_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    f = _write(tmp_path, json.dumps({"steps": [{"name": "remove_small_components", "min_size": 5000}]}))
    assert read_postprocessing_file(f) == [{"name": "remove_small_components", "min_size": 5000}]
    monkeypatch.setenv("FOCUSSEG_MAX_VOXELS", "1000")
    with pytest.raises(CheckpointError, match=r"min_size = 5000: must be a finite number in \[0, 1000\]"):
        read_postprocessing_file(f)


def test_steps_naming_labels_the_plan_lacks_are_refused(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    plan = {"labels": {"background": 0, "a": 1}, "inference": {"postprocessing": "auto"}}
    (run / "postprocessing.json").write_text(json.dumps({"steps": [{"name": "erode", "labels": [3]}]}))
    with pytest.raises(CheckpointError, match=r"labels = \[3\]: label 3 is not one of the plan's labels \[0, 1\]"):
        load_run_postprocessing(run, plan)
    (run / "postprocessing.json").write_text(json.dumps({"steps": [{"name": "erode", "labels": [1]}]}))
    assert load_run_postprocessing(run, plan) == [{"name": "erode", "labels": [1]}]


def test_the_bundle_signature_keeps_working():
    with pytest.raises(CheckpointError, match=r"model\.zip: postprocessing\.json steps\[0\]\.min_size"):
        check_steps([{"name": "remove_small_components", "min_size": 1e300}], Path("model.zip"),
                    "postprocessing.json")


def test_candidates_are_checked_with_their_arguments():
    pred = np.zeros((6, 6, 6), np.int16)
    pred[1:3, 1:3, 1:3] = 1
    with pytest.raises(UsageError, match="cannot be applied .*min_size = 1e\\+300"):
        choose_postprocessing([pred], [pred], [1], candidates=[{"name": "remove_small_components",
                                                                "min_size": 1e300}])
    with pytest.raises(UsageError, match="cannot be applied .*takes no argument"):
        choose_postprocessing([pred], [pred], [1], candidates=[{"name": "erode", "depth": 2}])


def test_arguments_that_do_not_fit_the_label_map_are_usage_errors():
    """A 2D connectivity on a 3D map passes the file check (the map's dimension is known only then) and is an
    expected error when applied (a ValueError as before), never an unexpected one."""
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[1, 1, 1] = 1
    with pytest.raises(UsageError, match="connectivity 4 is invalid for a 3D label map") as err:
        apply_postprocessing(seg, [{"name": "keep_largest_component", "connectivity": 4}])
    assert isinstance(err.value, (ValueError, FocussegError))
    with pytest.raises(UsageError, match="unit='ml' needs a spacing"):
        apply_postprocessing(seg, [{"name": "remove_small_components", "min_size": 1, "unit": "ml"}])
