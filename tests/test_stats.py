"""Model statistics: agreement with larq's summary, hand-counted MACs and the thesis totals."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest

import blocks  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from blocks.build import build_model
from blocks.spec import DeploymentWarning, load_spec, parse_spec
from blocks.stats import ModelStats, model_stats

SPECS_DIR = Path(__file__).resolve().parents[1] / "blocks" / "specs"

MIXED_SPEC = """
name: mixed
input_shape: [16, 16, 3]
blocks:
  - {block: conv_unit, name: stem, filters: 32, bits: 32}
  - {block: conv_unit, name: binary, filters: 32, strides: 2}
  - {block: conv_unit, name: dorefa, filters: 32, kernel_size: 1, bits: 4}
  - {block: conv_unit, name: grouped, filters: 64, kernel_size: 1, groups: 2}
  - {block: output_head, name: output, units: 16}
"""

# Per-layer MACs of the released BinaryFaceNet as larq's summary counts them (thesis model,
# 112x112 input): (binary MACs, float MACs).
THESIS_LAYER_MACS = {
    "head_expand_conv": (0, 2_408_448),
    "head_reduce0_conv": (74_649_600, 0),
    "head_reduce1_conv": (2_985_984, 0),
    "head_reduce2_conv": (51_200, 0),
    "head_reduce3_conv": (4_096, 0),
    "head_se_reduce": (0, 256),
    "head_se_expand": (0, 256),
    "head_entry_conv": (28_901_376, 0),
    "gfe_conv1": (12_845_056, 0),
    "gfe_mix1": (200_704, 0),
    "gfe_conv2": (12_845_056, 0),
    "gfe_mix2": (200_704, 0),
    "lfe0_entry_conv": (28_901_376, 0),
    "lfe0_mix1": (3_261_440, 0),
    "lfe0_conv1_conv": (3_211_264, 0),
    "lfe0_conv2_conv": (3_211_264, 0),
    "lfe0_mix2": (3_261_440, 0),
    "lfe1_entry_conv": (7_225_344, 0),
    "lfe1_mix1": (815_360, 0),
    "lfe1_conv1_conv": (802_816, 0),
    "lfe1_conv2_conv": (802_816, 0),
    "lfe1_mix2": (815_360, 0),
    "embedding_conv1_conv": (0, 1_179_648),
    "embedding_conv2_conv": (0, 262_144),
    "output_dense": (0, 16_384),
}


def larq_summary_totals(model: Any) -> dict[str, Any]:
    """Return the Total row of ``lq.models.summary``'s layer table: weights and MACs per bits, memory."""
    import larq as lq

    printed: list[str] = []
    lq.models.summary(model, print_fn=printed.append)
    rows = printed[0].splitlines()
    header = next(row for row in rows if "MACs" in row)
    total = next(row for row in rows if row.startswith("| Total"))

    weight_bits = [int(bits) for bits in re.findall(r"# (\d+)-bit", header)]
    mac_bits = [int(bits) for bits in re.findall(r"(\d+)-bit MACs", header)]
    numbers = re.findall(r"\d+(?:\.\d+)?", total)
    assert len(numbers) == len(weight_bits) + 1 + len(mac_bits), f"cannot read larq's Total row: {total}"

    weights = dict(zip(weight_bits, (int(value) for value in numbers[: len(weight_bits)])))
    macs = dict(zip(mac_bits, (int(value) for value in numbers[len(weight_bits) + 1 :])))
    return {"weights": weights, "memory_kib": float(numbers[len(weight_bits)]), "macs": macs}


def single_layer_model(layer: Any, input_shape: tuple[int, int, int]) -> Any:
    import tensorflow as tf

    inputs = tf.keras.Input(shape=input_shape)
    return tf.keras.Model(inputs, layer(inputs))


def quant_conv(filters: int, kernel_size: int, **kwargs: Any) -> Any:
    import larq as lq

    return lq.layers.QuantConv2D(
        filters,
        kernel_size,
        input_quantizer=kwargs.pop("input_quantizer", "ste_sign"),
        kernel_quantizer=kwargs.pop("kernel_quantizer", "ste_sign"),
        kernel_constraint="weight_clip",
        use_bias=kwargs.pop("use_bias", False),
        **kwargs,
    )


@pytest.fixture(scope="module")
def mixed_model() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        spec = parse_spec(MIXED_SPEC)
    return build_model(spec, seed=0)


@pytest.fixture(scope="module")
def thesis_model() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        spec = load_spec(SPECS_DIR / "binaryfacenet_thesis.yaml")
    return build_model(spec)


@pytest.fixture(scope="module")
def thesis_stats(thesis_model: Any) -> ModelStats:
    return model_stats(thesis_model)


# ---------------------------------------------------------------------------------------
# Hand-counted single layers.


def test_binary_conv_macs() -> None:
    # 8x8 output, 16 filters, 3x3 kernel over 8 input channels.
    stats = model_stats(single_layer_model(quant_conv(16, 3, padding="same"), (8, 8, 8)))
    assert stats.binary_macs == 8 * 8 * 16 * 3 * 3 * 8
    assert stats.float_macs == 0
    assert stats.params == 3 * 3 * 8 * 16
    assert stats.size_bytes == 3 * 3 * 8 * 16 / 8


def test_float_conv_macs() -> None:
    import tensorflow as tf

    # Valid padding: 8x8 input, 6x6 output; the bias costs no MACs but 4 bytes per value.
    stats = model_stats(single_layer_model(tf.keras.layers.Conv2D(16, 3, use_bias=True), (8, 8, 8)))
    assert stats.float_macs == 6 * 6 * 16 * 3 * 3 * 8
    assert stats.binary_macs == 0
    assert stats.params == 3 * 3 * 8 * 16 + 16
    assert stats.size_bytes == (3 * 3 * 8 * 16 + 16) * 4


def test_grouped_conv_macs() -> None:
    stats = model_stats(single_layer_model(quant_conv(16, 3, padding="same", strides=2, groups=2), (8, 8, 8)))
    assert stats.binary_macs == 4 * 4 * 16 * 3 * 3 * 4


def test_binary_kernel_float_input_is_float() -> None:
    layer = quant_conv(16, 1, input_quantizer=None)
    stats = model_stats(single_layer_model(layer, (8, 8, 8)))
    assert stats.binary_macs == 0
    assert stats.float_macs == 8 * 8 * 16 * 8
    assert stats.size_bytes == 8 * 16 / 8


def test_dorefa_macs_are_other() -> None:
    import larq as lq

    quantizer = lq.quantizers.DoReFa(k_bit=4, mode="activations")
    layer = quant_conv(16, 1, input_quantizer=quantizer, kernel_quantizer=lq.quantizers.DoReFa(k_bit=4, mode="weights"))
    stats = model_stats(single_layer_model(layer, (8, 8, 8)))
    assert stats.other_macs == 8 * 8 * 16 * 8
    assert stats.macs_by_bits == {4: 8 * 8 * 16 * 8}
    assert stats.binary_macs == 0
    assert stats.float_macs == 0


def test_layer_stats_fields() -> None:
    stats = model_stats(single_layer_model(quant_conv(16, 3, padding="same", name="binary"), (8, 8, 8)))
    layer = next(layer for layer in stats.layers if layer.name == "binary")
    assert layer.type == "QuantConv2D"
    assert layer.output_shape == (-1, 8, 8, 16)
    assert layer.input_bits == 1
    assert layer.binary_macs == stats.binary_macs
    assert layer.params == 3 * 3 * 8 * 16


def test_nested_model_is_flattened() -> None:
    import tensorflow as tf

    inner = single_layer_model(quant_conv(16, 3, name="inner_conv"), (8, 8, 8))
    inputs = tf.keras.Input(shape=(8, 8, 8))
    outputs = tf.keras.layers.Conv2D(4, 1, name="outer_conv")(inner(inputs))
    stats = model_stats(tf.keras.Model(inputs, outputs))

    names = [layer.name for layer in stats.layers]
    assert "inner_conv" in names
    assert "outer_conv" in names
    assert stats.binary_macs == 6 * 6 * 16 * 3 * 3 * 8
    assert stats.float_macs == 6 * 6 * 4 * 16


# ---------------------------------------------------------------------------------------
# Agreement with larq's printed summary.


@pytest.mark.parametrize("model_name", ["mixed_model", "thesis_model"])
def test_totals_match_larq_summary(model_name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(model_name)
    stats = model_stats(model)
    summary = larq_summary_totals(model)

    assert stats.params == sum(summary["weights"].values())
    assert stats.size_bytes / 1024 == pytest.approx(summary["memory_kib"], abs=0.006)
    assert stats.binary_macs == summary["macs"].get(1, 0)
    assert stats.float_macs == summary["macs"].get(32, 0)
    assert stats.other_macs == sum(count for bits, count in summary["macs"].items() if bits not in (1, 32))


def test_mixed_totals(mixed_model: Any) -> None:
    stats = model_stats(mixed_model)
    # The output head's Dense reads the flattened 8x8x64 map.
    float_macs = 16 * 16 * 32 * 3 * 3 * 3 + 8 * 8 * 64 * 16
    binary_macs = 8 * 8 * 32 * 3 * 3 * 32 + 8 * 8 * 64 * 16
    assert stats.float_macs == float_macs
    assert stats.binary_macs == binary_macs
    assert stats.other_macs == 8 * 8 * 32 * 32
    assert stats.macs_by_bits == {1: binary_macs, 4: 8 * 8 * 32 * 32, 32: float_macs}
    assert stats.total_macs == float_macs + binary_macs + 8 * 8 * 32 * 32
    assert stats.binary_mac_share == pytest.approx(binary_macs / stats.total_macs)


def test_layers_sum_to_totals(mixed_model: Any) -> None:
    stats = model_stats(mixed_model)
    assert sum(layer.binary_macs for layer in stats.layers) == stats.binary_macs
    assert sum(layer.float_macs for layer in stats.layers) == stats.float_macs
    assert sum(layer.other_macs for layer in stats.layers) == stats.other_macs
    assert sum(layer.params for layer in stats.layers) == stats.params
    assert sum(layer.size_bytes for layer in stats.layers) == stats.size_bytes


def test_to_dict(mixed_model: Any) -> None:
    stats = model_stats(mixed_model)
    data = stats.to_dict()
    assert data["total_macs"] == stats.total_macs
    assert data["binary_mac_share"] == stats.binary_mac_share
    assert data["macs_by_bits"] == {"1": stats.binary_macs, "4": stats.other_macs, "32": stats.float_macs}
    assert len(data["layers"]) == len(stats.layers)
    assert "layers" not in stats.to_dict(layers=False)


def test_empty_model_share_is_zero() -> None:
    import tensorflow as tf

    stats = model_stats(single_layer_model(tf.keras.layers.ReLU(), (4, 4, 3)))
    assert stats.total_macs == 0
    assert stats.binary_mac_share == 0.0


# ---------------------------------------------------------------------------------------
# The released BinaryFaceNet (thesis spec).


def test_thesis_binary_macs(thesis_stats: ModelStats) -> None:
    assert thesis_stats.binary_macs == 184_992_256


def test_thesis_float_macs(thesis_stats: ModelStats) -> None:
    assert thesis_stats.float_macs == 3_867_136


def test_thesis_params(thesis_stats: ModelStats) -> None:
    # larq counts 523 K parameters, the output head's included.
    assert thesis_stats.params == 522_888


def test_thesis_other_macs(thesis_stats: ModelStats) -> None:
    assert thesis_stats.other_macs == 0


def test_thesis_binary_share(thesis_stats: ModelStats) -> None:
    assert thesis_stats.binary_mac_share == pytest.approx(184_992_256 / (184_992_256 + 3_867_136))


@pytest.mark.parametrize("layer_name", list(THESIS_LAYER_MACS))
def test_thesis_layer_macs(thesis_stats: ModelStats, layer_name: str) -> None:
    layer = next((layer for layer in thesis_stats.layers if layer.name == layer_name), None)
    assert layer is not None, f"no layer {layer_name!r}"
    assert (layer.binary_macs, layer.float_macs) == THESIS_LAYER_MACS[layer_name]


def test_thesis_layer_table_is_complete(thesis_stats: ModelStats) -> None:
    counted = {layer.name for layer in thesis_stats.layers if layer.binary_macs or layer.float_macs}
    assert counted == set(THESIS_LAYER_MACS)
