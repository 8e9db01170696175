"""Block primitives of BinaryFaceNet and the units they are made of.

Topologies follow the BinaryFaceNet model released with L. S. Luevano Garcia's thesis
("Closing the Gap on Affordable Real-Time Very Low Resolution Face Recognition for Automated
Video Surveillance", Tecnologico de Monterrey, 2022). ``bits`` selects the quantizers of a
block's quantized convolutions: 1 is sign binarization of inputs and kernels with
``weight_clip`` (what LCE turns into ``LceBconv2d``), 2-8 is DoReFa k-bit and 32 is float.
``input_quantizer`` / ``kernel_quantizer`` override that choice with a larq quantizer name or
a mapping such as ``{class_name: DoReFa, k_bit: 1, mode: weights}``.

TensorFlow is imported only when a block is built, so that specs validate without it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterator, Literal

from blocks.registry import ShapeContext, register_block

__all__ = ["Quantizer", "THESIS_REDUCTION", "split_groups"]

Quantizer = str | dict[str, Any] | None
Shape = tuple[int, int, int]

# The SE reduction ("squeeze") stack of the released model: 112 -> 54 -> 18 -> 5 -> 1.
THESIS_REDUCTION: list[dict[str, int]] = [
    {"kernel_size": 5, "strides": 2, "groups": 4},
    {"kernel_size": 3, "strides": 3, "groups": 4},
    {"kernel_size": 1, "strides": 4, "groups": 2},
    {"kernel_size": 1, "strides": 5, "groups": 1},
]

# Input quantizers that make LCE emit a binary kernel (LCE 0.16 converter).
_SIGN_INPUT_QUANTIZERS = {"ste_sign", "approx_sign", "swish_sign", "SteSign", "ApproxSign", "SwishSign"}
_QUANTIZER_CLASSES = {
    "SteSign",
    "ApproxSign",
    "SwishSign",
    "MagnitudeAwareSign",
    "SteHeaviside",
    "SteTern",
    "DoReFa",
    "DoReFaQuantizer",
    "NoOp",
}
_QUANTIZER_NAMES = {
    "ste_sign",
    "approx_sign",
    "swish_sign",
    "magnitude_aware_sign",
    "ste_heaviside",
    "ste_tern",
    "dorefa_quantizer",
    "noop",
}


# ---------------------------------------------------------------------------------------
# Shape arithmetic and validation shared by the shape functions (no TensorFlow here).


def conv_output_size(size: int, kernel_size: int, strides: int, padding: str) -> int:
    """Return the output length of a convolution along one axis (Keras arithmetic)."""
    if padding == "same":
        return math.ceil(size / strides)
    return (size - kernel_size) // strides + 1


def _check_conv(
    context: ShapeContext,
    shape: Shape,
    *,
    filters: int,
    kernel_size: int,
    strides: int,
    padding: str,
    groups: int,
    bits: int,
    prefix: str = "",
    bits_key: str = "bits",
    input_quantizer: Quantizer = None,
    kernel_quantizer: Quantizer = None,
    quantized: bool = True,
) -> Shape:
    height, width, channels = shape
    # Every layer of a block takes its width from the block's one 'filters' key.
    if filters <= 0:
        raise ValueError("filters", f"must be positive, got {filters}")
    for key, value in (("kernel_size", kernel_size), ("strides", strides), ("groups", groups)):
        if value <= 0:
            raise ValueError(prefix + key, f"must be positive, got {value}")
    if padding == "valid" and (kernel_size > height or kernel_size > width):
        raise ValueError(
            prefix + "kernel_size",
            f"valid-padded kernel {kernel_size}x{kernel_size} is larger than its {height}x{width} input",
        )
    if channels % groups or filters % groups:
        raise ValueError(
            prefix + "groups",
            f"groups={groups} must divide the input channels ({channels}) and filters ({filters})",
        )
    if quantized:
        _check_bits(context, bits, input_quantizer, kernel_quantizer, bits_key)
        if _is_binary(bits, input_quantizer) and groups > 1 and (channels // groups) % 32:
            context.warn(
                prefix + "groups",
                f"1-bit grouped conv with {channels // groups} input channels per group runs in float: "
                "LCE needs a multiple of 32 channels per group",
            )
    return (
        conv_output_size(height, kernel_size, strides, padding),
        conv_output_size(width, kernel_size, strides, padding),
        filters,
    )


def _check_bits(context: ShapeContext, bits: int, input_quantizer: Quantizer, kernel_quantizer: Quantizer, bits_key: str) -> None:
    if not (1 <= bits <= 8 or bits == 32):
        raise ValueError(bits_key, f"must be 1 (binary), 2-8 (DoReFa k-bit) or 32 (float), got {bits}")
    # Quantizer keys belong to the whole block, so their paths carry no prefix.
    for key, quantizer in (("input_quantizer", input_quantizer), ("kernel_quantizer", kernel_quantizer)):
        if quantizer is None:
            continue
        name = quantizer.get("class_name") if isinstance(quantizer, dict) else quantizer
        if name is None:
            raise ValueError(key, "a quantizer mapping needs a 'class_name' key, e.g. {class_name: DoReFa, k_bit: 2}")
        if not isinstance(name, str) or (name not in _QUANTIZER_NAMES and name not in _QUANTIZER_CLASSES):
            known = ", ".join(sorted(_QUANTIZER_NAMES | _QUANTIZER_CLASSES))
            raise ValueError(key, f"unknown quantizer {name!r}; known: {known}")
    if bits == 1 and input_quantizer is not None and _quantizer_name(input_quantizer) not in _SIGN_INPUT_QUANTIZERS:
        context.warn(
            "input_quantizer",
            f"1-bit layer with input quantizer {_quantizer_name(input_quantizer)!r} runs in float: "
            "LCE makes a binary kernel only from a sign-style input quantizer (ste_sign, approx_sign, swish_sign)",
        )


def _quantizer_name(quantizer: Quantizer) -> str | None:
    return quantizer.get("class_name") if isinstance(quantizer, dict) else quantizer


def _is_binary(bits: int, input_quantizer: Quantizer) -> bool:
    return bits == 1 and (input_quantizer is None or _quantizer_name(input_quantizer) in _SIGN_INPUT_QUANTIZERS)


# ---------------------------------------------------------------------------------------
# Keras units shared by the blocks.


def _modules() -> tuple[Any, Any]:
    import larq as lq
    import tensorflow as tf

    return tf, lq


# When set, grouped QuantConv2D layers run one convolution per group (see ``split_groups``).
_SPLIT_GROUPS = contextvars.ContextVar("split_groups", default=False)


@contextlib.contextmanager
def split_groups(enabled: bool = True) -> Iterator[None]:
    """Build grouped quantized convs that run as one convolution per group while active.

    The result is the same function with the same weights, but TensorFlow 2.16 runs a grouped
    convolution on the CPU through an XLA-compiled path that trained BinaryFaceNet about 10x
    slower than split convolutions (measured on a 2-core x86 host). LCE converts the split form
    into separate ops, so convert a model built without it (``model.set_weights`` copies the
    weights across, layer for layer).
    """
    token = _SPLIT_GROUPS.set(enabled)
    try:
        yield
    finally:
        _SPLIT_GROUPS.reset(token)


def _split_group_conv_class() -> Any:
    global _SPLIT_GROUP_CONV
    if _SPLIT_GROUP_CONV is None:
        _, lq = _modules()

        class SplitGroupQuantConv2D(lq.layers.QuantConv2D):
            """QuantConv2D that computes a grouped convolution as one convolution per group."""

            def convolution_op(self, inputs: Any, kernel: Any) -> Any:
                import tensorflow as tf

                parts = tf.split(inputs, self.groups, axis=-1)
                kernels = tf.split(kernel, self.groups, axis=-1)
                outputs = []
                for index in range(self.groups):
                    outputs.append(
                        tf.nn.convolution(parts[index], kernels[index], strides=list(self.strides), padding=self.padding.upper())
                    )
                return tf.concat(outputs, axis=-1)

            def _jit_compiled_convolution_op(self, inputs: Any, kernel: Any) -> Any:
                return self.convolution_op(inputs, kernel)

        _SPLIT_GROUP_CONV = SplitGroupQuantConv2D
    return _SPLIT_GROUP_CONV


_SPLIT_GROUP_CONV: Any = None


def _quantizer(quantizer: Quantizer) -> Any:
    _, lq = _modules()
    if isinstance(quantizer, dict):
        config = {key: value for key, value in quantizer.items() if key != "class_name"}
        return lq.quantizers.get({"class_name": quantizer["class_name"], "config": config})
    return lq.quantizers.get(quantizer)


def _quantizers(bits: int, input_quantizer: Quantizer, kernel_quantizer: Quantizer) -> tuple[Any, Any, Any]:
    """Return (input quantizer, kernel quantizer, kernel constraint) for ``bits``."""
    _, lq = _modules()
    if bits == 1:
        default_input, default_kernel = "ste_sign", "ste_sign"
        constraint = lq.constraints.WeightClip(1.0)
    elif bits == 32:
        default_input = default_kernel = None
        constraint = None
    else:
        default_input = {"class_name": "DoReFa", "k_bit": bits, "mode": "activations"}
        default_kernel = {"class_name": "DoReFa", "k_bit": bits, "mode": "weights"}
        constraint = None
    chosen_input = input_quantizer if input_quantizer is not None else default_input
    chosen_kernel = kernel_quantizer if kernel_quantizer is not None else default_kernel
    if constraint is None and chosen_kernel is not None:
        constraint = lq.constraints.WeightClip(1.0)
    return (
        _quantizer(chosen_input) if chosen_input is not None else None,
        _quantizer(chosen_kernel) if chosen_kernel is not None else None,
        constraint,
    )


def _conv(
    x: Any,
    *,
    name: str,
    filters: int,
    kernel_size: int | tuple[int, int],
    strides: int = 1,
    padding: str = "same",
    groups: int = 1,
    bits: int = 1,
    use_bias: bool = False,
    pad_values: float = 1.0,
    input_quantizer: Quantizer = None,
    kernel_quantizer: Quantizer = None,
    activation: str | None = None,
) -> Any:
    """Apply a Conv2D, float when ``bits`` is 32 and no quantizer is named, else QuantConv2D."""
    tf, lq = _modules()
    if bits == 32 and input_quantizer is None and kernel_quantizer is None:
        layer = tf.keras.layers.Conv2D(
            filters, kernel_size, strides, padding, groups=groups, use_bias=use_bias, activation=activation, name=name
        )
        return layer(x)

    input_q, kernel_q, constraint = _quantizers(bits, input_quantizer, kernel_quantizer)
    conv_class = _split_group_conv_class() if groups > 1 and _SPLIT_GROUPS.get() else lq.layers.QuantConv2D
    layer = conv_class(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        groups=groups,
        use_bias=use_bias,
        pad_values=pad_values,
        input_quantizer=input_q,
        kernel_quantizer=kernel_q,
        kernel_constraint=constraint,
        activation=activation,
        name=name,
    )
    return layer(x)


def _prelu(x: Any, name: str) -> Any:
    """Apply PReLU with one slope per channel, initialised to 0.25.

    Keras' default slope of 0 makes PReLU a ReLU at initialisation. Its non-negative output
    then binarizes to all +1 under sign quantizers (which map 0 to +1), so every following
    binary conv would start blind. Loaded weights replace the initial slopes.
    """
    tf, _ = _modules()
    slope = tf.keras.initializers.Constant(0.25)
    return tf.keras.layers.PReLU(alpha_initializer=slope, shared_axes=[1, 2], name=name)(x)


def _batch_norm(x: Any, name: str) -> Any:
    tf, _ = _modules()
    return tf.keras.layers.BatchNormalization(name=name)(x)


def _add(inputs: list[Any], name: str) -> Any:
    tf, _ = _modules()
    return tf.keras.layers.Add(name=name)(inputs)


def _unit(
    x: Any,
    *,
    name: str,
    batch_norm: bool = True,
    activation: str = "prelu",
    **conv_args: Any,
) -> Any:
    """Apply the conv unit: convolution, BatchNorm, activation (PReLU, ReLU or none)."""
    tf, _ = _modules()
    x = _conv(x, name=f"{name}_conv", **conv_args)

    if batch_norm:
        x = _batch_norm(x, f"{name}_bn")

    if activation == "prelu":
        x = _prelu(x, f"{name}_prelu")
    elif activation == "relu":
        x = tf.keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _mixing(
    x: Any,
    *,
    name: str,
    kind: str,
    groups: int,
    bits: int,
    pad_values: float,
    input_quantizer: Quantizer,
    kernel_quantizer: Quantizer,
) -> Any:
    """Apply the 1x1 channel-mixing layer of GFE and LFE (with bias).

    ``depthwise`` and ``separable`` are the thesis' layers, which LCE never runs as binary
    kernels; ``grouped`` replaces them with a grouped 1x1 QuantConv2D that it does.
    """
    tf, lq = _modules()
    channels = x.shape[-1]
    if kind == "grouped":
        return _conv(
            x,
            name=name,
            filters=channels,
            kernel_size=1,
            groups=groups,
            bits=bits,
            use_bias=True,
            pad_values=pad_values,
            input_quantizer=input_quantizer,
            kernel_quantizer=kernel_quantizer,
        )

    if bits == 32 and input_quantizer is None and kernel_quantizer is None:
        if kind == "depthwise":
            return tf.keras.layers.DepthwiseConv2D(1, padding="same", use_bias=True, name=name)(x)
        return tf.keras.layers.SeparableConv2D(channels, 1, padding="same", use_bias=True, name=name)(x)

    input_q, kernel_q, constraint = _quantizers(bits, input_quantizer, kernel_quantizer)
    if kind == "depthwise":
        layer = lq.layers.QuantDepthwiseConv2D(
            1,
            padding="same",
            use_bias=True,
            pad_values=pad_values,
            input_quantizer=input_q,
            depthwise_quantizer=kernel_q,
            depthwise_constraint=constraint,
            name=name,
        )
    else:
        layer = lq.layers.QuantSeparableConv2D(
            channels,
            1,
            padding="same",
            use_bias=True,
            pad_values=pad_values,
            input_quantizer=input_q,
            depthwise_quantizer=kernel_q,
            pointwise_quantizer=kernel_q,
            depthwise_constraint=constraint,
            pointwise_constraint=constraint,
            name=name,
        )
    return layer(x)


# ---------------------------------------------------------------------------------------
# Registered blocks.


def _conv_unit_shape(shape: Shape, context: ShapeContext, **params: Any) -> Shape:
    return _check_conv(
        context,
        shape,
        filters=params["filters"],
        kernel_size=params["kernel_size"],
        strides=params["strides"],
        padding=params["padding"],
        groups=params["groups"],
        bits=params["bits"],
        input_quantizer=params["input_quantizer"],
        kernel_quantizer=params["kernel_quantizer"],
    )


@register_block("conv_unit", shape=_conv_unit_shape)
def conv_unit(
    x: Any,
    *,
    name: str,
    filters: int,
    kernel_size: int = 3,
    strides: int = 1,
    padding: Literal["same", "valid"] = "same",
    groups: int = 1,
    bits: int = 1,
    use_bias: bool = False,
    batch_norm: bool = True,
    activation: Literal["prelu", "relu", "none"] = "prelu",
    pad_values: float = 1.0,
    input_quantizer: Quantizer = None,
    kernel_quantizer: Quantizer = None,
) -> Any:
    """Quantized conv unit: QuantConv2D (or Conv2D at 32 bits), BatchNorm, PReLU."""
    return _unit(
        x,
        name=name,
        batch_norm=batch_norm,
        activation=activation,
        filters=filters,
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        groups=groups,
        bits=bits,
        use_bias=use_bias,
        pad_values=pad_values,
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
    )


@register_block("downsample", shape=_conv_unit_shape)
def downsample(
    x: Any,
    *,
    name: str,
    filters: int,
    kernel_size: int = 3,
    strides: int = 2,
    padding: Literal["same", "valid"] = "same",
    groups: int = 1,
    bits: int = 1,
    use_bias: bool = False,
    batch_norm: bool = True,
    activation: Literal["prelu", "relu", "none"] = "prelu",
    pad_values: float = 1.0,
    input_quantizer: Quantizer = None,
    kernel_quantizer: Quantizer = None,
) -> Any:
    """Plain downsampling conv: a conv unit with stride 2 by default."""
    return _unit(
        x,
        name=name,
        batch_norm=batch_norm,
        activation=activation,
        filters=filters,
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        groups=groups,
        bits=bits,
        use_bias=use_bias,
        pad_values=pad_values,
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
    )


def _head_shape(shape: Shape, context: ShapeContext, **params: Any) -> Shape:
    filters = params["filters"]
    quantizers = {key: params[key] for key in ("input_quantizer", "kernel_quantizer")}
    expanded = _check_conv(
        context, shape, filters=filters, kernel_size=1, strides=1, padding="same", groups=1,
        bits=params["expansion_bits"], prefix="expansion_", bits_key="expansion_bits",
        quantized=params["expansion_bits"] != 32,
    )

    if not params["reduction"]:
        raise ValueError("reduction", "must list at least one reduction conv")
    current = expanded
    for index, layer in enumerate(params["reduction"]):
        prefix = f"reduction[{index}]."
        unknown = set(layer) - {"kernel_size", "strides", "groups"}
        if unknown:
            raise ValueError(prefix + sorted(unknown)[0], "unknown key; allowed: kernel_size, strides, groups")
        current = _check_conv(
            context, current, filters=filters, kernel_size=layer.get("kernel_size", 1),
            strides=layer.get("strides", 1), padding="valid", groups=layer.get("groups", 1),
            bits=params["bits"], prefix=prefix, **quantizers,
        )

    if params["se_ratio"] <= 0 or filters % params["se_ratio"]:
        raise ValueError("se_ratio", f"must be a positive divisor of filters ({filters}), got {params['se_ratio']}")
    return _check_conv(
        context, expanded, filters=filters, kernel_size=params["entry_kernel_size"],
        strides=params["entry_strides"], padding="same", groups=params["entry_groups"],
        bits=params["bits"], prefix="entry_", **quantizers,
    )


@register_block("se_reduction_head", shape=_head_shape)
def se_reduction_head(
    x: Any,
    *,
    name: str,
    filters: int = 64,
    bits: int = 1,
    expansion_bits: int = 32,
    reduction: list[dict[str, int]] = THESIS_REDUCTION,
    se_ratio: int = 16,
    entry_kernel_size: int = 3,
    entry_strides: int = 2,
    entry_groups: int = 4,
    pad_values: float = 1.0,
    input_quantizer: Quantizer = None,
    kernel_quantizer: Quantizer = None,
) -> Any:
    """BinaryFaceNet head: 1x1 expansion, SE gate squeezed by strided quantized convs, entry conv.

    The squeeze is the ``reduction`` stack of valid-padded quantized conv units (the thesis
    uses 5x5/2, 3x3/3, 1x1/4, 1x1/5 with 4, 4, 2, 1 groups: 112 to 1). When the stack ends
    above 1x1, global average pooling finishes the squeeze.
    """
    tf, _ = _modules()
    quantized = dict(bits=bits, pad_values=pad_values, input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
    expanded = _unit(x, name=f"{name}_expand", filters=filters, kernel_size=1, padding="same", bits=expansion_bits)

    squeeze = expanded
    for index, layer in enumerate(reduction):
        squeeze = _unit(
            squeeze,
            name=f"{name}_reduce{index}",
            filters=filters,
            kernel_size=layer.get("kernel_size", 1),
            strides=layer.get("strides", 1),
            padding="valid",
            groups=layer.get("groups", 1),
            **quantized,
        )
    if squeeze.shape[1] != 1 or squeeze.shape[2] != 1:
        squeeze = tf.keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(squeeze)

    gate = tf.keras.layers.Conv2D(filters // se_ratio, 1, use_bias=True, name=f"{name}_se_reduce")(squeeze)
    gate = _prelu(gate, f"{name}_se_prelu")
    gate = tf.keras.layers.Conv2D(filters, 1, use_bias=True, activation="sigmoid", name=f"{name}_se_expand")(gate)
    gated = tf.keras.layers.Multiply(name=f"{name}_se_multiply")([expanded, gate])

    return _unit(
        gated,
        name=f"{name}_entry",
        filters=filters,
        kernel_size=entry_kernel_size,
        strides=entry_strides,
        padding="same",
        groups=entry_groups,
        **quantized,
    )


def _mixing_check(context: ShapeContext, shape: Shape, params: dict[str, Any], thesis_kind: str) -> None:
    kind = params["mixing"]
    if kind == "grouped":
        _check_conv(
            context, shape, filters=shape[2], kernel_size=1, strides=1, padding="same",
            groups=params["mixing_groups"], bits=params["bits"], prefix="mixing_",
            input_quantizer=params["input_quantizer"], kernel_quantizer=params["kernel_quantizer"],
        )
    elif params["bits"] != 32:
        _check_bits(context, params["bits"], params["input_quantizer"], params["kernel_quantizer"], "bits")
        if params["bits"] == 1:
            context.warn(
                "mixing",
                f"1-bit {thesis_kind} conv runs in float in LCE (quantize, dequantize, float conv); "
                "use mixing: grouped for a binary kernel",
            )


def _gfe_shape(shape: Shape, context: ShapeContext, **params: Any) -> Shape:
    if params["repeats"] < 1:
        raise ValueError("repeats", f"must be at least 1, got {params['repeats']}")
    _check_conv(
        context, shape, filters=shape[2], kernel_size=1, strides=1, padding="same", groups=1,
        bits=params["bits"], input_quantizer=params["input_quantizer"], kernel_quantizer=params["kernel_quantizer"],
    )
    _mixing_check(context, shape, params, "depthwise")
    return shape


@register_block("gfe", shape=_gfe_shape)
def gfe(
    x: Any,
    *,
    name: str,
    bits: int = 1,
    mixing: Literal["depthwise", "grouped"] = "depthwise",
    mixing_groups: int = 2,
    repeats: int = 1,
    pad_values: float = 1.0,
    input_quantizer: Quantizer = None,
    kernel_quantizer: Quantizer = None,
) -> Any:
    """Global feature extraction: residual 1x1 quantized convs at constant resolution and width.

    ``a = PReLU(qconv(x))``, ``j1 = PReLU(x + mix(a))``, ``j2 = PReLU(qconv(j1) + a)``,
    ``out = PReLU(j2 + mix(j2))``, where the bare 1x1 convs and ``mix`` keep a bias.
    """
    quantized = dict(bits=bits, pad_values=pad_values, input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
    mix = dict(kind=mixing, groups=mixing_groups, **quantized)
    for repeat in range(repeats):
        prefix = name if repeats == 1 else f"{name}{repeat}"
        channels = x.shape[-1]
        a = _prelu(_conv(x, name=f"{prefix}_conv1", filters=channels, kernel_size=1, use_bias=True, **quantized), f"{prefix}_prelu1")

        mixed = _mixing(a, name=f"{prefix}_mix1", **mix)
        j1 = _prelu(_add([x, mixed], f"{prefix}_add1"), f"{prefix}_prelu2")

        conv = _conv(j1, name=f"{prefix}_conv2", filters=channels, kernel_size=1, use_bias=True, **quantized)
        j2 = _prelu(_add([conv, a], f"{prefix}_add2"), f"{prefix}_prelu3")

        mixed = _mixing(j2, name=f"{prefix}_mix2", **mix)
        x = _prelu(_add([j2, mixed], f"{prefix}_add3"), f"{prefix}_prelu4")
    return x


def _lfe_shape(shape: Shape, context: ShapeContext, **params: Any) -> Shape:
    if params["repeats"] < 1:
        raise ValueError("repeats", f"must be at least 1, got {params['repeats']}")
    quantizers = {key: params[key] for key in ("input_quantizer", "kernel_quantizer")}
    for _ in range(params["repeats"]):
        shape = _check_conv(
            context, shape, filters=params["filters"], kernel_size=params["kernel_size"], strides=params["strides"],
            padding="same", groups=1, bits=params["bits"], **quantizers,
        )
        _mixing_check(context, shape, params, "separable")
    return shape


@register_block("lfe", shape=_lfe_shape)
def lfe(
    x: Any,
    *,
    name: str,
    filters: int = 64,
    bits: int = 1,
    kernel_size: int = 3,
    strides: int = 2,
    mixing: Literal["separable", "grouped"] = "separable",
    mixing_groups: int = 2,
    repeats: int = 1,
    pad_values: float = 1.0,
    input_quantizer: Quantizer = None,
    kernel_quantizer: Quantizer = None,
) -> Any:
    """Local feature extraction: a strided quantized conv unit and two residual 1x1 paths.

    ``a = unit(k, s)(x)``, ``b = PReLU(mix(a))``, ``c = BN(qconv(b))``, ``j = PReLU(a + c)``,
    ``d = unit(1x1)(j)``, ``out = PReLU(b + mix(d))``. Each of ``repeats`` repetitions divides
    the resolution by ``strides``.
    """
    quantized = dict(bits=bits, pad_values=pad_values, input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
    mix = dict(kind=mixing, groups=mixing_groups, **quantized)
    for repeat in range(repeats):
        prefix = name if repeats == 1 else f"{name}{repeat}"
        a = _unit(x, name=f"{prefix}_entry", filters=filters, kernel_size=kernel_size, strides=strides, **quantized)

        b = _prelu(_mixing(a, name=f"{prefix}_mix1", **mix), f"{prefix}_mix1_prelu")

        c = _unit(b, name=f"{prefix}_conv1", filters=filters, kernel_size=1, padding="valid", activation="none", **quantized)
        j = _prelu(_add([a, c], f"{prefix}_add1"), f"{prefix}_add1_prelu")

        d = _unit(j, name=f"{prefix}_conv2", filters=filters, kernel_size=1, padding="valid", **quantized)
        x = _prelu(_add([b, _mixing(d, name=f"{prefix}_mix2", **mix)], f"{prefix}_add2"), f"{prefix}_add2_prelu")
    return x


def _embedding_shape(shape: Shape, context: ShapeContext, **params: Any) -> Shape:
    quantizers = {key: params[key] for key in ("input_quantizer", "kernel_quantizer")}
    # A quantizer named at 32 bits still makes a QuantConv2D, so it is validated too.
    quantized = params["bits"] != 32 or any(value is not None for value in quantizers.values())
    common = dict(filters=params["filters"], groups=1, bits=params["bits"], quantized=quantized, **quantizers)
    reduced = _check_conv(
        context, shape, kernel_size=params["kernel_size"], strides=params["strides"], padding="valid", **common
    )
    if reduced[0] != reduced[1]:
        raise ValueError("kernel_size", f"the final conv needs a square map, got {reduced[0]}x{reduced[1]}")
    return _check_conv(context, reduced, kernel_size=reduced[0], strides=1, padding="valid", prefix="final_", **common)


@register_block("embedding", shape=_embedding_shape)
def embedding(
    x: Any,
    *,
    name: str,
    filters: int = 128,
    kernel_size: int = 3,
    strides: int = 3,
    bits: int = 32,
    pad_values: float = 1.0,
    input_quantizer: Quantizer = None,
    kernel_quantizer: Quantizer = None,
) -> Any:
    """Embedding block: a strided valid conv unit, then one covering the remaining map to 1x1."""
    common = dict(filters=filters, padding="valid", bits=bits, pad_values=pad_values,
                  input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer)
    x = _unit(x, name=f"{name}_conv1", kernel_size=kernel_size, strides=strides, **common)
    return _unit(x, name=f"{name}_conv2", kernel_size=(int(x.shape[1]), int(x.shape[2])), strides=1, **common)


def _output_head_shape(shape: Shape, context: ShapeContext, **params: Any) -> Shape:
    if params["units"] <= 0:
        raise ValueError("units", f"must be positive, got {params['units']}")
    return (1, 1, params["units"])


@register_block("output_head", shape=_output_head_shape)
def output_head(x: Any, *, name: str, units: int = 128, batch_norm: bool = True) -> Any:
    """Output head of the released model: BatchNorm, Flatten, Dense (no bias), BatchNorm."""
    tf, _ = _modules()
    if batch_norm:
        x = _batch_norm(x, f"{name}_bn1")
    x = tf.keras.layers.Flatten(name=f"{name}_flatten")(x)
    x = tf.keras.layers.Dense(units, use_bias=False, name=f"{name}_dense")(x)
    if batch_norm:
        x = _batch_norm(x, f"{name}_bn2")
    return x
