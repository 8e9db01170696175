"""Model statistics (parameters, binary and float MACs, size) as larq's ``models.summary`` counts them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LayerStats", "ModelStats", "model_stats"]


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one Keras layer; MACs are per image (batch 1)."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    binary_macs: int
    float_macs: int
    other_macs: int
    size_bytes: float
    input_bits: int | None


@dataclass(frozen=True)
class ModelStats:
    """Totals over a model; ``macs_by_bits`` maps an operand precision to its MAC count.

    ``size_bytes`` counts each weight at its stored precision (1 bit for a binarized kernel)
    as larq's summary does; BatchNorm's moving statistics are folded as larq folds them.
    """

    params: int
    binary_macs: int
    float_macs: int
    other_macs: int
    macs_by_bits: dict[int, int]
    size_bytes: float
    layers: list[LayerStats] = field(default_factory=list)

    @property
    def total_macs(self) -> int:
        return self.binary_macs + self.float_macs + self.other_macs

    @property
    def binary_mac_share(self) -> float:
        """Share of MACs whose operands are both 1-bit, as declared by the Keras model."""
        return self.binary_macs / self.total_macs if self.total_macs else 0.0

    def to_dict(self, *, layers: bool = True) -> dict[str, Any]:
        data = asdict(self)
        data["macs_by_bits"] = {str(bits): count for bits, count in self.macs_by_bits.items()}
        data["total_macs"] = self.total_macs
        data["binary_mac_share"] = self.binary_mac_share
        if not layers:
            del data["layers"]
        return data


def model_stats(model: Any) -> ModelStats:
    """Return the statistics of ``model`` from larq's ``ModelProfile``.

    Nested models are flattened into their layers.
    """
    import larq as lq

    profile = lq.models.ModelProfile(model)
    layers = []
    macs_by_bits: dict[int, int] = {}
    for layer_profile in _leaf_profiles(profile):
        per_bits: dict[int, int] = {}
        for op in getattr(layer_profile, "op_profiles", []):
            per_bits[op.precision] = per_bits.get(op.precision, 0) + int(op.n)
        for bits, count in per_bits.items():
            macs_by_bits[bits] = macs_by_bits.get(bits, 0) + count
        shape = layer_profile.output_shape
        layers.append(
            LayerStats(
                name=layer_profile.name,
                type=type(layer_profile._layer).__name__,
                output_shape=tuple(int(v) for v in shape) if shape and not isinstance(shape[0], list) else (),
                params=int(layer_profile.weight_count()),
                binary_macs=per_bits.get(1, 0),
                float_macs=per_bits.get(32, 0),
                other_macs=sum(count for bits, count in per_bits.items() if bits not in (1, 32)),
                size_bytes=layer_profile.memory / 8,
                input_bits=layer_profile.input_precision,
            )
        )

    return ModelStats(
        params=int(profile.weight_count()),
        binary_macs=macs_by_bits.get(1, 0),
        float_macs=macs_by_bits.get(32, 0),
        other_macs=sum(count for bits, count in macs_by_bits.items() if bits not in (1, 32)),
        macs_by_bits=dict(sorted(macs_by_bits.items())),
        size_bytes=profile.memory / 8,
        layers=layers,
    )


def _leaf_profiles(profile: Any) -> list[Any]:
    leaves = []
    for child in profile.layer_profiles:
        if hasattr(child, "layer_profiles"):
            leaves.extend(_leaf_profiles(child))
        else:
            leaves.append(child)
    return leaves
