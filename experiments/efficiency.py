"""Efficiency of BinaryFaceNet and its baselines as LCE deploys them, beside the thesis' table.

Goal: regenerate the efficiency table of the BinaryFaceNet thesis (binary and float MACs,
parameters, model size, seconds per image, FPS). It covers the thesis BinaryFaceNet, the
deployable BinaryFaceNet, QuickNet and BinaryDenseNet-28/37/45 at 112x112 with a 128-d
embedding. It adds what the thesis could not show: the share of MACs that really runs in
LCE's binary kernels (``LceBconv2d``) after conversion. It also measures the latency at the
interpreter's default options and at its fastest correct options, all in one run on one
target.

The binary-kernel limit of a model is its ``LceBconv2d`` MACs divided by the binary MAC
rate the same interpreter reaches on the reference model (QuickNet), plus the model's float
part. A float part is measured on a copy of the model whose binary convs are replaced by a
strided slice of their input (and whose BatchNorm right after them, which LCE fuses into
the binary conv, by nothing), with the options that made the model fastest. The reference
rate is its binary MACs over its latency minus its float part. It is an estimate: the
stand-ins still copy their output, and LceQuantize ops count as binary-kernel time.

Expected cost: about 20 minutes on a shared 2-core x86 host (each model is converted twice,
about 10-70 s each, and timed at up to five option sets; the thesis model at default
options takes about 0.2 s per run). ``--quick`` takes about a minute.

Expected result (measured on a 2-core AMD EPYC host, load average under 2): the thesis model
runs 0 % of its MACs in LceBconv2d, 102 ms at default options and 6.7 ms with XNNPACK. The
deployable BinaryFaceNet runs 95.3 % there, 2.22-2.45 ms with indirect BGEMM and XNNPACK (about
3x faster than the released model), 1.44-1.54x its binary-kernel limit of 1.54-1.59 ms: its 1x1 convs with
64 channels and 32-channel groups reach about 70 G binary MACs per second, QuickNet's 3x3
convs about 120 G. The BinaryDenseNets stay within 0.9-1.0x of their limits.

Command (writes runs/efficiency/<time>/efficiency.{json,md} and appends a section to
experiments/RESULTS.md)::

    .venv/bin/python -m experiments.efficiency --config experiments/efficiency.yaml
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import experiments  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from experiments._records import (
    experiment_main,
    ExperimentError,
    append_results,
    command_line,
    describe_machine,
    iso_date,
    load_config,
    machine_info,
    resolve_path,
    timestamp,
    write_outputs,
)

__all__ = ["SCHEMA", "float_part_model", "main", "measure_models", "run"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "efficiency.yaml"

# Sections and keys of a config, with their defaults. ``models`` is a list of mappings with
# ``name``, ``spec`` and optionally ``role`` (released or deployable), ``weights`` (Keras
# weights), ``released`` (the released .h5, loaded into the thesis spec or used to initialise
# another BinaryFaceNet spec) and ``thesis`` (the thesis' figures).
SCHEMA: dict[str, Any] = {
    "models": [],
    "target": {"spec": "local", "num_threads": 1, "warmup_runs": 5, "num_runs": 20, "rounds": 3},
    "limit": {"reference": "QuickNet", "max_ratio": 1.5},
    "output": {"folder": "runs/efficiency"},
}
MODEL_KEYS = {"name", "spec", "role", "released", "weights", "thesis"}
THESIS_KEYS = ("binary_macs", "float_macs", "size_mb", "params", "seconds", "fps")
QUICK_TARGET = {"warmup_runs": 1, "num_runs": 3, "rounds": 1}


def float_part_model(model: Any, binary_layers: set[str]) -> Any:
    """Return a copy of ``model`` whose layers in ``binary_layers`` are replaced by strided slices.

    Each replaced conv becomes a slice of its input with the conv's output shape (channels
    repeated or cut to the filter count). A BatchNorm that reads only such a conv becomes an
    identity, because LCE fuses that BatchNorm into the binary conv. The copy computes
    nothing useful, but it times what runs outside the binary kernels.
    """
    import tensorflow as tf

    fused = {
        node.outbound_layer.name
        for layer in model.layers
        if layer.name in binary_layers
        for node in layer._outbound_nodes
        if type(node.outbound_layer).__name__ == "BatchNormalization"
    }

    def clone(layer: Any) -> Any:
        if layer.name in binary_layers:
            return _stand_in(layer)
        if layer.name in fused:
            return tf.keras.layers.Lambda(lambda x: x, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    return tf.keras.models.clone_model(model, clone_function=clone)


def _stand_in(layer: Any) -> Any:
    import tensorflow as tf

    height, width, filters = (int(value) for value in layer.output_shape[1:])
    stride_height, stride_width = layer.get_config()["strides"]

    def pick(x: Any) -> Any:
        y = x[:, : (height - 1) * stride_height + 1 : stride_height, : (width - 1) * stride_width + 1 : stride_width, :]
        channels = int(x.shape[-1])
        if filters > channels:
            y = tf.tile(y, [1, 1, 1, -(-filters // channels)])
        return y[..., :filters]

    return tf.keras.layers.Lambda(pick, name=layer.name)


def _build(entry: Mapping[str, Any]) -> tuple[Any, Any]:
    """Build the entry's spec and load its ``weights``, or load or initialise the ``released`` ones.

    Weights matter to the option choice: the interpreter's option sets must agree on the
    output, and DoReFa signs near zero flip differently between them for untrained weights.
    """
    from blocks.build import build_model
    from blocks.spec import DeploymentWarning, load_spec
    from blocks.weights import THESIS_SPEC, init_from_released, load_released_weights

    path = resolve_path(entry["spec"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        spec = load_spec(path)
    model = build_model(spec, seed=0)
    released = resolve_path(entry.get("released"))
    weights = resolve_path(entry.get("weights"))
    if weights is not None:
        model.load_weights(str(weights))
    elif released is not None and path.resolve() == THESIS_SPEC:
        load_released_weights(model, released)
    elif released is not None:
        init_from_released(model, released)
    return spec, model


def _measure(flatbuffer: bytes, name: str, target_settings: Mapping[str, Any], options: Any) -> dict[str, Any]:
    """Time ``flatbuffer`` with ``options``; return the latency record or the reason it failed."""
    from targets import get_target
    from targets.base import TargetError

    settings = {key: value for key, value in target_settings.items() if key != "spec"}
    try:
        with get_target(target_settings["spec"], options=options, **settings) as target:
            latency = target.measure(flatbuffer, name=name)
    except TargetError as error:
        logger.warning("%s with %s options failed: %s", name, options if isinstance(options, str) else "forced", error)
        return {"error": str(error)}
    return {
        "median_ms": latency.median_ms,
        "spread_ms": latency.spread_ms,
        "min_ms": latency.min_ms,
        "max_ms": latency.max_ms,
        "runs": latency.runs,
        "fps": 1000.0 / latency.median_ms,
        "option_set": latency.options.get("option_set"),
        "options": {key: latency.options.get(key) for key in ("use_indirect_bgemm", "use_xnnpack", "num_threads")},
        "candidates": latency.options.get("candidates", {}),
    }


def measure_model(entry: Mapping[str, Any], target_settings: Mapping[str, Any]) -> dict[str, Any]:
    """Build, convert, audit and time one model; return its row of the table."""
    from blocks.convert import audit_flatbuffer, convert_model
    from blocks.stats import model_stats

    started = time.perf_counter()
    spec, model = _build(entry)
    stats = model_stats(model)
    flatbuffer, messages = convert_model(model)
    audit = audit_flatbuffer(flatbuffer, model, messages=messages)
    logger.info("%s: converted, %.1f %% of MACs in LceBconv2d", entry["name"], 100 * audit.binary_kernel_mac_share)

    default = _measure(flatbuffer, entry["name"], target_settings, "default")
    best = _measure(flatbuffer, entry["name"], target_settings, "fastest")

    binary_layers = {kernel.layer for kernel in audit.binary_kernels if kernel.layer}
    unmatched = sum(1 for kernel in audit.binary_kernels if not kernel.layer)
    if unmatched:
        logger.warning("%s: %d binary kernels match no Keras layer; the float part includes them", entry["name"], unmatched)
    float_part: dict[str, Any] = {"error": "not measured: no option set ran the model"}
    if "error" not in best and not binary_layers:
        float_part = {**best, "same_as": "best"}
    elif "error" not in best:
        surrogate, _ = convert_model(float_part_model(model, binary_layers))
        forced = {key: bool(value) for key, value in best["options"].items() if key != "num_threads"}
        float_part = _measure(surrogate, f"{entry['name']} float part", target_settings, forced)

    row = {
        "name": entry["name"],
        "role": entry.get("role"),
        "spec": str(entry["spec"]),
        "params": stats.params,
        "binary_macs": stats.binary_macs,
        "float_macs": stats.float_macs,
        "other_macs": stats.other_macs,
        "size_bytes": stats.size_bytes,
        "flatbuffer_bytes": audit.flatbuffer_bytes,
        "n_ops": sum(audit.op_counts.values()),
        "op_counts": audit.op_counts,
        "binary_kernel_macs": audit.binary_kernel_macs,
        "binary_kernel_mac_share": audit.binary_kernel_mac_share,
        "float_fallbacks": [fallback.__dict__ for fallback in audit.float_fallbacks],
        "default": default,
        "best": best,
        "float_part": float_part,
        "thesis": entry.get("thesis"),
        "seconds": time.perf_counter() - started,
    }
    logger.info(
        "%s: default %s, best %s, float part %s",
        entry["name"],
        _ms(default),
        _ms(best),
        _ms(float_part),
    )
    return row


def add_limits(rows: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    """Add each row's binary-kernel limit; return the reference's binary MAC rate."""
    by_name = {row["name"]: row for row in rows}
    if reference not in by_name:
        raise ExperimentError(f"limit.reference {reference!r} is not among the models: {', '.join(by_name)}")
    ref = by_name[reference]
    if "error" in ref["best"] or "error" in ref["float_part"]:
        logger.warning("the reference %s was not measured; no binary-kernel limits", reference)
        return {"reference": reference, "macs_per_second": None}
    binary_ms = ref["best"]["median_ms"] - ref["float_part"]["median_ms"]
    if binary_ms <= 0:
        logger.warning("the reference's float part is not faster than the whole model; no binary-kernel limits")
        return {"reference": reference, "macs_per_second": None}
    rate = ref["binary_kernel_macs"] / (binary_ms / 1000.0)

    for row in rows:
        if "error" in row["best"] or "error" in row["float_part"]:
            continue
        limit_ms = row["binary_kernel_macs"] / rate * 1000.0 + row["float_part"]["median_ms"]
        row["limit_ms"] = limit_ms
        row["limit_ratio"] = row["best"]["median_ms"] / limit_ms
    return {"reference": reference, "macs_per_second": rate, "binary_ms": binary_ms}


def measure_models(config: Mapping[str, Any], *, quick: bool = False, checkpoint: Path | None = None) -> dict[str, Any]:
    """Measure every model of ``config`` in one run; return the JSON-ready document.

    With ``checkpoint``, the rows measured so far are written there after each model, so that
    a run that fails late keeps its measurements.
    """
    target_settings = dict(config["target"])
    if quick:
        target_settings.update(QUICK_TARGET)
    rows = []
    for entry in config["models"]:
        rows.append(measure_model(entry, target_settings))
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text(json.dumps({"target": target_settings, "models": rows}, indent=2, default=str))
    rate = add_limits(rows, config["limit"]["reference"])
    return {
        "experiment": "efficiency",
        "finished_at": timestamp(),
        "machine": machine_info(),
        "target": target_settings,
        "limit": {**rate, "max_ratio": config["limit"]["max_ratio"]},
        "models": rows,
    }


def _check_models(models: Any, source: str) -> None:
    if not isinstance(models, list) or not models:
        raise ExperimentError(f"{source}: section 'models' must list at least one model")
    for index, entry in enumerate(models):
        if not isinstance(entry, dict) or "name" not in entry or "spec" not in entry:
            raise ExperimentError(f"{source}: models[{index}] must be a mapping with 'name' and 'spec'")
        unknown = sorted(set(entry) - MODEL_KEYS)
        if unknown:
            raise ExperimentError(f"{source}: unknown key models[{index}].{unknown[0]}; allowed: {', '.join(sorted(MODEL_KEYS))}")
        for key in ("spec", "released", "weights"):
            path = resolve_path(entry.get(key))
            if key in entry and (path is None or not path.is_file()):
                raise ExperimentError(f"{source}: models[{index}].{key} not found: {path}")
        thesis = entry.get("thesis")
        if thesis is not None and (not isinstance(thesis, dict) or set(thesis) - set(THESIS_KEYS)):
            raise ExperimentError(f"{source}: models[{index}].thesis must be a mapping with keys among {', '.join(THESIS_KEYS)}")
        for key, value in (thesis or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                # PyYAML reads 184.9e6 as a string (YAML 1.1 wants 1.849e+8).
                raise ExperimentError(
                    f"{source}: models[{index}].thesis.{key} must be a number, got {value!r}; write 184900000, not 184.9e6"
                )


# ---------------------------------------------------------------------------------------
# Report.


def _ms(record: Mapping[str, Any]) -> str:
    if "error" in record:
        return "fails"
    return f"{record['median_ms']:.2f} ({record['spread_ms']:.2f})"


def _fps(record: Mapping[str, Any]) -> str:
    return "-" if "error" in record else f"{record['fps']:.0f}"


def _mega(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e9:.2f} G" if value >= 1e9 else f"{value / 1e6:.1f} M"


def _options(record: Mapping[str, Any]) -> str:
    return "-" if "error" in record else str(record["option_set"])


def format_tables(document: Mapping[str, Any]) -> str:
    """Return the measured table, the thesis' table and the summary as Markdown."""
    rows = document["models"]
    lines = [
        "| model | binary MACs | float MACs | params | size MB | flatbuffer MB | ops | MACs in LceBconv2d "
        "| default ms (spread) | default FPS | best ms (spread) | best FPS | best options | limit ms | best / limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        limit = f"{row['limit_ms']:.2f}" if "limit_ms" in row else "-"
        ratio = f"{row['limit_ratio']:.2f}" if "limit_ratio" in row else "-"
        lines.append(
            f"| {row['name']} | {_mega(row['binary_macs'])} | {_mega(row['float_macs'])} | {row['params']:,} "
            f"| {row['size_bytes'] / 1e6:.2f} | {row['flatbuffer_bytes'] / 1e6:.2f} | {row['n_ops']} "
            f"| {100 * row['binary_kernel_mac_share']:.1f} % | {_ms(row['default'])} | {_fps(row['default'])} "
            f"| {_ms(row['best'])} | {_fps(row['best'])} | {_options(row['best'])} | {limit} | {ratio} |"
        )

    with_thesis = [row for row in rows if row.get("thesis")]
    if with_thesis:
        lines += [
            "",
            "The thesis' figures (Jetson Nano 2 GB, one Cortex-A57 thread, LCE benchmark tool):",
            "",
            "| model | 1-bit MACs | 32-bit MACs | size MB | params | s/img | FPS |",
            "|---|---|---|---|---|---|---|",
        ]
    for row in with_thesis:
        thesis = row["thesis"]
        lines.append(
            f"| {row['name']} | {_mega(thesis.get('binary_macs'))} | {_mega(thesis.get('float_macs'))} "
            f"| {thesis.get('size_mb', '-')} | {_mega(thesis.get('params'))} | {thesis.get('seconds', '-')} "
            f"| {thesis.get('fps', '-')} |"
        )

    lines += ["", *summary_lines(document)]
    return "\n".join(lines)


def summary_lines(document: Mapping[str, Any]) -> list[str]:
    """Return the sentences comparing the deployable model with the released one and its limit."""
    rows = {row.get("role"): row for row in document["models"] if row.get("role")}
    limit = document["limit"]
    lines = []
    if limit.get("macs_per_second"):
        lines.append(
            f"- Binary MAC rate on {limit['reference']}: {limit['macs_per_second'] / 1e9:.0f} G binary MACs per second "
            f"({limit['binary_ms']:.2f} ms in binary kernels)."
        )
    released, deployable = rows.get("released"), rows.get("deployable")
    if released and deployable and "error" not in released["best"] and "error" not in deployable["best"]:
        speedup = released["best"]["median_ms"] / deployable["best"]["median_ms"]
        lines.append(
            f"- Deployable vs released, each at its fastest correct options: {deployable['best']['median_ms']:.2f} ms "
            f"({deployable['best']['option_set']}) vs {released['best']['median_ms']:.2f} ms "
            f"({released['best']['option_set']}), {speedup:.1f}x faster."
        )
    if deployable and "limit_ratio" in deployable:
        verdict = "within" if deployable["limit_ratio"] <= limit["max_ratio"] else "outside"
        lines.append(
            f"- Deployable vs its binary-kernel limit: {deployable['best']['median_ms']:.2f} ms vs "
            f"{deployable['limit_ms']:.2f} ms ({deployable['float_part']['median_ms']:.2f} ms float part), "
            f"{deployable['limit_ratio']:.2f}x, {verdict} the {limit['max_ratio']}x bound."
        )
    return lines


def record_section(document: Mapping[str, Any], command: str) -> str:
    """Return the RESULTS.md section: heading, command, machine and tables."""
    target = document["target"]
    return "\n".join(
        [
            f"## Efficiency of BinaryFaceNet and the baselines ({iso_date(document['finished_at'])})",
            "",
            f"Command: `{command}`",
            "",
            describe_machine(document["machine"]),
            f"Target `{target['spec']}`, {target['num_threads']} thread, {target['warmup_runs']} warm-up runs, "
            f"{target['rounds']} rounds of {target['num_runs']} runs; median is the smallest round median and spread "
            "the range of round medians, in ms per 112x112 image. Default: the interpreter's default options. "
            "Best: the fastest option set whose output agrees with the reference set.",
            "",
            format_tables(document),
        ]
    )


def run(config_path: Path, *, quick: bool = False, record: bool = True, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Run the experiment from a config file; return the document that was written."""
    config = load_config(config_path, SCHEMA)
    _check_models(config["models"], str(config_path))
    logger.info("efficiency: %d models on target %s", len(config["models"]), config["target"]["spec"])
    folder = resolve_path(config["output"]["folder"]) / timestamp()
    document = measure_models(config, quick=quick, checkpoint=folder / "partial.json")
    document["config"] = str(config_path)
    command = command_line("experiments.efficiency", argv)
    document["command"] = command

    markdown = record_section(document, command)
    json_path, markdown_path = write_outputs(folder, "efficiency", document, markdown)
    document["outputs"] = {"json": str(json_path), "markdown": str(markdown_path)}
    if record and not quick:
        append_results(markdown)
    return document


def main(argv: Sequence[str] | None = None) -> int:
    return experiment_main(
        argv,
        prog="python -m experiments.efficiency",
        description="Measure MACs, size, binary-kernel share and latency of BinaryFaceNet and its baselines.",
        quick_help="1 warm-up and 3 timed runs per setting, no RESULTS.md section",
        default_config=DEFAULT_CONFIG,
        run=run,
        report=lambda document: f"{format_tables(document)}\n\nwrote {document['outputs']['json']} and {document['outputs']['markdown']}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
