"""Fixtures for the network tests: one tiny config per network, single-threaded torch."""

from __future__ import annotations

import pytest
import torch
from nets_helpers import TINY


@pytest.fixture(params=sorted(TINY))
def tiny_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors on a shared 2-core machine: one thread is ~20x faster than two contending ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
