"""Single-threaded torch for the export tests (a shared 2-core machine): the suite's ``one_thread`` fixture."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield
