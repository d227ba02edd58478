"""Shared fixtures (helpers live in focusseg_testdata.py, importable from every test folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from focusseg_testdata import write_tiny_dataset


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "Dataset001_Tiny")
