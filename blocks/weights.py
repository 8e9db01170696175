"""Load the BinaryFaceNet weights released with the thesis into models built from specs.

The released model (``binaryfacenet_ms1m_agedb30_0.751.h5``, L. S. Luevano Garcia,
Tecnologico de Monterrey, 2022) is a whole Keras HDF5 model whose layers carry generic
names (``quant_conv2d_7``). Two functions move its weights into models built here:

- :func:`load_released_weights` fills a model built from ``binaryfacenet_thesis.yaml`` by
  structure: the weighted layers of both models are paired in Keras' topological order
  and each pair must agree in layer type, weight shapes and the settings that change what
  a layer computes (kernel size, strides, padding, groups). The rebuilt model then gives
  the released embeddings.
- :func:`init_from_released` initialises a model built from another BinaryFaceNet spec,
  such as the deployable ``binaryfacenet.yaml``, from the thesis model by layer name. It
  copies every layer whose weights fit and rewrites quantized kernels so that the target's
  sign quantizer yields the released ±1 values. It also folds each 1x1 quantized separable
  conv into an ungrouped 1x1 quantized conv and widens 16-channel groups to 32 channels by
  duplicating inputs. The rest (regrouped convs and the BatchNorm right after them) stays
  freshly initialised.

Usage: ``python -m blocks.weights SPEC --released-weights H5 --output WEIGHTS.h5``
writes Keras weights that ``python -m blocks.inspect SPEC --weights WEIGHTS.h5`` loads.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import blocks  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from blocks.errors import BinaryFaceError

__all__ = [
    "InitReport",
    "THESIS_SPEC",
    "WeightsError",
    "build_released_twin",
    "init_from_released",
    "load_released_model",
    "load_released_weights",
    "main",
    "weighted_layers",
]

logger = logging.getLogger(__name__)

THESIS_SPEC = Path(__file__).resolve().parent / "specs" / "binaryfacenet_thesis.yaml"

# Layer settings that change what a layer computes. A pair that differs in one is a mismatch.
_STRUCTURAL_KEYS = ("kernel_size", "strides", "padding", "groups", "dilation_rate", "depth_multiplier", "use_bias")
# Smallest latent magnitude written into a re-signed kernel, so that its sign is unambiguous.
_MIN_LATENT = 1e-3
# DoReFa(k_bit=1) maps an activation to +1 only above 2**-24 * max|tanh(x)| (see init_from_released).
_DOREFA_THRESHOLD = 2.0**-24


class WeightsError(BinaryFaceError, ValueError):
    """Weights do not fit the model they are loaded into; nothing was loaded."""


@dataclass
class InitReport:
    """Record of :func:`init_from_released` for each weighted layer of the target model.

    ``copied`` lists layers that received the released weights unchanged. ``adapted`` maps
    layers that received them transformed to the transformation (re-signed kernel, folded
    separable conv). ``fresh`` maps layers left at their initialisation to the reason.
    """

    copied: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    fresh: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """Return one line with the three counts."""
        return f"{len(self.copied)} layers copied, {len(self.adapted)} adapted, {len(self.fresh)} left fresh"


def load_released_model(h5_path: str | Path) -> Any:
    """Load the released whole-model ``.h5`` file (larq layers, ``compile=False``)."""
    import larq  # noqa: F401  (registers larq's layers and quantizers for deserialisation)
    import tensorflow as tf

    path = Path(h5_path)
    if not path.is_file():
        raise WeightsError(f"released model not found: {path} (pass the path of the .h5 file)")
    try:
        return tf.keras.models.load_model(str(path), compile=False)
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot load {path} as a Keras model: {error}") from error


def weighted_layers(model: Any) -> list[Any]:
    """Return the layers of ``model`` that own weights, in Keras' topological order."""
    layers = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            layers.extend(weighted_layers(layer))
        elif layer.weights:
            layers.append(layer)
    return layers


def load_released_weights(model: Any, h5_path: str | Path | Any) -> list[tuple[str, str]]:
    """Copy the released weights into ``model``, a model built from the thesis spec.

    ``h5_path`` is the released ``.h5`` file or the Keras model already loaded from it.
    Weighted layers are paired in topological order. Every pair must have the same layer
    type, weight shapes and structural settings; otherwise ``WeightsError`` names the first
    mismatching pair and nothing is written. Returns the ``(model layer, released layer)``
    names in pair order.
    """
    released = h5_path if hasattr(h5_path, "layers") else load_released_model(h5_path)
    targets = weighted_layers(model)
    sources = weighted_layers(released)

    for index, (target, source) in enumerate(zip(targets, sources)):
        problem = _pair_mismatch(target, source)
        if problem:
            raise WeightsError(
                f"weighted layer {index} does not match: model layer {_describe(target)} vs released layer "
                f"{_describe(source)}: {problem}; build the model from {THESIS_SPEC.name}"
            )
    if len(targets) != len(sources):
        extra = targets[len(sources)] if len(targets) > len(sources) else sources[len(targets)]
        raise WeightsError(
            f"the model has {len(targets)} weighted layers but the released model has {len(sources)}; "
            f"first unpaired layer: {_describe(extra)}; build the model from {THESIS_SPEC.name}"
        )

    for target, source in zip(targets, sources):
        if _quantizer_configs(target) != _quantizer_configs(source):
            logger.warning(
                "%s uses other quantizers than the released %s, so its outputs will differ from the released model",
                target.name,
                source.name,
            )
        target.set_weights(source.get_weights())
    logger.info("loaded the released weights into %d layers of %s", len(targets), model.name)
    return [(target.name, source.name) for target, source in zip(targets, sources)]


def build_released_twin(h5_path: str | Path | Any) -> Any:
    """Build the thesis spec and load the released weights into it."""
    from blocks.build import build_model
    from blocks.spec import DeploymentWarning, load_spec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        spec = load_spec(THESIS_SPEC)
    model = build_model(spec)
    load_released_weights(model, h5_path)
    return model


def init_from_released(model: Any, h5_path: str | Path | Any, *, match_dorefa_threshold: bool = True) -> InitReport:
    """Initialise ``model`` from the released weights wherever its layers can take them.

    ``model`` is built from a BinaryFaceNet spec whose layer names match the thesis spec's
    (``head_expand_conv``, ``gfe_conv1``, ``lfe0_mix1``, ...). ``h5_path`` is the released
    ``.h5`` file, the Keras model loaded from it, or a model with the thesis' layer names
    that holds the weights to carry over (the thesis spec with the released weights, or an
    earlier deployable spec). Layers are matched by name:

    - same type and weight shapes: copied; a quantized kernel read through another kernel
      quantizer is re-signed (see below);
    - a 1x1 ``QuantSeparableConv2D`` into a 1x1 ungrouped ``QuantConv2D`` with bias: folded,
      because ``pointwise(depthwise(x))`` with ±1 kernels equals one 1x1 conv whose kernel
      is the product of the two signs;
    - a grouped conv with ``r`` times the released input channels per group (and the same
      groups, filters and kernel): its kernel is the released one repeated ``r`` times.
      The per-channel layers that produce its input (conv, BatchNorm, PReLU) repeat each
      released channel ``r`` times within a group, and the BatchNorm after it is rescaled.
      This is exact, and lets 16-channel groups, which LCE cannot run as binary kernels,
      become 32-channel groups;
    - a PReLU that the target drops between a BatchNorm and sign-quantized convs: folded
      into the BatchNorm (see ``_fold_dropped_prelus``);
    - anything else (a regrouped conv, a BatchNorm right after a fresh conv, a layer the
      thesis model lacks): left as initialised, with the reason in the report.

    Re-signing writes ``q * max(|w|, 1e-3)`` where ``q`` is the released kernel quantizer's
    ±1 output, so a sign quantizer reads exactly the released binary kernel (DoReFa maps 0
    and tiny positive weights to -1, a sign quantizer maps them to +1).

    On activations, DoReFa(k_bit=1, mode="weights") gives +1 only above a threshold of
    ``2**-24 * max|tanh(x)|`` (about 6e-8), because ``tanh(x) / (2 max) + 0.5`` rounds to 0.5
    below it. With ``match_dorefa_threshold`` the BatchNorm offset or conv bias that
    produces each such input is lowered by ``2**-24``, which moves the sign quantizer's
    threshold there for channels whose PReLU slope is not negative, and shifts the float
    paths by 6e-8.

    NOTE: a PReLU with a negative slope near zero (many released channels have slopes of
    -1e-5 and less) outputs tiny positive values, which DoReFa maps to -1 within a band
    around zero and to +1 outside it. No offset before a sign quantizer reproduces that
    band, so those bits differ: on LFW crops the sign-quantized models' embeddings have a
    mean cosine of about 0.92 to the released ones.
    """
    source_model = h5_path if _is_thesis_model(h5_path) else build_released_twin(h5_path)
    sources = {layer.name: layer for layer in weighted_layers(source_model)}
    report = InitReport()
    widened = _widened_convs(model, sources)
    channel_maps = {name: index for consumer in widened.values() for name, index in consumer["producers"].items()}
    rescaled = {consumer["batch_norm"]: consumer["ratio"] for consumer in widened.values() if consumer["batch_norm"]}

    for layer in weighted_layers(model):
        source = sources.get(layer.name)
        if source is None:
            report.fresh[layer.name] = "the thesis model has no layer of this name"
            continue

        inbound = _inbound_layer_names(layer)
        if type(layer).__name__ == "BatchNormalization" and inbound & set(report.fresh):
            report.fresh[layer.name] = f"follows the freshly initialised {sorted(inbound & set(report.fresh))[0]}"
            continue

        if layer.name in widened:
            reason = _copy_widened(layer, source, widened[layer.name]["ratio"], report)
        else:
            reason = _copy_layer(layer, source, report, channel_maps.get(layer.name), rescaled.get(layer.name))
        if reason:
            report.fresh[layer.name] = reason

    _fold_dropped_prelus(model, sources, channel_maps, report)
    if match_dorefa_threshold:
        _shift_sign_thresholds(model, sources, report)
    logger.info("initialised %s from the released weights: %s", model.name, report.summary())
    for name, reason in report.fresh.items():
        logger.info("left fresh: %s (%s)", name, reason)
    return report


def _fold_dropped_prelus(model: Any, sources: dict[str, Any], channel_maps: dict[str, Any], report: InitReport) -> None:
    """Fold a released PReLU that the target drops into the BatchNorm before it.

    This is exact when the target's BatchNorm feeds only sign-quantized convs, because a sign
    reads ``PReLU(v)`` as ``v`` for a slope of 0 or more, and as the constant +1 for a negative
    slope (the output is then positive). Channels with a negative slope get a BatchNorm that
    outputs 1.
    """
    import numpy as np

    target_names = {layer.name for layer in model.layers}
    for layer in weighted_layers(model):
        source = sources.get(layer.name)
        if type(layer).__name__ != "BatchNormalization" or source is None or layer.name in report.fresh:
            continue
        followers = _outbound_layers(source)
        if len(followers) != 1 or type(followers[0]).__name__ != "PReLU" or followers[0].name in target_names:
            continue
        consumers = _outbound_layers(layer)
        if not consumers or not all(_is_sign(getattr(consumer, "input_quantizer", None)) for consumer in consumers):
            logger.debug("%s feeds a float layer, so the released %s cannot be dropped", layer.name, followers[0].name)
            continue

        slopes = followers[0].get_weights()[0].reshape(-1)
        if layer.name in channel_maps:
            slopes = slopes[channel_maps[layer.name]]
        gamma, beta, mean, variance = layer.get_weights()
        negative = slopes < 0
        layer.set_weights([np.where(negative, 0.0, gamma), np.where(negative, 1.0, beta), mean, variance])
        note = f"{followers[0].name} folded in ({int(negative.sum())} channels with a negative slope output 1)"
        report.adapted[layer.name] = f"{report.adapted[layer.name]}, {note}" if layer.name in report.adapted else note
        if layer.name in report.copied:
            report.copied.remove(layer.name)


def _shift_sign_thresholds(model: Any, sources: dict[str, Any], report: InitReport) -> None:
    """Lower the offset feeding each sign-quantized input that the released model read with DoReFa."""
    shifted: set[str] = set()
    for layer in weighted_layers(model):
        source = sources.get(layer.name)
        if source is None or layer.name in report.fresh:
            continue
        if not (_is_dorefa_binary(getattr(source, "input_quantizer", None)) and _is_sign(getattr(layer, "input_quantizer", None))):
            continue
        owner = _offset_owner(_inbound_layers(layer)[0])
        if owner is None:
            logger.debug("no BatchNorm or bias feeds %s; its sign threshold stays at 0", layer.name)
            continue
        if owner.name in shifted or owner.name in report.fresh:
            continue
        values = owner.get_weights()
        index = 1 if type(owner).__name__ == "BatchNormalization" else len(values) - 1
        values[index] = values[index] - _DOREFA_THRESHOLD
        owner.set_weights(values)
        shifted.add(owner.name)
        note = f"offset lowered by 2**-24 to match DoReFa's threshold at {layer.name}"
        report.adapted[owner.name] = f"{report.adapted[owner.name]}, {note}" if owner.name in report.adapted else note
        if owner.name in report.copied:
            report.copied.remove(owner.name)


def _offset_owner(layer: Any) -> Any:
    """Return the BatchNorm or biased conv whose output offset sets ``layer``'s sign, or None."""
    kind = type(layer).__name__
    if kind == "PReLU":
        return _offset_owner(_inbound_layers(layer)[0])
    if kind == "BatchNormalization" and layer.center:
        return layer
    if kind == "Add":
        for branch in _inbound_layers(layer):
            owner = _offset_owner_of_branch(branch)
            if owner is not None:
                return owner
        return None
    if getattr(layer, "use_bias", False):
        return layer
    return None


def _offset_owner_of_branch(layer: Any) -> Any:
    # Only a branch used by nothing but this Add may carry the shift, because any other
    # consumer would see it too.
    if len(getattr(layer, "_outbound_nodes", [])) != 1:
        return None
    kind = type(layer).__name__
    if kind == "BatchNormalization" and layer.center:
        return layer
    if kind != "PReLU" and getattr(layer, "use_bias", False):
        return layer
    return None


def _is_dorefa_binary(quantizer: Any) -> bool:
    return type(quantizer).__name__ == "DoReFa" and getattr(quantizer, "precision", None) == 1


def _is_sign(quantizer: Any) -> bool:
    return type(quantizer).__name__ in ("SteSign", "ApproxSign", "SwishSign")


def _widened_convs(model: Any, sources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Find quantized convs whose groups read ``ratio`` times the released input channels.

    Such a conv reproduces the released one exactly when each released input channel
    arrives ``ratio`` times in a row within its group. Its kernel is then the released kernel
    repeated along the input axis, and its output is ``ratio`` times the released one. The
    producers of its input (PReLU, BatchNorm, then the conv that makes the channels) get
    the matching channel order. Returns, per such conv, the ratio, the producers' channel
    index maps and the BatchNorm that follows it.
    """
    import numpy as np

    widened: dict[str, dict[str, Any]] = {}
    for layer in weighted_layers(model):
        source = sources.get(layer.name)
        ratio = _widening_ratio(layer, source)
        if ratio is None:
            continue
        per_group = int(source.input_shape[-1]) // int(source.get_config().get("groups", 1) or 1)
        channels = np.arange(int(layer.input_shape[-1]))
        index = (channels // (ratio * per_group)) * per_group + channels % per_group
        producers = _producer_chain(layer)
        if producers is None:
            logger.debug("%s reads widened channels that no per-channel chain produces; left fresh", layer.name)
            continue
        followers = [child for child in _outbound_layers(layer) if type(child).__name__ == "BatchNormalization"]
        widened[layer.name] = {
            "ratio": ratio,
            "producers": {producer.name: index for producer in producers},
            "batch_norm": followers[0].name if followers else None,
        }
    return widened


def _widening_ratio(layer: Any, source: Any) -> int | None:
    if source is None or type(layer).__name__ != type(source).__name__ or not type(layer).__name__.endswith("Conv2D"):
        return None
    config, source_config = layer.get_config(), source.get_config()
    for key in ("kernel_size", "strides", "filters", "groups"):
        if _plain(config.get(key)) != _plain(source_config.get(key)):
            return None
    channels, source_channels = int(layer.input_shape[-1]), int(source.input_shape[-1])
    if channels <= source_channels or channels % source_channels:
        return None
    return channels // source_channels


def _producer_chain(layer: Any) -> list[Any] | None:
    """Return the per-channel layers from ``layer``'s input back to the conv making it, or None."""
    chain = []
    current = _inbound_layers(layer)[0]
    while type(current).__name__ in ("PReLU", "BatchNormalization"):
        chain.append(current)
        current = _inbound_layers(current)[0]
    if not type(current).__name__.endswith("Conv2D") or int(current.get_config().get("groups", 1) or 1) != 1:
        return None
    return [*chain, current]


def _copy_widened(layer: Any, source: Any, ratio: int, report: InitReport) -> str | None:
    import numpy as np

    values = source.get_weights()
    values[0] = np.concatenate([values[0]] * ratio, axis=2)
    kernel_quantizer = getattr(source.weights[0], "quantizer", None)
    if kernel_quantizer is not None and _config(kernel_quantizer) != _config(getattr(layer.weights[0], "quantizer", None)):
        values[0] = _resign(values[0], kernel_quantizer)
    layer.set_weights(values)
    report.adapted[layer.name] = f"released kernel repeated {ratio}x along the input channels (duplicated inputs)"
    return None


def _copy_layer(
    layer: Any, source: Any, report: InitReport, channel_map: Any = None, output_ratio: int | None = None
) -> str | None:
    """Copy ``source`` into ``layer`` and record it, or return why it cannot.

    ``channel_map`` reorders and duplicates the output channels of a producer of widened
    inputs. ``output_ratio`` rescales the moving statistics of a BatchNorm after a widened
    conv, whose input is that many times the released one.
    """
    layer_type, source_type = type(layer).__name__, type(source).__name__
    if source_type == "QuantSeparableConv2D" and layer_type == "QuantConv2D":
        return _fold_separable(layer, source, report)
    if layer_type != source_type:
        return f"type {layer_type} differs from the released {source_type}"

    values = source.get_weights()
    notes = []
    if channel_map is not None:
        values = [value[..., channel_map] for value in values]
        notes.append("channels duplicated for a widened grouped conv")
    if output_ratio is not None:
        # Weights are gamma, beta, moving mean, moving variance. The new variance keeps
        # (variance + epsilon) exactly proportional, so the normalised output is unchanged.
        values[2] = values[2] * output_ratio
        values[3] = output_ratio**2 * (values[3] + layer.epsilon) - layer.epsilon
        notes.append(f"moving statistics scaled for a {output_ratio}x larger input")
    target_shapes = [tuple(weight.shape) for weight in layer.get_weights()]
    shapes = [tuple(value.shape) for value in values]
    if target_shapes != shapes:
        return f"weight shapes {target_shapes} differ from the released {shapes}"

    for index, (target_variable, source_variable) in enumerate(zip(layer.weights, source.weights)):
        target_quantizer = getattr(target_variable, "quantizer", None)
        source_quantizer = getattr(source_variable, "quantizer", None)
        if source_quantizer is None or _config(target_quantizer) == _config(source_quantizer):
            continue
        values[index] = _resign(values[index], source_quantizer)
        notes.append(f"{source_variable.name.split('/')[-1].split(':')[0]} re-signed")
    layer.set_weights(values)

    if notes:
        report.adapted[layer.name] = ", ".join(notes)
    else:
        report.copied.append(layer.name)
    return None


def _fold_separable(layer: Any, source: Any, report: InitReport) -> str | None:
    import numpy as np

    config = layer.get_config()
    source_config = source.get_config()
    if tuple(config["kernel_size"]) != (1, 1) or tuple(source_config["kernel_size"]) != (1, 1):
        return "only 1x1 separable convs fold into a 1x1 conv"
    if int(config.get("groups", 1)) != 1:
        return f"a separable conv folds only into an ungrouped conv, this one has groups={config['groups']}"
    if not config["use_bias"] or not source_config["use_bias"]:
        return "folding needs a bias on both layers"
    depthwise, pointwise, bias = source.get_weights()
    if layer.get_weights()[0].shape != pointwise.shape:
        return f"kernel shape {layer.get_weights()[0].shape} differs from the released pointwise {pointwise.shape}"

    depthwise_sign = _quantized(depthwise, source.weights[0].quantizer).reshape(1, 1, -1, 1)
    pointwise_sign = _quantized(pointwise, source.weights[1].quantizer)
    signs = depthwise_sign * pointwise_sign
    kernel = (signs * np.maximum(np.abs(pointwise), _MIN_LATENT)).astype(pointwise.dtype)
    layer.set_weights([kernel, bias])
    report.adapted[layer.name] = "folded from the released 1x1 separable conv (depthwise sign times pointwise sign)"
    return None


def _resign(latent: Any, quantizer: Any) -> Any:
    import numpy as np

    signs = _quantized(latent, quantizer)
    return (signs * np.maximum(np.abs(latent), _MIN_LATENT)).astype(latent.dtype)


def _quantized(latent: Any, quantizer: Any) -> Any:
    import numpy as np
    import tensorflow as tf

    if quantizer is None:
        return np.sign(latent)
    values = np.asarray(quantizer(tf.constant(latent)))
    if not np.all(np.isin(values, (-1.0, 1.0))):
        raise WeightsError(f"kernel quantizer {type(quantizer).__name__} is not 1-bit: it gives values other than ±1")
    return values


def _pair_mismatch(target: Any, source: Any) -> str:
    target_type, source_type = type(target).__name__, type(source).__name__
    if target_type != source_type:
        return f"types {target_type} and {source_type} differ"
    target_shapes = [tuple(weight.shape) for weight in target.weights]
    source_shapes = [tuple(weight.shape) for weight in source.weights]
    if target_shapes != source_shapes:
        return f"weight shapes {target_shapes} and {source_shapes} differ"
    target_config, source_config = target.get_config(), source.get_config()
    for key in _STRUCTURAL_KEYS:
        if key in target_config and key in source_config and _plain(target_config[key]) != _plain(source_config[key]):
            return f"{key} {_plain(target_config[key])} and {_plain(source_config[key])} differ"
    return ""


def _describe(layer: Any) -> str:
    shapes = ", ".join("x".join(str(v) for v in weight.shape) for weight in layer.weights)
    return f"{layer.name!r} ({type(layer).__name__}, weights {shapes})"


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _config(quantizer: Any) -> Any:
    if quantizer is None:
        return None
    config = dict(quantizer.get_config())
    config.pop("name", None)
    return type(quantizer).__name__, sorted(config.items())


def _quantizer_configs(layer: Any) -> list[Any]:
    names = ("input_quantizer", "kernel_quantizer", "depthwise_quantizer", "pointwise_quantizer")
    return [_config(getattr(layer, name, None)) for name in names]


def _inbound_layers(layer: Any) -> list[Any]:
    parents: list[Any] = []
    for node in getattr(layer, "_inbound_nodes", []):
        inbound = node.inbound_layers
        parents.extend(inbound if isinstance(inbound, list) else [inbound])
    return parents


def _outbound_layers(layer: Any) -> list[Any]:
    return [node.outbound_layer for node in getattr(layer, "_outbound_nodes", [])]


def _inbound_layer_names(layer: Any) -> set[str]:
    return {parent.name for parent in _inbound_layers(layer)}


def _is_thesis_model(candidate: Any) -> bool:
    return hasattr(candidate, "layers") and any(layer.name == "head_expand_conv" for layer in candidate.layers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blocks.weights",
        description=(
            "Write Keras weights for a BinaryFaceNet spec from the released .h5 model: loaded by structure "
            "for the thesis spec, initialised by layer name for any other."
        ),
    )
    parser.add_argument("spec", type=Path, help="spec YAML file (blocks/specs/binaryfacenet_thesis.yaml or a variant)")
    parser.add_argument("--released-weights", type=Path, required=True, help="the released whole-model .h5 file")
    parser.add_argument("--output", type=Path, required=True, help="where to write the Keras weights (.h5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from blocks.build import build_model
    from blocks.spec import DeploymentWarning, load_spec

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeploymentWarning)
            spec = load_spec(args.spec)
        model = build_model(spec)
        if args.spec.resolve() == THESIS_SPEC or spec.name == "binaryfacenet_thesis":
            pairs = load_released_weights(model, args.released_weights)
            print(f"loaded the released weights into {len(pairs)} layers")
        else:
            report = init_from_released(model, args.released_weights)
            print(report.summary())
            for name, reason in report.fresh.items():
                print(f"  fresh: {name}: {reason}")
    except BinaryFaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(args.output))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
