"""Crash consistency of preprocessing: SIGKILL just before or just after the k-th atomic rename of a
preprocess_dataset run, then rerun: the store equals one made without interruption (every array and
property), and no temporary file is ever taken for a case."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from focusseg_testdata import write_tiny_dataset

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import focusseg.io.atomic as atomic
    from focusseg.preprocessing import preprocess_dataset

    data, store, plan_path, kill_at, phase = sys.argv[1:6]
    kill_at = int(kill_at)
    calls = [0]
    real_replace = os.replace

    def replace(src, dst):
        calls[0] += 1
        if calls[0] == kill_at and phase == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if calls[0] == kill_at and phase == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    atomic.os.replace = replace
    preprocess_dataset(data, json.loads(open(plan_path).read()), store, workers=1, progress=False)
""")


def _preprocess(data: Path, store: Path, plan: Path, kill_at: int = 0, phase: str = "before") -> int:
    cmd = [sys.executable, "-c", CHILD, str(data), str(store), str(plan), str(kill_at), phase]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode


def _store_contents(store: Path) -> dict:
    from focusseg.preprocessing.store import PreprocessedStore

    s = PreprocessedStore(store)
    out = {}
    for cid in s.case_ids():
        props = s.properties(cid)
        props.pop("source", None)  # the same source files: kept out only to compare content, not file times
        out[cid] = (np.asarray(s.image(cid, mmap=False)), np.asarray(s.label(cid, mmap=False)),
                    {k: v.tolist() for k, v in s.locations(cid).items()}, json.dumps(props, sort_keys=True))
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for cid in a:
        np.testing.assert_array_equal(a[cid][0], b[cid][0])
        np.testing.assert_array_equal(a[cid][1], b[cid][1])
        assert a[cid][2] == b[cid][2] and a[cid][3] == b[cid][3], cid


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    from focusseg.workflows.plan import plan_dataset

    root = tmp_path_factory.mktemp("crash_preprocess")
    data = write_tiny_dataset(root / "D", n_cases=6)
    plan = root / "plan.json"
    plan.write_text(json.dumps(plan_dataset(data, "cpu", progress=False)))
    assert _preprocess(data, root / "straight", plan) == 0
    return data, plan, _store_contents(root / "straight")


@pytest.mark.parametrize("kill_at, phase", [(3, "before"), (10, "after")])
def test_kill_then_rerun_equals_uninterrupted(tmp_path: Path, reference, kill_at: int, phase: str):
    data, plan, straight = reference
    store = tmp_path / "store"
    assert _preprocess(data, store, plan, kill_at, phase) == -signal.SIGKILL
    assert _preprocess(data, store, plan) == 0
    _assert_same(_store_contents(store), straight)


@pytest.mark.slow
def test_twelve_random_kills_then_rerun_equals_uninterrupted(tmp_path: Path, reference):
    """12 stores, each killed at a seeded random rename (before or after it), every other one killed a second
    time while resuming; each is rerun to completion and compared with the uninterrupted store."""
    data, plan, straight = reference
    rng = random.Random(12)
    for i in range(12):
        store = tmp_path / f"store{i}"
        assert _preprocess(data, store, plan, rng.randint(1, 25), rng.choice(["before", "after"])) == -signal.SIGKILL
        if i % 2:
            assert _preprocess(data, store, plan, rng.randint(1, 4), rng.choice(["before", "after"])) in (
                0, -signal.SIGKILL)
        assert _preprocess(data, store, plan) == 0
        _assert_same(_store_contents(store), straight)
