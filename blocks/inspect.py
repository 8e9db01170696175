"""Print a spec's statistics and its LCE audit, per layer and in total.

Usage: ``python -m blocks.inspect SPEC [--json] [--weights H5] [--tflite OUT]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import blocks  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from blocks.errors import BinaryFaceError
from blocks.files import write_atomically
from blocks.spec import DeploymentWarning, Spec, load_spec

__all__ = ["Inspection", "inspect_spec", "main"]


@dataclass
class Inspection:
    """Statistics, audit and interpreter allocation results of one spec."""

    spec: Spec
    stats: Any
    audit: Any
    allocation: dict[str, str | None]
    flatbuffer: bytes = field(default=b"", repr=False)

    def to_dict(self) -> dict[str, Any]:
        audit = self.audit.to_dict()
        return {
            "spec": self.spec.name,
            "source": self.spec.source,
            "params": self.stats.params,
            "binary_macs": self.stats.binary_macs,
            "float_macs": self.stats.float_macs,
            "other_macs": self.stats.other_macs,
            "total_macs": self.stats.total_macs,
            "size_bytes": self.stats.size_bytes,
            "flatbuffer_bytes": self.audit.flatbuffer_bytes,
            "lce_ops": audit["op_counts"],
            "n_ops": audit["n_ops"],
            "binary_kernel_macs": self.audit.binary_kernel_macs,
            "binary_kernel_mac_share": self.audit.binary_kernel_mac_share,
            "float_fallbacks": audit["float_fallbacks"],
            "binary_kernels": audit["binary_kernels"],
            "converter_messages": self.audit.converter_messages,
            "allocation": self.allocation,
            "deployment_warnings": [f"{path}: {message}" for path, message in self.spec.warnings],
            "layers": [layer.__dict__ | {"output_shape": list(layer.output_shape)} for layer in self.stats.layers],
        }


def inspect_spec(spec: Spec, *, weights: str | Path | None = None) -> Inspection:
    """Build, convert and audit ``spec``; ``weights`` optionally loads a Keras weights file first."""
    from blocks.build import build_model
    from blocks.convert import audit_flatbuffer, check_allocation, convert_model
    from blocks.stats import model_stats

    model = build_model(spec)
    if weights is not None:
        import tensorflow as tf

        try:
            model.load_weights(str(weights))
        except (OSError, ValueError, tf.errors.OpError) as error:
            cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BinaryFaceError(f"cannot load weights {weights} into spec {spec.name!r}: {cause}") from error
    stats = model_stats(model)
    flatbuffer, messages = convert_model(model)
    audit = audit_flatbuffer(flatbuffer, model, messages=messages)
    allocation = check_allocation(flatbuffer)
    return Inspection(spec, stats, audit, allocation, flatbuffer)


def format_report(inspection: Inspection) -> str:
    """Return the human-readable per-layer table and totals."""
    stats, audit = inspection.stats, inspection.audit
    binary_layers = {kernel.layer for kernel in audit.binary_kernels if kernel.layer}
    fallbacks = {fallback.layer: fallback.reason for fallback in audit.float_fallbacks}
    lines = [f"spec {inspection.spec.name} ({inspection.spec.source or 'in memory'})", ""]
    header = f"{'layer':<28} {'type':<22} {'output':<14} {'params':>9} {'binary MACs':>13} {'float MACs':>12}  runs as"
    lines += [header, "-" * len(header)]
    for layer in stats.layers:
        if not (layer.params or layer.binary_macs or layer.float_macs or layer.other_macs):
            continue
        runs_as = ""
        if layer.name in binary_layers:
            runs_as = "LceBconv2d"
        elif layer.name in fallbacks:
            runs_as = "float: " + fallbacks[layer.name]
        elif layer.binary_macs == 0 and (layer.float_macs or layer.other_macs):
            runs_as = "float"
        shape = "x".join(str(v) for v in layer.output_shape[1:])
        lines.append(
            f"{layer.name:<28} {layer.type:<22} {shape:<14} {layer.params:>9,} "
            f"{layer.binary_macs:>13,} {layer.float_macs + layer.other_macs:>12,}  {runs_as}"
        )

    ops = ", ".join(f"{name} {count}" for name, count in audit.op_counts.items())
    allocation = ", ".join(
        f"{name}: {'ok' if cause is None else 'fails'}" for name, cause in inspection.allocation.items()
    )
    lines += [
        "",
        f"parameters            {stats.params:,}",
        f"binary MACs           {stats.binary_macs:,}",
        f"float MACs            {stats.float_macs:,}",
    ]
    if stats.other_macs:
        lines.append(f"2-8 bit MACs          {stats.other_macs:,}")
    lines += [
        f"model size            {stats.size_bytes / 1e6:.3f} MB (weights at their precision)",
        f"flatbuffer size       {audit.flatbuffer_bytes / 1e6:.3f} MB",
        f"LCE ops               {sum(audit.op_counts.values())}: {ops}",
        f"MACs in LceBconv2d    {audit.binary_kernel_macs:,} = {100 * audit.binary_kernel_mac_share:.1f} % of all MACs",
        f"declared 1-bit, float {len(audit.float_fallbacks)} layers",
        f"AllocateTensors()     {allocation}",
    ]
    for fallback in audit.float_fallbacks:
        lines.append(f"  {fallback.layer}: {fallback.reason}")
    for message in audit.converter_messages:
        lines.append(f"converter: {message}")
    return "\n".join(lines)


def check_output_path(path: Path, inputs: Sequence[Path]) -> None:
    """Raise `BinaryFaceError` when ``path`` cannot take the flatbuffer, before any conversion."""
    if not path.name or path.name in (".", ".."):
        raise BinaryFaceError(f"invalid --tflite {str(path)!r}: it names no file; give a path such as model.tflite")
    if path.is_dir():
        raise BinaryFaceError(f"cannot write {path}: it is a folder; give a file path inside it")
    for source in inputs:
        if path.resolve() == source.resolve():
            raise BinaryFaceError(f"cannot write {path}: it is an input of this command")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BinaryFaceError(f"cannot write {path}: {parent} is not a folder")
            break


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blocks.inspect",
        description="Print a block spec's statistics and the audit of its LCE conversion.",
    )
    parser.add_argument("spec", type=Path, help="spec YAML file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--weights", type=Path, help="Keras weights (.h5) to load before converting")
    parser.add_argument("--tflite", type=Path, help="also write the converted LCE flatbuffer to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeploymentWarning)
            spec = load_spec(args.spec)
        if args.tflite is not None:
            check_output_path(args.tflite, [args.spec, *([args.weights] if args.weights else [])])
        inspection = inspect_spec(spec, weights=args.weights)
        if args.tflite is not None:
            try:
                write_atomically(args.tflite, inspection.flatbuffer)
            except OSError as error:
                raise BinaryFaceError(f"cannot write {args.tflite}: {error.strerror}") from error
            print(f"wrote {args.tflite} ({len(inspection.flatbuffer):,} bytes)", file=sys.stderr)
    except BinaryFaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps(inspection.to_dict(), indent=2))
    else:
        print(format_report(inspection))
        for path, message in spec.warnings:
            print(f"warning: {path}: {message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
