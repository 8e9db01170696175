"""Baseline specs: QuickNet and BinaryDenseNet built from registered blocks match larq-zoo 2.4.0."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

from blocks.baselines import blur_kernel, transition_filters
from blocks.build import build_model
from blocks.errors import SpecError
from blocks.spec import load_spec, parse_spec
from blocks.stats import model_stats

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "blocks" / "specs"
BASELINES = ["quicknet", "binarydensenet28", "binarydensenet37", "binarydensenet45"]

# Shapes the spec validator infers without TensorFlow: backbone output, then embedding.
BACKBONE_SHAPES = {
    "quicknet": (3, 3, 512),
    "binarydensenet28": (3, 3, 576),
    "binarydensenet37": (3, 3, 640),
    "binarydensenet45": (3, 3, 800),
}
# larq's summary of larq-zoo's models at 112x112 without the top: the figures the
# BinaryFaceNet thesis lists for these baselines.
BINARY_MACS = {
    "quicknet": 431_751_168,
    "binarydensenet28": 893_251_584,
    "binarydensenet37": 1_122_029_568,
    "binarydensenet45": 1_599_971_328,
}


def zoo_model(name: str) -> Any:
    larq_zoo = pytest.importorskip("larq_zoo")
    factories: dict[str, Callable[..., Any]] = {
        "quicknet": larq_zoo.sota.QuickNet,
        "binarydensenet28": larq_zoo.literature.BinaryDenseNet28,
        "binarydensenet37": larq_zoo.literature.BinaryDenseNet37,
        "binarydensenet45": larq_zoo.literature.BinaryDenseNet45,
    }
    return factories[name](input_shape=(112, 112, 3), weights=None, include_top=False)


def backbone(model: Any) -> Any:
    """Return ``model`` without its embedding head (everything before ``output_bn1``)."""
    import tensorflow as tf

    return tf.keras.Model(model.input, model.get_layer("output_bn1").input)


def layer_types(model: Any) -> list[str]:
    # larq-zoo writes QuickNet's residual sum as ``x + residual``, which Keras records as a
    # TFOpLambda layer. The blocks use an Add layer, which converts to the same ADD op.
    names = [type(layer).__name__ for layer in model.layers if type(layer).__name__ != "InputLayer"]
    return ["Add" if name == "TFOpLambda" else name for name in names]


def one_block_spec(block: str, input_shape: list[int], **params: Any) -> str:
    data = {"name": "test", "input_shape": input_shape, "blocks": [{"block": block, **params}]}
    return yaml.safe_dump(data, sort_keys=False)


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_matches_larq_zoo(name: str) -> None:
    ours = backbone(build_model(load_spec(SPECS / f"{name}.yaml")))
    zoo = zoo_model(name)

    ours_stats, zoo_stats = model_stats(ours), model_stats(zoo)

    assert layer_types(ours) == layer_types(zoo)
    assert ours.output_shape == zoo.output_shape
    assert ours_stats.binary_macs == zoo_stats.binary_macs == BINARY_MACS[name]
    assert ours_stats.float_macs == zoo_stats.float_macs
    assert ours_stats.params == zoo_stats.params


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_spec_shapes(name: str) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")

    assert spec.shapes[-2] == BACKBONE_SHAPES[name]
    assert spec.shapes[-1] == (1, 1, 128)
    assert spec.warnings == ()


def test_quicknet_convs_become_binary_kernels() -> None:
    from blocks.convert import audit_flatbuffer, convert_model

    model = build_model(load_spec(SPECS / "quicknet.yaml"))
    flatbuffer, messages = convert_model(model)
    audit = audit_flatbuffer(flatbuffer, model, messages=messages)

    assert audit.op_counts["LceBconv2d"] == 16
    assert audit.float_fallbacks == []
    assert audit.binary_kernel_macs == BINARY_MACS["quicknet"]


@pytest.mark.parametrize(
    ("block", "input_shape", "params"),
    [
        ("quicknet_stem", [32, 32, 3], {"filters": 16}),
        ("quicknet_section", [8, 8, 16], {"filters": 32, "repeats": 1}),
        ("densenet_stem", [32, 32, 3], {"filters": 16}),
        ("dense_section", [8, 8, 32], {"repeats": 2, "growth_rate": 32, "reduction": 2.0}),
        ("dense_section", [8, 8, 32], {"repeats": 1, "growth_rate": 32}),
    ],
)
def test_block_runs_in_lce(block: str, input_shape: list[int], params: dict[str, Any]) -> None:
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    from blocks.convert import convert_model

    spec = parse_spec(one_block_spec(block, input_shape, **params))
    model = build_model(spec, seed=0)
    flatbuffer, _ = convert_model(model)
    image = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)

    expected = model(image, training=False).numpy()
    actual = Interpreter(flatbuffer, use_indirect_bgemm=True).predict(image)

    assert actual.shape == expected.shape
    assert tuple(expected.shape[1:]) == spec.shapes[-1]
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


# ---------------------------------------------------------------------------------------
# Shape functions reject impossible settings before TensorFlow is touched.


def test_quicknet_stem_filters_need_multiple_of_4() -> None:
    text = one_block_spec("quicknet_stem", [32, 32, 3], filters=30)
    with pytest.raises(SpecError, match=re.escape("blocks[0].filters: must be a multiple of 4 (the first conv has filters / 4), got 30")):
        parse_spec(text)


def test_quicknet_section_pool_too_large() -> None:
    text = one_block_spec("quicknet_section", [2, 2, 16], filters=32, strides=3)
    with pytest.raises(SpecError, match=re.escape("blocks[0].strides: the transition's 3x3 max pooling is larger than its 2x2 input")):
        parse_spec(text)


def test_dense_section_reduction_leaves_no_filters() -> None:
    text = one_block_spec("dense_section", [8, 8, 16], repeats=1, growth_rate=16, reduction=4.0)
    with pytest.raises(SpecError, match=re.escape("blocks[0].reduction: leaves 32 channels with 0 filters after rounding to 32")):
        parse_spec(text)


def test_dense_section_requires_repeats() -> None:
    text = one_block_spec("dense_section", [8, 8, 16])
    with pytest.raises(SpecError, match="missing required key 'repeats' for block 'dense_section'"):
        parse_spec(text)


def test_dense_section_rejects_string_reduction() -> None:
    text = one_block_spec("dense_section", [8, 8, 16], repeats=1, reduction="2.7")
    with pytest.raises(SpecError, match=re.escape("blocks[0].reduction: must be a float or null, got str '2.7'")):
        parse_spec(text)


# ---------------------------------------------------------------------------------------
# Helpers.


def test_transition_filters_round_to_32() -> None:
    assert transition_filters(448, 2.7) == 160
    assert transition_filters(544, 3.3) == 160
    assert transition_filters(1024, 4) == 256


def test_blur_kernel_matches_larq_zoo() -> None:
    quicknet = pytest.importorskip("larq_zoo.sota.quicknet")
    for size in (2, 3, 5):
        expected = np.asarray(quicknet.blurpool_initializer((size, size, 8, 1)))
        np.testing.assert_allclose(blur_kernel(size, 8), expected, rtol=1e-6)


def test_blur_kernel_rejects_size() -> None:
    with pytest.raises(ValueError, match=re.escape("blur kernel size must be one of [2, 3, 5], got 4")):
        blur_kernel(4, 8)


def test_baseline_layer_counts() -> None:
    model = build_model(load_spec(SPECS / "binarydensenet28.yaml"))
    counts = Counter(type(layer).__name__ for layer in model.layers)

    assert counts["QuantConv2D"] == 6 + 6 + 6 + 5
    assert counts["Conv2D"] == 1 + 3
    assert counts["Concatenate"] == 23
