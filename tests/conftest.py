"""Shared fixtures: the shared data folder and a tiny generated face set."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

SHARED_ENV = "BINARYFACE_SHARED"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder (``$BINARYFACE_SHARED``, default ``../shared``); skips when absent."""
    root = Path(os.environ.get(SHARED_ENV, Path(__file__).resolve().parents[1].parent / "shared"))
    if not (root / "data").is_dir():
        pytest.skip(f"shared data not found at {root} (set {SHARED_ENV} to its location)")
    return root


def face_pattern(identity: int, index: int, height: int = 48, width: int = 48) -> np.ndarray:
    """A uint8 RGB image whose colour depends on the identity and whose noise on the index."""
    rng = np.random.default_rng(1000 * identity + index)
    base = np.array([(37 * identity) % 200 + 30, (71 * identity) % 200 + 30, (113 * identity) % 200 + 30])
    noise = rng.integers(-20, 21, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def make_face_folder(tmp_path: Path):
    """Factory writing ``<tmp_path>/<name>/id<k>/<i>.<suffix>`` with ``counts[k]`` images per identity."""
    from PIL import Image

    def make(counts: list[int], *, name: str = "faces", size: tuple[int, int] = (48, 48), suffix: str = ".png") -> Path:
        root = tmp_path / name
        for identity, count in enumerate(counts):
            folder = root / f"id{identity:02d}"
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(face_pattern(identity, index, *size)).save(folder / f"{index}{suffix}")
        return root

    return make


# Target fixtures (tiny LCE models, a loopback sshd, device files), defined once per session.
from conftest_sshd import device_file, fake_benchmark_binary, sshd_server, tiny_models, user_key  # noqa: E402, F401
