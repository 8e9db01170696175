"""Shared fixtures: the shared data folder and a tiny generated face set."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

SHARED_ENV = "BINARYFACE_SHARED"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder (``$BINARYFACE_SHARED``, default ``../shared``); skips when absent."""
    root = Path(os.environ.get(SHARED_ENV, Path(__file__).resolve().parents[1].parent / "shared"))
    if not (root / "data").is_dir():
        pytest.skip(f"shared data not found at {root} (set {SHARED_ENV} to its location)")
    return root
