"""Per-op cost features read from a converted TFLite flatbuffer.

Each op of the model's main subgraph becomes an `OpFeatures`: its type and a few counts that
its run time grows with, named ``"<op type>.<count>"``. A latency table prices each name in
milliseconds per unit; a model's predicted latency is the sum over its ops.

The counts, per image:

- ``LceBconv2d``: binary MACs by kernel size (``macs_1x1``, ``macs_kxk``), with the input
  channels of each group rounded up to a multiple of 32, because LCE packs 32 channels into
  one word and a partial word costs a full one. Output elements, split by float and
  bit-packed output. Output elements of zero-padded ``same`` convs, which LCE corrects
  after the binary GEMM.
- ``CONV_2D``: float MACs of ungrouped 1x1, ungrouped larger and grouped kernels; output
  elements (bias, activation and store); input elements (packing or im2col).
- ``DEPTHWISE_CONV_2D``: MACs and output elements. ``FULLY_CONNECTED``: MACs.
- Pooling, ``MEAN`` and ``LceQuantize``: input elements. Every other op: output elements.
- Every op: ``ops``, a per-op dispatch overhead shared by all types, and every model
  ``model.invoke``, the fixed cost of one inference call.

Reading the flatbuffer needs only the ``flatbuffers`` package: the TFLite schema module that
ships with TensorFlow (or LCE) is loaded by file path, without importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from targets.base import ModelRejected, is_tflite_flatbuffer

__all__ = ["GraphFeatures", "OpFeatures", "graph_features", "sum_features"]

OPS_FEATURE = "ops"
INVOKE_FEATURE = "model.invoke"
# Ops whose work is proportional to their input rather than their output.
_INPUT_SIZED = {"MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "SUM", "LceBMaxPool2d", "LceQuantize"}
_BINARY_WORD_BITS = 32
# (module, file) pairs that hold the TFLite flatbuffer schema, tried in order.
_SCHEMA_FILES = (
    ("tensorflow", "lite/python/schema_py_generated.py"),
    ("larq_compute_engine", "mlir/python/tflite_schema.py"),
)


@dataclasses.dataclass(frozen=True)
class OpFeatures:
    """One op of the graph: execution index, type, output tensor names and cost features."""

    index: int
    op_type: str
    outputs: tuple[str, ...]
    features: dict[str, float]


@dataclasses.dataclass(frozen=True)
class GraphFeatures:
    """The ops of a model's main subgraph, in execution order."""

    ops: list[OpFeatures]

    def total(self) -> dict[str, float]:
        """Sum the features of every op and add ``model.invoke`` once."""
        totals = sum_features(op.features for op in self.ops)
        totals[INVOKE_FEATURE] = 1.0
        return totals

    def op_counts(self) -> dict[str, int]:
        """Count the ops by type."""
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.op_type] = counts.get(op.op_type, 0) + 1
        return dict(sorted(counts.items()))


def sum_features(items: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Add feature dicts key by key."""
    totals: dict[str, float] = {}
    for features in items:
        for name, value in features.items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def graph_features(flatbuffer: bytes) -> GraphFeatures:
    """Read the cost features of every op in ``flatbuffer``'s main subgraph.

    Raises:
        ModelRejected: ``flatbuffer`` is not a TFLite model or cannot be parsed.
    """
    if not is_tflite_flatbuffer(flatbuffer):
        raise ModelRejected(
            f"not a TFLite flatbuffer ({len(flatbuffer)} bytes without the TFL3 identifier); "
            "pass the bytes that larq_compute_engine.convert_keras_model returns"
        )
    schema = _schema()
    try:
        model = schema.Model.GetRootAs(flatbuffer, 0)
        subgraph = model.Subgraphs(0)
        ops = [_op_features(index, subgraph.Operators(index), model, subgraph) for index in range(subgraph.OperatorsLength())]
    except (IndexError, KeyError, TypeError, ValueError, AttributeError, struct.error) as error:
        raise ModelRejected(f"cannot read the ops of the flatbuffer: {type(error).__name__}: {error}") from error
    return GraphFeatures(ops)


@functools.cache
def _schema() -> ModuleType:
    for package, relative in _SCHEMA_FILES:
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            continue
        path = Path(list(found.submodule_search_locations)[0]) / relative
        if not path.is_file():
            continue
        module_spec = importlib.util.spec_from_file_location(f"_binaryface_tflite_schema_{package}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    raise ModelRejected(
        "no TFLite schema module found: install tensorflow or larq-compute-engine, which ship "
        + " or ".join(f"{package}/{relative}" for package, relative in _SCHEMA_FILES)
    )


@functools.cache
def _builtin_names() -> dict[int, str]:
    return {value: name for name, value in vars(_schema().BuiltinOperator).items() if not name.startswith("_")}


def _op_features(index: int, op: Any, model: Any, subgraph: Any) -> OpFeatures:
    # The lazy flatbuffer accessors read only the fields used here, not the weights.
    code = model.OperatorCodes(op.OpcodeIndex())
    if code.CustomCode():
        op_type = code.CustomCode().decode()
    else:
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        op_type = _builtin_names().get(builtin, f"BUILTIN_{builtin}")

    def shape(tensor_index: int) -> list[int]:
        if tensor_index < 0:
            return []
        return [int(value) for value in subgraph.Tensors(tensor_index).ShapeAsNumpy()] if subgraph.Tensors(tensor_index).ShapeLength() else []

    input_indices = [int(tensor) for tensor in op.InputsAsNumpy()] if op.InputsLength() else []
    output_indices = [int(tensor) for tensor in op.OutputsAsNumpy()] if op.OutputsLength() else []
    inputs = [shape(tensor) for tensor in input_indices]
    outputs = [shape(tensor) for tensor in output_indices]
    output_elements = float(sum(math.prod(item) for item in outputs))
    input_elements = float(math.prod(inputs[0])) if inputs and inputs[0] else 0.0
    names = tuple((subgraph.Tensors(tensor).Name() or b"").decode("utf-8", "replace") for tensor in output_indices)

    if op_type == "LceBconv2d":
        output_type = subgraph.Tensors(output_indices[0]).Type()
        options = bytes(op.CustomOptionsAsNumpy()) if op.CustomOptionsLength() else b""
        features = _bconv_features(options, inputs, outputs, output_type)
    elif op_type == "CONV_2D":
        features = _conv_features(inputs, outputs)
    elif op_type == "DEPTHWISE_CONV_2D":
        kernel = inputs[1]
        features = {"macs": output_elements * kernel[1] * kernel[2], "outputs": output_elements}
    elif op_type == "FULLY_CONNECTED":
        features = {"macs": float(math.prod(inputs[1]))}
    elif op_type in _INPUT_SIZED:
        features = {"inputs": input_elements}
    else:
        features = {"elements": output_elements}

    named = {f"{op_type}.{name}": float(value) for name, value in features.items() if value}
    named[OPS_FEATURE] = 1.0
    return OpFeatures(index, op_type, names, named)


def _conv_features(inputs: list[list[int]], outputs: list[list[int]]) -> dict[str, float]:
    """Float MACs of a CONV_2D; its filter is [out, kh, kw, in per group]."""
    filters, kernel_h, kernel_w, per_group = inputs[1]
    groups = max(1, inputs[0][3] // per_group) if per_group else 1
    output_elements = float(math.prod(outputs[0]))
    macs = output_elements * kernel_h * kernel_w * per_group
    if groups > 1:
        kind = "macs_grouped"
    elif kernel_h * kernel_w == 1:
        kind = "macs_1x1"
    else:
        kind = "macs_kxk"
    return {kind: macs, "outputs": output_elements, "inputs": float(math.prod(inputs[0]))}


def _bconv_features(options: bytes, inputs: list[list[int]], outputs: list[list[int]], output_type: int) -> dict[str, float]:
    """Binary MACs of an LceBconv2d; its filter is [out, kh, kw, 32-bit words per group]."""
    from flatbuffers import flexbuffers

    settings = flexbuffers.Loads(options) if options else {}
    channels_out, kernel_h, kernel_w, words_per_group = inputs[1]
    output_elements = float(math.prod(outputs[0][:-1]) * channels_out)
    macs = output_elements * kernel_h * kernel_w * words_per_group * _BINARY_WORD_BITS
    # LceBconv2d writes int32 words of 32 channels each when the next op reads bits.
    bitpacked = output_type == _schema().TensorType.INT32
    features = {
        "macs_1x1" if kernel_h * kernel_w == 1 else "macs_kxk": macs,
        "outputs_bitpacked" if bitpacked else "outputs_float": output_elements,
    }
    # LCE stores TFLite's Padding enum: SAME is 0, VALID is 1.
    same_padding = int(settings.get("padding", 0)) == 0
    if same_padding and int(settings.get("pad_values", 1)) == 0 and kernel_h * kernel_w > 1:
        features["outputs_zero_padded"] = output_elements
    return features
