"""Fixtures for the malformed-input corpus: a sandbox per case (a fresh tiny dataset, a trained tiny run, an
output folder), a snapshot of every file outside the output folder (inputs unchanged, nothing written
elsewhere), and the CLI run in-process through its one handler."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from focusseg_testdata import write_tiny_dataset

#: Overrides that make a run train in a few seconds on one core.
TINY_PLAN = {"network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
             "patch_size": [16, 16, 16], "batch_size": 2,
             "training": {"max_epochs": 2, "iterations_per_epoch": 2, "augmentation": "light", "amp": "none"},
             "inference": {"mirror_axes": []}}


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread (two busy threads on the 2-core CI machine slow everything), then restore."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def train_tiny(data: Path, run: Path, overrides: dict | None = None, **kwargs) -> dict:
    """``run_training`` on one thread with the tiny plan (or ``overrides``), no progress bars."""
    from focusseg.workflows.train import run_training

    with one_torch_thread():
        return run_training(data, run, fold=kwargs.pop("fold", 0), overrides=overrides or TINY_PLAN,
                            progress=False, **kwargs)


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: the stand-in for a checkpoint that executes code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _status_mb(key: str) -> float:
    """``key`` (VmRSS, VmHWM) of this process from /proc/self/status, in MiB (0 where /proc is absent)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Measure the peak resident memory the block adds: the kernel's high-water mark (VmHWM) is reset by writing
    5 to /proc/self/clear_refs, so the peak is the block's own. Yields a dict that gets ``added_mb`` (peak minus
    the resident size before) and ``measured`` (False where Linux's reset is not available)."""
    result = {"added_mb": 0.0, "measured": False}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        result["measured"] = True
    except OSError:
        pass
    before = _status_mb("VmRSS")
    try:
        yield result
    finally:
        if result["measured"]:
            result["added_mb"] = max(0.0, _status_mb("VmHWM") - before)


def snapshot(root: Path, exclude: list[Path]) -> dict[str, str]:
    """sha256 of every file (and the target of every link) under ``root``, except under ``exclude``."""
    excl = [e.resolve() for e in exclude]
    out = {}
    for p in sorted(root.rglob("*")):
        rp = p.resolve() if not p.is_symlink() else p.parent.resolve() / p.name
        if any(rp == e or e in rp.parents for e in excl):
            continue
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + str(p.readlink())
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


@dataclass
class Sandbox:
    """One corpus case's world: ``root`` holds inputs; ``out`` is the only folder a command may write to."""

    root: Path
    templates: dict[str, Path]
    extra_outputs: list[Path] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.root / "out"

    def dataset(self, name: str = "D", **kwargs) -> Path:
        """A fresh copy of a tiny valid dataset (``n_channels=2`` etc. build another template)."""
        key = json.dumps(kwargs, sort_keys=True)
        folder = self.templates["_base"] / f"T{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        if not (folder / "dataset.json").is_file():
            write_tiny_dataset(folder, **kwargs)
        dst = self.root / "in" / name
        shutil.copytree(folder, dst)
        return dst

    def run(self, name: str = "run") -> Path:
        """A copy of a tiny trained run folder (1 channel, labels 0/1/2, with validation predictions)."""
        dst = self.root / "in" / name
        shutil.copytree(self.templates["_run"], dst, symlinks=True)
        return dst

    def test_images(self) -> Path:
        """A copy of two test cases' images (imagesTs layout) for predict."""
        dst = self.root / "in" / "imagesTs"
        shutil.copytree(self.templates["_data_ts"] / "imagesTs", dst)
        return dst

    def test_labels(self) -> Path:
        dst = self.root / "in" / "labelsTs"
        shutil.copytree(self.templates["_data_ts"] / "labelsTs", dst)
        return dst


@pytest.fixture(scope="session")
def corpus_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Built once per session: a tiny dataset with test cases and a tiny run trained on it."""
    base = tmp_path_factory.mktemp("corpus_templates")
    data = write_tiny_dataset(base / "DataTs", n_cases=5, with_test=True)
    train_tiny(data, base / "run", device="cpu")
    return {"_base": base, "_data_ts": data, "_run": base / "run"}


@pytest.fixture
def sandbox(tmp_path: Path, corpus_templates: dict[str, Path]) -> Sandbox:
    (tmp_path / "in").mkdir()
    (tmp_path / "cwd").mkdir()  # the working directory of the command: must stay empty
    return Sandbox(tmp_path, corpus_templates)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``cli(argv)`` runs ``focusseg`` in-process (its one handler, as the console script does) in an empty
    working directory inside the sandbox (so a stray relative write is caught by the snapshot), and returns
    code, stdout and stderr."""
    from focusseg.cli import main

    def run(argv: list[str]) -> CliResult:
        capsys.readouterr()
        cwd = tmp_path / "cwd"
        cwd.mkdir(exist_ok=True)
        monkeypatch.chdir(cwd)
        code = main([str(a) for a in argv])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run
