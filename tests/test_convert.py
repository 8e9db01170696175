"""LCE conversion and the audit of what the flatbuffer runs: op counts, binary kernels, float fallbacks."""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any, NamedTuple

import pytest

import blocks  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from blocks.build import build_model
from blocks.convert import Audit, audit_flatbuffer, check_allocation, convert_model
from blocks.errors import BinaryFaceError, ConversionError
from blocks.spec import DeploymentWarning, parse_spec

TINY = """
name: tiny
input_shape: [16, 16, 3]
blocks:
  - {block: conv_unit, name: stem, filters: 32, bits: 32}
  - {block: conv_unit, name: body, filters: 32, strides: 2}
"""

# One 1-bit layer per case that LCE runs in float, on an 8x8x32 input.
DOREFA_INPUT = "- {block: conv_unit, filters: 32, kernel_size: 1, input_quantizer: {class_name: DoReFa, k_bit: 1, mode: weights}}"
HEAVISIDE_KERNEL = "- {block: conv_unit, filters: 32, kernel_size: 1, kernel_quantizer: ste_heaviside}"
DEPTHWISE = "- {block: gfe}"
SEPARABLE = "- {block: lfe, filters: 32, strides: 1}"
GROUPS_OF_16 = "- {block: conv_unit, filters: 32, kernel_size: 1, groups: 2}"
GROUPS_OF_32 = "- {block: conv_unit, filters: 64, groups: 2}"


class Converted(NamedTuple):
    model: Any
    flatbuffer: bytes
    messages: list[str]
    audit: Audit


@functools.cache
def converted(text: str) -> Converted:
    """Build, convert and audit a spec once per test run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        spec = parse_spec(text)
    model = build_model(spec, seed=0)
    flatbuffer, messages = convert_model(model)
    return Converted(model, flatbuffer, messages, audit_flatbuffer(flatbuffer, model, messages=messages))


def single_block(body: str, input_shape: str = "[8, 8, 32]") -> Converted:
    return converted(f"name: single\ninput_shape: {input_shape}\nblocks:\n  {body}\n")


def fallback_reasons(audit: Audit) -> dict[str, str]:
    return {fallback.layer: fallback.reason for fallback in audit.float_fallbacks}


# ---------------------------------------------------------------------------------------
# Op counts and binary kernels.


def test_op_counts_by_type() -> None:
    audit = converted(TINY).audit
    # BatchNorm folds into the convs; the float conv runs as CONV_2D, the binary one as
    # LceQuantize then LceBconv2d.
    assert audit.op_counts == {"CONV_2D": 1, "LceBconv2d": 1, "LceQuantize": 1, "PRELU": 2}


def test_binary_kernel_matched_to_layer() -> None:
    kernels = converted(TINY).audit.binary_kernels
    assert len(kernels) == 1
    assert kernels[0].layer == "body_conv"
    assert kernels[0].output_shape == (1, 8, 8, 32)
    assert kernels[0].kernel_size == (3, 3)
    assert kernels[0].channels_in == 32
    assert kernels[0].groups == 1
    assert kernels[0].strides == (2, 2)
    assert kernels[0].macs == 8 * 8 * 32 * 3 * 3 * 32


def test_binary_kernel_macs_and_share() -> None:
    audit = converted(TINY).audit
    binary = 8 * 8 * 32 * 3 * 3 * 32
    floating = 16 * 16 * 32 * 3 * 3 * 3
    assert audit.binary_kernel_macs == binary
    assert audit.total_macs == binary + floating
    assert audit.binary_kernel_mac_share == pytest.approx(binary / (binary + floating))
    assert audit.float_fallbacks == []


def test_audit_to_dict() -> None:
    audit = converted(TINY).audit
    data = audit.to_dict()
    assert data["n_ops"] == 5
    assert data["binary_kernel_mac_share"] == audit.binary_kernel_mac_share
    assert data["op_counts"] == audit.op_counts
    assert data["flatbuffer_bytes"] == len(converted(TINY).flatbuffer)


def test_no_converter_messages_for_clean_model() -> None:
    assert converted(TINY).messages == []


def test_grouped_binary_kernel() -> None:
    audit = single_block(GROUPS_OF_32, "[8, 8, 64]").audit
    assert [kernel.groups for kernel in audit.binary_kernels] == [2]
    assert audit.binary_kernels[0].macs == 8 * 8 * 64 * 3 * 3 * 32
    assert audit.binary_kernel_mac_share == 1.0


# ---------------------------------------------------------------------------------------
# Layers declared 1-bit that run in float, with the reason.


def test_fallback_dorefa_input() -> None:
    audit = single_block(DOREFA_INPUT).audit
    reason = "input quantizer DoReFa(k_bit=1, mode='weights') is not sign-style (LCE needs ste_sign, approx_sign or swish_sign)"
    assert fallback_reasons(audit) == {"conv_unit_conv": reason}
    assert audit.binary_kernels == []
    assert audit.float_fallbacks[0].macs == 8 * 8 * 32 * 32
    assert audit.binary_kernel_mac_share == 0.0


def test_fallback_binary_kernel_quantizer() -> None:
    audit = single_block(HEAVISIDE_KERNEL).audit
    assert fallback_reasons(audit) == {"conv_unit_conv": "kernel quantizer SteHeaviside is not a 1-bit sign quantizer"}


def test_fallback_depthwise() -> None:
    audit = single_block(DEPTHWISE).audit
    reason = "depthwise: LCE has no binary depthwise kernel (runs as quantize, dequantize, float conv)"
    assert fallback_reasons(audit) == {"gfe_mix1": reason, "gfe_mix2": reason}
    assert {fallback.type for fallback in audit.float_fallbacks} == {"QuantDepthwiseConv2D"}


def test_depthwise_leaves_convs_binary() -> None:
    audit = single_block(DEPTHWISE).audit
    assert sorted(kernel.layer for kernel in audit.binary_kernels) == ["gfe_conv1", "gfe_conv2"]


def test_fallback_separable() -> None:
    audit = single_block(SEPARABLE).audit
    reason = "separable: LCE has no binary separable kernel (runs as quantize, dequantize, float convs)"
    assert fallback_reasons(audit) == {"lfe_mix1": reason, "lfe_mix2": reason}
    assert {fallback.type for fallback in audit.float_fallbacks} == {"QuantSeparableConv2D"}


def test_separable_leaves_convs_binary() -> None:
    audit = single_block(SEPARABLE).audit
    assert sorted(kernel.layer for kernel in audit.binary_kernels) == ["lfe_conv1_conv", "lfe_conv2_conv", "lfe_entry_conv"]


def test_fallback_16_channels_per_group() -> None:
    audit = single_block(GROUPS_OF_16).audit
    reason = "16 input channels per group: grouped binary convs need a multiple of 32 per group"
    assert fallback_reasons(audit) == {"conv_unit_conv": reason}
    assert audit.op_counts.get("LceBconv2d", 0) == 0


def test_converter_message_16_channels_per_group() -> None:
    messages = single_block(GROUPS_OF_16).messages
    expected = "Invalid binary grouped convolution: the number of input channels per-group must be a multiple of 32, but is 16"
    assert messages, "the converter printed no error for a grouped conv with 16 channels per group"
    assert all(expected in message for message in messages)
    assert single_block(GROUPS_OF_16).audit.converter_messages == messages


# ---------------------------------------------------------------------------------------
# Interpreter allocation.


def test_grouped_conv_needs_indirect_bgemm() -> None:
    allocation = check_allocation(single_block(GROUPS_OF_32, "[8, 8, 64]").flatbuffer)
    assert allocation["indirect_bgemm"] is None
    assert allocation["default"] is not None
    assert "AllocateTensors() == kTfLiteOk" in allocation["default"]


def test_plain_model_allocates_everywhere() -> None:
    assert check_allocation(converted(TINY).flatbuffer) == {"default": None, "indirect_bgemm": None}


def test_float_grouped_conv_allocates() -> None:
    # With 16 channels per group the conv stays float, which the default kernels run.
    allocation = check_allocation(single_block(GROUPS_OF_16).flatbuffer)
    assert allocation == {"default": None, "indirect_bgemm": None}


def test_invalid_flatbuffer_does_not_allocate() -> None:
    message = r"^the converted model does not allocate in LCE's interpreter \(default: .*Invalid model\.; indirect_bgemm: .*Invalid model\.\)$"
    with pytest.raises(ConversionError, match=message):
        check_allocation(b"not a flatbuffer" * 8)


# ---------------------------------------------------------------------------------------
# Failed conversions.


def test_mixed_precision_model_fails() -> None:
    import tensorflow as tf

    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = tf.keras.Input(shape=(4, 4, 3))
        model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(4, 1)(inputs), name="half")
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")

    message = "LCE conversion of 'half' failed: Mixed precision float16 models are not supported by the TFLite converter"
    with pytest.raises(ConversionError, match=re.escape(message)) as info:
        convert_model(model)
    assert isinstance(info.value.__cause__, ValueError)


def test_conversion_error_is_project_error() -> None:
    assert issubclass(ConversionError, BinaryFaceError)


def test_conversion_error_keeps_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import larq_compute_engine as lce

    cause = RuntimeError("\n  MLIR pass failed: 'lq.Bconv2d' op unsupported\n  at loc(model/conv)\n")

    def fail(model: Any) -> bytes:
        raise cause

    monkeypatch.setattr(lce, "convert_keras_model", fail)
    model = converted(TINY).model
    with pytest.raises(ConversionError, match=r"^LCE conversion of 'tiny' failed: MLIR pass failed: 'lq\.Bconv2d' op unsupported$") as info:
        convert_model(model)
    assert info.value.__cause__ is cause


def test_conversion_error_without_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import larq_compute_engine as lce

    def fail(model: Any) -> bytes:
        raise MemoryError()

    monkeypatch.setattr(lce, "convert_keras_model", fail)
    with pytest.raises(ConversionError, match=r"^LCE conversion of 'tiny' failed: MemoryError$"):
        convert_model(converted(TINY).model)
