"""Build a Keras model from a validated spec by calling the registered blocks in order."""

from __future__ import annotations

from typing import Any

from blocks.registry import get_block
from blocks.spec import Spec

__all__ = ["build_model"]


def build_model(spec: Spec, *, seed: int | None = None) -> Any:
    """Return an uncompiled ``tf.keras.Model`` whose output is the last block's output.

    Layer names start with the block's name (``lfe_entry_conv``), so that converted graphs
    and statistics can be traced back to the spec. ``seed`` fixes weight initialisation.
    """
    import larq  # noqa: F401  (registers larq's quantizers for Keras deserialisation)
    import tensorflow as tf

    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input(shape=spec.input_shape, name="image")
    x = inputs
    for block in spec.blocks:
        definition = get_block(block.block)
        x = definition.fn(x, name=block.name, **block.resolved())
    return tf.keras.Model(inputs, x, name=spec.name)
