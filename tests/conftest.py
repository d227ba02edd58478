"""Shared fixtures (helpers live in focusseg_testdata.py, importable from every test folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from focusseg_testdata import write_tiny_dataset


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip without a CUDA device."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "Dataset001_Tiny")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (two busy threads on the 2-core CI machine slow everything), then
    restored. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
