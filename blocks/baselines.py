"""Blocks of the binary baselines that BinaryFaceNet is compared with: QuickNet and BinaryDenseNet.

The architectures are those of larq-zoo 2.4.0 (``larq_zoo.sota.QuickNet``,
``larq_zoo.literature.BinaryDenseNet28/37/45``) without their classification top, so that a
spec of stem and section blocks plus ``output_head`` gives the face-embedding networks of the
BinaryFaceNet thesis. Layer types, settings and initialisers follow larq-zoo, so larq's
summary counts the same MACs and parameters.

- QuickNet (``larq_zoo.sota.quicknet``): a float stem, then sections of residual binary 3x3
  convs (sign quantizers clipped at 1.25, padding with ones). Between sections a float
  transition widens the channels: ReLU, max pooling, a fixed blur (binomial) depthwise conv
  with stride 2 and a float 1x1 conv.
- BinaryDenseNet (``larq_zoo.literature.densenet``, after Bethge et al., arXiv:1906.08637): a
  float 7x7 stem with max pooling, then sections of densely connected binary 3x3 convs (sign
  quantizers clipped at 1.3, zero padding). Each conv concatenates ``growth_rate`` channels,
  and float 1x1 transitions divide the channels by ``reduction`` after max pooling.
"""

from __future__ import annotations

from typing import Any

from blocks.primitives import conv_output_size
from blocks.registry import ShapeContext, register_block

__all__ = ["blur_kernel", "transition_filters"]

Shape = tuple[int, int, int]

_BLUR_WEIGHTS = {2: (1.0, 1.0), 3: (1.0, 2.0, 1.0), 5: (1.0, 4.0, 6.0, 4.0, 1.0)}


def blur_kernel(kernel_size: int, channels: int) -> Any:
    """Return the (k, k, channels, 1) depthwise kernel of a normalised binomial blur.

    QuickNet's transitions use it for anti-aliased downsampling (larq-zoo cites Zhang,
    arXiv:1904.11486). ``kernel_size`` is 2, 3 or 5.
    """
    import numpy as np

    if kernel_size not in _BLUR_WEIGHTS:
        raise ValueError(f"blur kernel size must be one of {sorted(_BLUR_WEIGHTS)}, got {kernel_size}")
    weights = np.array(_BLUR_WEIGHTS[kernel_size])
    kernel = np.outer(weights, weights)
    kernel /= kernel.sum()
    return np.repeat(kernel[:, :, None, None], channels, axis=2).astype(np.float32)


def _modules() -> tuple[Any, Any]:
    import larq as lq
    import tensorflow as tf

    return tf, lq


def _check_positive(**values: int | float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(key, f"must be positive, got {value}")


# ---------------------------------------------------------------------------------------
# QuickNet.


def _quicknet_stem_shape(shape: Shape, context: ShapeContext, **params: Any) -> Shape:
    filters = params["filters"]
    _check_positive(filters=filters)
    if filters % 4:
        raise ValueError("filters", f"must be a multiple of 4 (the first conv has filters / 4), got {filters}")
    height, width, _ = shape
    for _ in range(2):
        height, width = conv_output_size(height, 3, 2, "same"), conv_output_size(width, 3, 2, "same")
    return (height, width, filters)


@register_block("quicknet_stem", shape=_quicknet_stem_shape)
def quicknet_stem(x: Any, *, name: str, filters: int = 64) -> Any:
    """QuickNet stem: float 3x3/2 conv to filters/4, ReLU, 3x3/2 depthwise conv, float 1x1 conv."""
    tf, lq = _modules()
    x = lq.layers.QuantConv2D(
        filters // 4, 3, strides=2, padding="same", use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv"
    )(x)
    x = tf.keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = tf.keras.layers.Activation("relu", name=f"{name}_relu")(x)

    x = lq.layers.QuantDepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name=f"{name}_depthwise")(x)
    x = tf.keras.layers.BatchNormalization(scale=False, center=False, name=f"{name}_depthwise_bn")(x)

    x = lq.layers.QuantConv2D(filters, 1, use_bias=False, kernel_initializer="he_normal", name=f"{name}_pointwise")(x)
    return tf.keras.layers.BatchNormalization(name=f"{name}_pointwise_bn")(x)


def _quicknet_section_shape(shape: Shape, context: ShapeContext, **params: Any) -> Shape:
    filters, strides = params["filters"], params["strides"]
    _check_positive(filters=filters, repeats=params["repeats"], strides=strides, clip_value=params["clip_value"])
    height, width, channels = shape
    if filters == channels:
        return shape
    if strides > min(height, width):
        raise ValueError("strides", f"the transition's {strides}x{strides} max pooling is larger than its {height}x{width} input")
    # Max pooling with pool size ``strides`` and stride 1 (valid), then a stride-``strides`` conv.
    height, width = height - strides + 1, width - strides + 1
    return (conv_output_size(height, 3, strides, "same"), conv_output_size(width, 3, strides, "same"), filters)


@register_block("quicknet_section", shape=_quicknet_section_shape)
def quicknet_section(
    x: Any,
    *,
    name: str,
    filters: int,
    repeats: int = 4,
    strides: int = 2,
    clip_value: float = 1.25,
) -> Any:
    """QuickNet section: a transition when the width changes, then ``repeats`` residual binary convs.

    The transition is ReLU, ``strides`` x ``strides`` max pooling with stride 1, a fixed
    3x3 blur depthwise conv with stride ``strides`` and a float 1x1 conv to ``filters``.
    Each residual block is a binary 3x3 conv (sign quantizers clipped at ``clip_value``,
    padding with ones) with a ReLU, BatchNorm and the skip connection.
    """
    tf, lq = _modules()
    if int(x.shape[-1]) != filters:
        x = tf.keras.layers.Activation("relu", name=f"{name}_transition_relu")(x)
        x = tf.keras.layers.MaxPool2D(pool_size=strides, strides=1, name=f"{name}_transition_pool")(x)
        channels = int(x.shape[-1])
        blur = tf.keras.layers.DepthwiseConv2D(
            3,
            strides=strides,
            padding="same",
            use_bias=False,
            trainable=False,
            depthwise_initializer=tf.keras.initializers.Constant(blur_kernel(3, channels)),
            name=f"{name}_transition_blur",
        )
        x = blur(x)
        x = lq.layers.QuantConv2D(
            filters, 1, use_bias=False, kernel_initializer="glorot_normal", name=f"{name}_transition_conv"
        )(x)
        x = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_transition_bn")(x)

    for index in range(repeats):
        residual = x
        x = lq.layers.QuantConv2D(
            filters,
            3,
            padding="same",
            pad_values=1.0,
            activation="relu",
            use_bias=False,
            input_quantizer=lq.quantizers.SteSign(clip_value=clip_value),
            kernel_quantizer=lq.quantizers.SteSign(clip_value=clip_value),
            kernel_constraint=lq.constraints.WeightClip(clip_value=clip_value),
            kernel_initializer="glorot_normal",
            name=f"{name}_block{index}_conv",
        )(x)
        x = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_block{index}_bn")(x)
        x = tf.keras.layers.Add(name=f"{name}_block{index}_add")([x, residual])
    return x


# ---------------------------------------------------------------------------------------
# BinaryDenseNet.


def _densenet_stem_shape(shape: Shape, context: ShapeContext, **params: Any) -> Shape:
    _check_positive(filters=params["filters"], kernel_size=params["kernel_size"], strides=params["strides"])
    height, width, _ = shape
    height = conv_output_size(conv_output_size(height, params["kernel_size"], params["strides"], "same"), 3, 2, "same")
    width = conv_output_size(conv_output_size(width, params["kernel_size"], params["strides"], "same"), 3, 2, "same")
    return (height, width, params["filters"])


@register_block("densenet_stem", shape=_densenet_stem_shape)
def densenet_stem(x: Any, *, name: str, filters: int = 64, kernel_size: int = 7, strides: int = 2) -> Any:
    """BinaryDenseNet stem for inputs of 50 px and more: float conv, BatchNorm, ReLU, 3x3/2 max pooling."""
    tf, _ = _modules()
    x = tf.keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    x = tf.keras.layers.Activation("relu", name=f"{name}_relu")(x)
    return tf.keras.layers.MaxPool2D(3, strides=2, padding="same", name=f"{name}_pool")(x)


def transition_filters(channels: int, reduction: float) -> int:
    """Return the width after a BinaryDenseNet transition: ``channels // reduction``, rounded to 32."""
    return round(channels // reduction / 32) * 32


def _dense_section_shape(shape: Shape, context: ShapeContext, **params: Any) -> Shape:
    _check_positive(
        repeats=params["repeats"],
        growth_rate=params["growth_rate"],
        dilation_rate=params["dilation_rate"],
        clip_value=params["clip_value"],
    )
    height, width, channels = shape
    channels += params["repeats"] * params["growth_rate"]
    reduction = params["reduction"]
    if reduction is None:
        return (height, width, channels)

    if reduction <= 0:
        raise ValueError("reduction", f"must be positive, got {reduction}")
    filters = transition_filters(channels, reduction)
    if filters <= 0:
        raise ValueError("reduction", f"leaves {channels} channels with {filters} filters after rounding to 32")
    if params["pool"]:
        if min(height, width) < 2:
            raise ValueError("pool", f"2x2 max pooling needs an input of at least 2x2, got {height}x{width}")
        height, width = height // 2, width // 2
    return (height, width, filters)


@register_block("dense_section", shape=_dense_section_shape)
def dense_section(
    x: Any,
    *,
    name: str,
    repeats: int,
    growth_rate: int = 64,
    dilation_rate: int = 1,
    clip_value: float = 1.3,
    reduction: float | None = None,
    pool: bool = True,
) -> Any:
    """BinaryDenseNet section: ``repeats`` dense binary convs, then a transition when ``reduction`` is set.

    Each dense block is BatchNorm and a binary 3x3 conv to ``growth_rate`` channels (sign
    quantizers clipped at ``clip_value``, zero padding), concatenated to its input. The
    transition is BatchNorm, 2x2 max pooling when ``pool``, ReLU and a float 1x1 conv to
    ``round(channels // reduction / 32) * 32`` channels. Without ``reduction`` the section
    ends the network: BatchNorm and ReLU.
    """
    tf, lq = _modules()
    for index in range(repeats):
        y = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_block{index}_bn")(x)
        y = lq.layers.QuantConv2D(
            growth_rate,
            3,
            padding="same",
            dilation_rate=dilation_rate,
            use_bias=False,
            input_quantizer=lq.quantizers.SteSign(clip_value=clip_value),
            kernel_quantizer=lq.quantizers.SteSign(clip_value=clip_value),
            kernel_constraint=lq.constraints.WeightClip(clip_value=clip_value),
            kernel_initializer="glorot_normal",
            name=f"{name}_block{index}_conv",
        )(y)
        x = tf.keras.layers.Concatenate(name=f"{name}_block{index}_concat")([x, y])

    x = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_end_bn")(x)
    if reduction is None:
        return tf.keras.layers.Activation("relu", name=f"{name}_end_relu")(x)

    if pool:
        x = tf.keras.layers.MaxPool2D(2, strides=2, name=f"{name}_transition_pool")(x)
    x = tf.keras.layers.Activation("relu", name=f"{name}_transition_relu")(x)
    filters = transition_filters(int(x.shape[-1]), reduction)
    return tf.keras.layers.Conv2D(
        filters, 1, use_bias=False, kernel_initializer="he_normal", name=f"{name}_transition_conv"
    )(x)
