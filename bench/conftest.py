import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import davae_ext  # noqa: E402


@pytest.fixture(autouse=True)
def fused_backend():
    """Every benchmark runs with the fused backend set once, outside the timed calls (a context
    manager entered per call would add its own microseconds to the fused providers)."""
    with davae_ext.use_backend("fused"):
        yield
