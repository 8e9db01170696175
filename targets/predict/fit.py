"""Measure models robustly on a target and fit a latency table to the results.

On a shared host one 30-run median of a model can move by 20-30 % between calls. A burst of
load only ever slows a run down, so the robust figure here is the minimum over several
measurements. They are taken in interleaved passes: each pass measures every model once, in
a fresh random order, so that a burst hits different models in different passes.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from targets.base import Latency, ModelRejected, Target
from targets.predict.features import INVOKE_FEATURE, GraphFeatures
from targets.predict.opprofile import OpProfile
from targets.predict.table import LatencyTable, accuracy_report, fit_weights, model_rows, residual_features, today

__all__ = [
    "fit_from_latencies",
    "fit_from_op_profiles",
    "host_clocks",
    "measure_interleaved",
    "op_profile_rows",
    "robust_ms",
]

logger = logging.getLogger(__name__)


def measure_interleaved(
    target: Target,
    models: Mapping[str, bytes],
    *,
    passes: int,
    seed: int = 0,
    on_measured: Callable[[str, Latency], None] | None = None,
) -> tuple[dict[str, list[Latency]], dict[str, str]]:
    """Measure every model ``passes`` times, one model after another within each pass.

    Returns the latencies of each model, in pass order, and the models the target rejected
    with the reason (they are not measured again). `TargetUnavailable` and transient
    failures propagate.
    """
    if passes < 1:
        raise ValueError(f"passes must be at least 1, got {passes}")
    generator = random.Random(seed)
    results: dict[str, list[Latency]] = {name: [] for name in models}
    rejected: dict[str, str] = {}
    for number in range(passes):
        order = [name for name in models if name not in rejected]
        generator.shuffle(order)
        logger.info("measuring pass %d of %d: %d models", number + 1, passes, len(order))
        for name in order:
            try:
                latency = target.measure(models[name], name=name)
            except ModelRejected as error:
                rejected[name] = str(error)
                results.pop(name, None)
                logger.warning("%s: rejected by the target, left out: %s", name, error)
                continue
            results[name].append(latency)
            if on_measured is not None:
                on_measured(name, latency)
    return results, rejected


def robust_ms(latencies: Sequence[Latency]) -> float:
    """Return the smallest ``median_ms`` of several measurements of one model."""
    if not latencies:
        raise ValueError("robust_ms needs at least one measurement, got none")
    return min(latency.median_ms for latency in latencies)


def host_clocks() -> dict[str, Any]:
    """Read this host's CPU clocks where Linux exposes them: MHz from /proc/cpuinfo, kHz from cpufreq."""
    clocks: dict[str, Any] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            current = [float(line.split(":")[1]) for line in cpuinfo if line.startswith("cpu MHz")]
        if current:
            clocks["cpu_mhz"] = current
    except (OSError, ValueError, IndexError):
        pass
    cpufreq = Path("/sys/devices/system/cpu/cpu0/cpufreq")
    for name in ("scaling_governor", "scaling_max_freq", "cpuinfo_max_freq"):
        try:
            value = (cpufreq / name).read_text(encoding="utf-8").strip()
        except OSError:
            continue
        clocks[name if name == "scaling_governor" else f"{name}_khz"] = value
    return clocks


def software_versions() -> dict[str, str]:
    """Return the versions of the packages behind a local measurement."""
    versions = {"python": platform.python_version()}
    for package in ("larq-compute-engine", "tensorflow", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def fit_from_latencies(
    name: str,
    graphs: Sequence[GraphFeatures],
    latencies_ms: Sequence[float],
    *,
    provenance: Mapping[str, Any] | None = None,
    measure_with: Mapping[str, Any] | None = None,
) -> LatencyTable:
    """Fit a table to whole-model latencies (one per graph), minimising relative error.

    The returned table's ``fit`` section contains the training error and a leave-one-out
    estimate of the error on unseen models (when there are at least 5 models).
    """
    rows = model_rows(graphs)
    weights = fit_weights(rows, latencies_ms)
    table = LatencyTable(
        name=name,
        weights_ms=weights,
        provenance=dict(provenance or {}),
        measure_with=dict(measure_with or {}),
    )
    predicted = [table.predict(graph).latency_ms for graph in graphs]
    table.fit = {
        "method": "non-negative least squares on whole-model latencies, rows weighted by 1/latency",
        "samples": len(rows),
        "features": len(weights),
        "training": accuracy_report(predicted, list(latencies_ms)),
    }
    if len(rows) >= 5:
        table.fit["leave_one_out"] = accuracy_report(_leave_one_out(rows, list(latencies_ms)), list(latencies_ms))
    table.provenance.setdefault("fitted_at", today())
    table.provenance["samples"] = len(rows)
    return table


def _leave_one_out(rows: list[dict[str, float]], latencies_ms: list[float]) -> list[float]:
    predicted = []
    for held_out in range(len(rows)):
        others = [index for index in range(len(rows)) if index != held_out]
        weights = fit_weights([rows[index] for index in others], [latencies_ms[index] for index in others])
        predicted.append(sum(weights.get(feature, 0.0) * amount for feature, amount in rows[held_out].items()))
    return predicted


def op_profile_rows(graph: GraphFeatures, profile: OpProfile) -> tuple[list[dict[str, float]], list[float]]:
    """Turn one op profile of ``graph`` into fitting rows and their times in milliseconds.

    A profile row whose node index and type match an op of the graph becomes that op's row.
    The remaining ops (those run by a delegate, whose nodes the profiler reports per
    partition) form one row together, timed by the unmatched profile rows. When the
    profile carries the tool's average inference time, the time outside the nodes is a
    row of its own for ``model.invoke``.
    """
    by_index = {op.index: op for op in graph.ops}
    rows: list[dict[str, float]] = []
    times: list[float] = []
    matched: set[int] = set()
    unmatched_ms = 0.0
    for timing in profile.ops:
        op = by_index.get(timing.index) if timing.index is not None else None
        if op is not None and op.op_type == timing.node_type and op.index not in matched:
            matched.add(op.index)
            rows.append(dict(op.features))
            times.append(timing.avg_ms)
        else:
            unmatched_ms += timing.avg_ms
    remaining = set(by_index) - matched
    if remaining:
        rows.append(residual_features(graph, remaining))
        times.append(unmatched_ms)
    elif unmatched_ms > 0:
        logger.warning("op profile has %.3f ms in nodes that match no op of the model; ignored", unmatched_ms)
    if profile.inference_avg_ms is not None and profile.inference_avg_ms > profile.total_ms:
        rows.append({INVOKE_FEATURE: 1.0})
        times.append(profile.inference_avg_ms - profile.total_ms)
    return rows, times


def fit_from_op_profiles(
    name: str,
    graphs: Sequence[GraphFeatures],
    profiles: Sequence[OpProfile],
    *,
    provenance: Mapping[str, Any] | None = None,
    measure_with: Mapping[str, Any] | None = None,
) -> LatencyTable:
    """Fit a table to per-op timings, one profile per graph.

    Every row of a model is weighted by the inverse of that model's latency, so that a
    row's error counts relative to the model it belongs to.
    """
    if len(graphs) != len(profiles):
        raise ValueError(f"got {len(graphs)} models but {len(profiles)} op profiles")
    rows: list[dict[str, float]] = []
    times: list[float] = []
    row_weights: list[float] = []
    totals: list[float] = []
    for graph, profile in zip(graphs, profiles):
        rows_of_model, times_of_model = op_profile_rows(graph, profile)
        total = profile.inference_avg_ms if profile.inference_avg_ms is not None else profile.total_ms
        if total <= 0:
            raise ValueError("an op profile has no time in it (all nodes 0 ms)")
        rows.extend(rows_of_model)
        times.extend(times_of_model)
        row_weights.extend([1.0 / total] * len(rows_of_model))
        totals.append(total)
    weights = fit_weights(rows, times, row_weights=row_weights)
    table = LatencyTable(
        name=name,
        weights_ms=weights,
        provenance=dict(provenance or {}),
        measure_with=dict(measure_with or {}),
    )
    predicted = [table.predict(graph).latency_ms for graph in graphs]
    table.fit = {
        "method": "non-negative least squares on per-op timings, rows weighted by 1/model latency",
        "samples": len(graphs),
        "rows": len(rows),
        "features": len(weights),
        "training": accuracy_report(predicted, totals),
    }
    table.provenance.setdefault("fitted_at", today())
    table.provenance["samples"] = len(graphs)
    return table


def load_snapshot() -> dict[str, Any]:
    """Return the host's load averages and time, recorded around measurements."""
    return {"time": time.time(), "loadavg": list(os.getloadavg())}

