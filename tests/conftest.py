"""Shared fixtures: the shared data folder, a tiny generated face set and a tiny search space."""

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


TINY_SEARCH_SPEC = """\
name: tiny
input_shape: [112, 112, 3]
blocks:
  - block: conv_unit
    name: stem
    filters: 32
    kernel_size: 3
    strides: 4
    bits: 32
  - block: lfe
    name: lfe
    filters: 32
    bits: 1
    repeats: 1
    mixing: grouped
    mixing_groups: 1
  - block: embedding
    name: embedding
    filters: 32
    kernel_size: 2
    strides: 2
    bits: 32
  - block: output_head
    name: output
    units: 32
"""

TINY_SEARCH_SPACE = """\
name: tiny
base_spec: tiny.yaml
params:
  lfe.filters: [32, 64]
  lfe.kernel_size: [3, 5]
  embedding.filters: [16, 32]
"""


def write_tiny_space(folder: Path) -> Path:
    """Write a space of 8 candidates of 70 k to 100 k parameters that convert in seconds; return its path.

    The base spec takes 112x112 faces through a stride-4 conv, one LFE block and the
    embedding head.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(TINY_SEARCH_SPEC)
    path = folder / "space.yaml"
    path.write_text(TINY_SEARCH_SPACE)
    return path


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    """The path of a tiny search space written by `write_tiny_space` into ``tmp_path/space``."""
    return write_tiny_space(tmp_path / "space")


def sampler_draws(space_path: Path, seed: int, count: int) -> list[dict]:
    """Return the parameters the study's sampler draws for trials 0 to ``count - 1`` of a fresh study.

    Valid while ``count`` is within the sampler's random start, where draws do not depend on
    earlier results.
    """
    import optuna

    from search.space import load_space
    from search.study import _TrialSeededSampler

    space = load_space(space_path)
    study = optuna.create_study(direction="maximize", sampler=_TrialSeededSampler(seed, n_startup_trials=count))
    for _ in range(count):
        trial = study.ask()
        for dimension in space.dimensions:
            dimension.suggest(trial)
        study.tell(trial, 0.5)
    return [trial.params for trial in study.trials]


# Target fixtures (tiny LCE models, a loopback sshd, device files), defined once per session.
from conftest_sshd import device_file, fake_benchmark_binary, sshd_server, tiny_models, user_key  # noqa: E402, F401
