"""Builder: every registered block builds, converts with LCE and matches Keras in LCE's interpreter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from blocks.build import build_model
from blocks.registry import get_block, list_blocks
from blocks.spec import Spec, load_spec, parse_spec

SPECS = sorted((Path(__file__).resolve().parents[1] / "blocks" / "specs").glob("*.yaml"))

# Input shape and keys of the smallest spec that each registered block builds from. Block
# defaults are used where they fit the input; a new block needs an entry here.
MINIMAL_BLOCKS: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {
    "conv_unit": ((16, 16, 3), {"filters": 32}),
    "downsample": ((16, 16, 3), {"filters": 32}),
    # The default reduction stack squeezes 32x32 to 1x1 as it squeezes 112x112.
    "se_reduction_head": ((32, 32, 3), {}),
    "gfe": ((16, 16, 32), {}),
    "lfe": ((16, 16, 32), {}),
    "embedding": ((12, 12, 32), {}),
    "output_head": ((4, 4, 32), {}),
    "quicknet_stem": ((16, 16, 3), {"filters": 32}),
    "quicknet_section": ((8, 8, 32), {"filters": 32, "repeats": 1}),
    "densenet_stem": ((16, 16, 3), {"filters": 32}),
    "dense_section": ((8, 8, 32), {"repeats": 1, "growth_rate": 32}),
}

# Relative error allowed between LCE's interpreter and Keras (max |difference| / max |Keras|).
RELATIVE_TOLERANCE = 1e-4


def minimal_spec(block: str) -> Spec:
    if block not in MINIMAL_BLOCKS:
        pytest.fail(
            f"registered block {block!r} has no entry in MINIMAL_BLOCKS of {Path(__file__).name}; "
            "add the input shape and the keys of its smallest valid spec"
        )
    input_shape, params = MINIMAL_BLOCKS[block]
    data = {"name": f"minimal_{block}", "input_shape": list(input_shape), "blocks": [{"block": block, **params}]}
    return parse_spec(yaml.safe_dump(data, sort_keys=False))


def randomize_weights(model: Any, seed: int = 0) -> None:
    """Replace every weight, so that BatchNorm, PReLU and biases are not identities."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "moving_variance" in weight.name:
            values = rng.uniform(0.5, 1.5, weight.shape)
        else:
            values = rng.normal(0.0, 0.5, weight.shape)
        weight.assign(values.astype(np.float32))


def spec_shape(keras_shape: tuple[int | None, ...]) -> tuple[int, ...]:
    """Return a Keras output shape as specs write it: a flat (batch, units) output is 1x1xunits."""
    shape = tuple(int(v) for v in keras_shape[1:])
    return (1, 1, *shape) if len(shape) == 1 else shape


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_minimal_table_names_registered_blocks() -> None:
    stale = sorted(set(MINIMAL_BLOCKS) - set(list_blocks()))
    assert not stale, f"MINIMAL_BLOCKS lists blocks that are not registered: {stale}"


@pytest.mark.parametrize("block", list_blocks())
@pytest.mark.filterwarnings("ignore::blocks.spec.DeploymentWarning")
def test_block_matches_in_lce(block: str) -> None:
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    from blocks.convert import convert_model

    spec = minimal_spec(block)
    model = build_model(spec, seed=0)
    randomize_weights(model)
    flatbuffer, _ = convert_model(model)

    image = np.random.default_rng(1).standard_normal((1, *spec.input_shape)).astype(np.float32)
    expected = model(image, training=False).numpy()
    actual = Interpreter(flatbuffer, use_indirect_bgemm=True).predict(image)

    assert actual.shape == expected.shape
    assert np.abs(expected).max() > 0, "Keras output is all zeros, so the comparison proves nothing"
    assert relative_error(actual, expected) <= RELATIVE_TOLERANCE


@pytest.mark.parametrize("block", list_blocks())
@pytest.mark.filterwarnings("ignore::blocks.spec.DeploymentWarning")
def test_block_shape_matches_keras(block: str) -> None:
    spec = minimal_spec(block)
    model = build_model(spec)
    assert spec_shape(model.output_shape) == spec.shapes[-1]


@pytest.mark.parametrize("block", list_blocks())
@pytest.mark.filterwarnings("ignore::blocks.spec.DeploymentWarning")
def test_layer_names_start_with_block(block: str) -> None:
    spec = minimal_spec(block)
    model = build_model(spec)
    name = spec.blocks[0].name
    for layer in model.layers[1:]:
        assert layer.name.startswith(name), f"layer {layer.name!r} does not start with block name {name!r}"


@pytest.mark.parametrize("block", list_blocks())
def test_minimal_table_sets_required_keys(block: str) -> None:
    required = {key for key, param in get_block(block).params.items() if param.required}
    _, params = MINIMAL_BLOCKS.get(block, ((), {}))
    assert required <= set(params), f"MINIMAL_BLOCKS[{block!r}] lacks required keys {sorted(required - set(params))}"


def test_model_takes_spec_name_and_input() -> None:
    spec = minimal_spec("conv_unit")
    model = build_model(spec)
    assert model.name == "minimal_conv_unit"
    assert model.input_shape == (None, 16, 16, 3)
    assert model.layers[0].name == "image"


def test_seed_fixes_weights() -> None:
    spec = minimal_spec("conv_unit")
    first = build_model(spec, seed=3).get_weights()
    second = build_model(spec, seed=3).get_weights()
    other = build_model(spec, seed=4).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], other[0])


def test_blocks_chain_in_order() -> None:
    spec = parse_spec(
        """
name: chain
input_shape: [16, 16, 3]
blocks:
  - {block: conv_unit, name: stem, filters: 32, bits: 32}
  - {block: downsample, name: down, filters: 64}
  - {block: conv_unit, name: body, filters: 64, kernel_size: 1}
"""
    )
    model = build_model(spec)
    convs = [layer.name for layer in model.layers if layer.name.endswith("_conv")]
    assert convs == ["stem_conv", "down_conv", "body_conv"]
    assert spec_shape(model.output_shape) == (8, 8, 64)


def test_bits_choose_layer_types() -> None:
    spec = parse_spec(
        """
name: precisions
input_shape: [8, 8, 32]
blocks:
  - {block: conv_unit, name: float, filters: 32, bits: 32}
  - {block: conv_unit, name: binary, filters: 32}
  - {block: conv_unit, name: dorefa, filters: 32, bits: 4}
"""
    )
    model = build_model(spec)
    binary = model.get_layer("binary_conv")
    dorefa = model.get_layer("dorefa_conv")

    assert type(model.get_layer("float_conv")).__name__ == "Conv2D"
    assert type(binary).__name__ == "QuantConv2D"
    assert type(binary.input_quantizer).__name__ == "SteSign"
    assert type(binary.kernel_quantizer).__name__ == "SteSign"
    assert type(binary.kernel_constraint).__name__ == "WeightClip"
    assert binary.pad_values == 1.0
    assert type(dorefa.input_quantizer).__name__ == "DoReFa"
    assert dorefa.input_quantizer.precision == 4
    assert dorefa.kernel_quantizer.mode == "weights"


def test_quantizer_mapping_builds() -> None:
    spec = parse_spec(
        """
name: dorefa_inputs
input_shape: [8, 8, 32]
blocks:
  - block: conv_unit
    filters: 32
    bits: 2
    input_quantizer: {class_name: DoReFa, k_bit: 3, mode: activations}
    kernel_quantizer: ste_sign
"""
    )
    layer = build_model(spec).get_layer("conv_unit_conv")
    assert type(layer.input_quantizer).__name__ == "DoReFa"
    assert layer.input_quantizer.precision == 3
    assert type(layer.kernel_quantizer).__name__ == "SteSign"


@pytest.mark.parametrize("path", SPECS, ids=[path.stem for path in SPECS])
@pytest.mark.filterwarnings("ignore::blocks.spec.DeploymentWarning")
def test_shipped_spec_builds(path: Path) -> None:
    spec = load_spec(path)
    model = build_model(spec)
    assert spec_shape(model.output_shape) == spec.shapes[-1]
    assert model.count_params() > 0
