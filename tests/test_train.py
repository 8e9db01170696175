"""ArcFace training of backbones built from specs."""

from __future__ import annotations

import numpy as np
import pytest

from blocks.build import build_model
from blocks.spec import parse_spec
from search.train import TrainConfig, train_arcface

pytest.importorskip("tensorflow")

# Ends with the embedding block's 1x1 map: no output head flattens it.
HEADLESS = """
name: headless
input_shape: [32, 32, 3]
blocks:
  - {block: conv_unit, name: stem, filters: 32, strides: 2, bits: 32}
  - {block: embedding, name: embedding, filters: 16, kernel_size: 2, strides: 2}
"""


def test_train_arcface_headless_backbone() -> None:
    model = build_model(parse_spec(HEADLESS))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 4)

    result = train_arcface(model, images, labels, 4, TrainConfig(epochs=1, batch_size=8), progress=False)

    assert model.output_shape == (None, 1, 1, 16)
    assert result.steps == 2
    assert len(result.losses) == 1
    assert np.isfinite(result.losses[0])
