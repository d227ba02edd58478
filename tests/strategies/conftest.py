"""Strategy tests run many tiny tensor ops: one intra-op thread avoids thread-pool stalls on a loaded machine."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every strategy test on one torch thread (``one_thread`` from tests/conftest.py)."""
