"""Fixtures for the network tests: one tiny config per network, single-threaded torch."""

from __future__ import annotations

import pytest
from nets_helpers import TINY


@pytest.fixture(params=sorted(TINY))
def tiny_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Tiny tensors on a shared 2-core machine: one thread is ~20x faster than two contending ones."""
    yield
