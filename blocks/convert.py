"""LCE conversion and an audit of what the converted flatbuffer really runs.

The audit reads the flatbuffer, not the Keras model: it counts ops by type, sums the MACs
of every ``LceBconv2d`` from its tensor shapes and options, and lists the layers that the
Keras model declares 1-bit but that did not become a binary kernel, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from blocks.errors import ConversionError

__all__ = [
    "Audit",
    "BinaryKernel",
    "FloatFallback",
    "audit_flatbuffer",
    "check_allocation",
    "convert_model",
]

_SIGN_INPUT = {"SteSign", "ApproxSign", "SwishSign"}
_BINARY_KERNEL = {"SteSign", "ApproxSign", "SwishSign", "MagnitudeAwareSign"}
_NO_BINARY_KERNEL = {"QuantDepthwiseConv2D", "QuantSeparableConv2D"}
_INTERPRETER_OPTIONS = {
    "default": {},
    "indirect_bgemm": {"use_indirect_bgemm": True},
}


@dataclass(frozen=True)
class BinaryKernel:
    """One ``LceBconv2d`` op of the flatbuffer and the Keras layer it was matched to."""

    layer: str | None
    output_shape: tuple[int, ...]
    kernel_size: tuple[int, int]
    channels_in: int
    groups: int
    strides: tuple[int, int]
    macs: int


@dataclass(frozen=True)
class FloatFallback:
    """A layer declared 1-bit whose convolution runs in float after conversion."""

    layer: str
    type: str
    macs: int
    reason: str


@dataclass(frozen=True)
class Audit:
    """Audit of a converted model: its ops, binary kernels and float fallbacks (MACs per image)."""

    op_counts: dict[str, int]
    binary_kernel_macs: int
    total_macs: int
    binary_kernels: list[BinaryKernel]
    float_fallbacks: list[FloatFallback]
    flatbuffer_bytes: int
    converter_messages: list[str] = field(default_factory=list)

    @property
    def binary_kernel_mac_share(self) -> float:
        """Share of the model's MACs that run in ``LceBconv2d``."""
        return self.binary_kernel_macs / self.total_macs if self.total_macs else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["binary_kernel_mac_share"] = self.binary_kernel_mac_share
        data["n_ops"] = sum(self.op_counts.values())
        return data


def convert_model(model: Any) -> tuple[bytes, list[str]]:
    """Convert ``model`` with LCE; return the flatbuffer and the converter's error lines.

    LCE's converter prints some problems (for example a grouped binary conv it cannot
    convert) to the process' stderr and still returns a model. Those lines are returned so
    that callers can report them. A failed conversion raises ``ConversionError``.
    """
    import larq_compute_engine as lce

    with _captured_stderr() as captured:
        try:
            flatbuffer = lce.convert_keras_model(model)
        except Exception as error:  # the converter raises bare Exception/RuntimeError types
            cause = str(error).strip().splitlines()
            raise ConversionError(f"LCE conversion of {model.name!r} failed: {cause[0] if cause else type(error).__name__}") from error
    messages = [line for line in captured() if " E " in line or "error" in line.lower()]
    return bytes(flatbuffer), messages


def check_allocation(flatbuffer: bytes) -> dict[str, str | None]:
    """Try ``AllocateTensors()`` in LCE's interpreter with the default and indirect BGEMM kernels.

    Returns, per option set, ``None`` when it allocated or the cause when it failed, and
    raises ``ConversionError`` when no option set allocates.
    """
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    results: dict[str, str | None] = {}
    for name, options in _INTERPRETER_OPTIONS.items():
        with _captured_stderr():
            try:
                Interpreter(flatbuffer, num_threads=1, **options)
                results[name] = None
            except (RuntimeError, ValueError) as error:
                results[name] = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if all(results.values()):
        causes = "; ".join(f"{name}: {cause}" for name, cause in results.items())
        raise ConversionError(f"the converted model does not allocate in LCE's interpreter ({causes})")
    return results


def audit_flatbuffer(flatbuffer: bytes, model: Any, *, messages: list[str] | None = None) -> Audit:
    """Audit ``flatbuffer`` against the Keras ``model`` it was converted from."""
    from blocks.stats import model_stats

    stats = model_stats(model)
    op_counts, kernels = _read_flatbuffer(flatbuffer)
    declared = _declared_binary_layers(model, {layer.name: layer for layer in stats.layers})

    matched: set[str] = set()
    named_kernels = []
    for kernel in kernels:
        layer = next(
            (name for name, signature, _ in declared if name not in matched and signature == _signature(kernel)),
            None,
        )
        if layer is not None:
            matched.add(layer)
        named_kernels.append(BinaryKernel(layer=layer, **kernel))

    fallbacks = [
        FloatFallback(layer=name, type=type(keras_layer).__name__, macs=macs, reason=_fallback_reason(keras_layer))
        for name, _, (keras_layer, macs) in ((n, s, info) for n, s, info in declared)
        if name not in matched
    ]
    return Audit(
        op_counts=dict(sorted(op_counts.items())),
        binary_kernel_macs=sum(kernel.macs for kernel in named_kernels),
        total_macs=stats.total_macs,
        binary_kernels=named_kernels,
        float_fallbacks=fallbacks,
        flatbuffer_bytes=len(flatbuffer),
        converter_messages=list(messages or []),
    )


def _signature(kernel: dict[str, Any]) -> tuple:
    return (tuple(kernel["output_shape"][1:]), kernel["kernel_size"], kernel["channels_in"], kernel["groups"], kernel["strides"])


def _read_flatbuffer(flatbuffer: bytes) -> tuple[Counter, list[dict[str, Any]]]:
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    builtin_names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    op_counts: Counter = Counter()
    kernels = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            op_name = code.customCode.decode() if code.customCode else builtin_names.get(builtin, str(builtin))
            op_counts[op_name] += 1
            if op_name != "LceBconv2d":
                continue

            options = flexbuffers.Loads(bytes(op.customOptions))
            output_shape = tuple(int(v) for v in subgraph.tensors[op.outputs[0]].shape)
            filter_shape = [int(v) for v in subgraph.tensors[op.inputs[1]].shape]
            channels_in = int(options["channels_in"])
            # The filter is bit-packed in 32-bit words along input channels. A grouped binary
            # conv has a multiple of 32 channels per group, so the words give the group size.
            packed_channels = filter_shape[3] * 32
            per_group = packed_channels if packed_channels < channels_in else channels_in
            kernels.append(
                {
                    "output_shape": output_shape,
                    "kernel_size": (filter_shape[1], filter_shape[2]),
                    "channels_in": channels_in,
                    "groups": channels_in // per_group,
                    "strides": (int(options["stride_height"]), int(options["stride_width"])),
                    "macs": output_shape[1] * output_shape[2] * output_shape[3] * filter_shape[1] * filter_shape[2] * per_group,
                }
            )
    return op_counts, kernels


def _declared_binary_layers(model: Any, stats: dict[str, Any]) -> list[tuple[str, tuple | None, tuple[Any, int]]]:
    """Return (name, signature, (layer, binary MACs)) for each layer larq counts as 1-bit."""
    declared = []
    for layer in _leaf_layers(model):
        layer_stats = stats.get(layer.name)
        if layer_stats is None or not layer_stats.binary_macs:
            continue
        config = layer.get_config()
        groups = int(config.get("groups", 1) or 1)
        output_shape = tuple(int(v) for v in layer.output_shape[1:])
        channels_in = int(layer.input_shape[-1])
        kernel = tuple(int(v) for v in config.get("kernel_size", (1, 1)))
        strides = tuple(int(v) for v in config.get("strides", (1, 1)))
        signature = (output_shape, kernel, channels_in, groups, strides)
        # LCE has no binary depthwise or separable kernel. A 1x1 one has the signature of the
        # 1x1 conv beside it, so it must not take that conv's LceBconv2d.
        if type(layer).__name__ in _NO_BINARY_KERNEL:
            signature = None
        declared.append((layer.name, signature, (layer, layer_stats.binary_macs)))
    return declared


def _leaf_layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _leaf_layers(layer)
        else:
            yield layer


def _fallback_reason(layer: Any) -> str:
    """Return every reason why ``layer`` did not become a binary kernel, joined by "; "."""
    kind = type(layer).__name__
    input_quantizer = getattr(layer, "input_quantizer", None)
    sign_input = type(input_quantizer).__name__ in _SIGN_INPUT
    reasons = []
    # Without a sign-style input quantizer there is no LceQuantize, so the layer does not run
    # as quantize, dequantize and float conv, but as its quantizer's float ops and a float conv.
    if kind == "QuantDepthwiseConv2D":
        runs_as = " (runs as quantize, dequantize, float conv)" if sign_input else ""
        reasons.append(f"depthwise: LCE has no binary depthwise kernel{runs_as}")
    if kind == "QuantSeparableConv2D":
        runs_as = " (runs as quantize, dequantize, float convs)" if sign_input else ""
        reasons.append(f"separable: LCE has no binary separable kernel{runs_as}")
    if not sign_input:
        detail = _quantizer_detail(input_quantizer)
        reasons.append(f"input quantizer {detail} is not sign-style (LCE needs ste_sign, approx_sign or swish_sign)")
    if kind not in ("QuantDepthwiseConv2D", "QuantSeparableConv2D"):
        kernel_quantizer = getattr(layer, "kernel_quantizer", None)
        if type(kernel_quantizer).__name__ not in _BINARY_KERNEL and not _is_dorefa_sign(kernel_quantizer):
            reasons.append(f"kernel quantizer {_quantizer_detail(kernel_quantizer)} is not a 1-bit sign quantizer")
        groups = int(layer.get_config().get("groups", 1) or 1)
        channels = int(layer.input_shape[-1]) // groups
        if groups > 1 and channels % 32:
            reasons.append(f"{channels} input channels per group: grouped binary convs need a multiple of 32 per group")
    if not reasons:
        return "not converted to LceBconv2d by LCE (no rule matched; inspect the converter messages)"
    return "; ".join(reasons)


def _is_dorefa_sign(quantizer: Any) -> bool:
    return type(quantizer).__name__ == "DoReFa" and quantizer.precision == 1 and getattr(quantizer, "mode", "") == "weights"


def _quantizer_detail(quantizer: Any) -> str:
    if quantizer is None:
        return "None"
    name = type(quantizer).__name__
    if name == "DoReFa":
        return f"DoReFa(k_bit={quantizer.precision}, mode={getattr(quantizer, 'mode', '?')!r})"
    return name


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Any]:
    """Capture what C++ code writes to file descriptor 2 while the block runs."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield lambda: lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())
