"""Shared test configuration: hypothesis profiles and small fixtures.

Hypothesis runs the deterministic ``ci`` profile unless ``HYPOTHESIS_PROFILE``
names another (``dev`` draws fresh random examples on every run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=100,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def tmp_recording(tmp_path: Path) -> Path:
    """A path for a recording that does not exist yet."""
    return tmp_path / "rec.jsonl"


# The private libvirtd of the ``libvirt`` tests (session-scoped; see tests/libvirt_env.py).
from libvirt_env import libvirtd  # noqa: E402,F401
