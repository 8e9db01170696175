"""Latency tables: per-feature costs of one device, fitted to measurements, stored as JSON.

A table prices each op feature of `targets.predict.features` in milliseconds per unit (per
MAC, per element, per op). The predicted latency of a model is the sum of its features times
their prices. Prices are fitted by non-negative least squares, so that no op can make a
model faster, either

- to whole-model latencies (rows are the feature sums of each model), which is what a
  Python interpreter without per-op timers allows, or
- to per-op timings from ``lce_benchmark_model --enable_op_profiling=true`` (rows are single
  ops; ops merged into a delegate partition form one row together).

Rows are weighted by the inverse of their model's latency, so the fit minimises relative
error, the quantity the ±10 % accuracy figure counts.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from targets.base import TargetUnavailable
from targets.predict.features import INVOKE_FEATURE, GraphFeatures, graph_features, sum_features

__all__ = [
    "PROFILES_DIR",
    "TABLE_FORMAT",
    "LatencyTable",
    "Prediction",
    "TableError",
    "accuracy_report",
    "fit_weights",
    "nnls",
    "resolve_table",
]

logger = logging.getLogger(__name__)

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
TABLE_FORMAT = "binaryface-latency-table/1"


class TableError(TargetUnavailable, ValueError):
    """A latency table file is missing, unreadable or invalid; nothing can be predicted with it."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Predicted latency of one model, in milliseconds per image.

    Attributes:
        latency_ms: the sum of ``by_feature_ms``.
        by_feature_ms: the cost of each priced feature summed over the model's ops.
        by_op_type_ms: the same cost summed by op type (``model.invoke`` under its own name).
        unpriced: features of the model that the table has no price for, with their
            amounts. They add nothing to ``latency_ms``, so it is an underestimate when
            this is not empty.
    """

    latency_ms: float
    by_feature_ms: dict[str, float]
    by_op_type_ms: dict[str, float]
    unpriced: dict[str, float]


@dataclasses.dataclass
class LatencyTable:
    """Per-feature prices of one device, with where and how they were measured.

    Attributes:
        name: the device or target name (``"local"``, ``"jetson-nano"``).
        weights_ms: milliseconds per unit of each feature.
        provenance: how the measurements were made: the tool and its version, CPU model,
            clocks when known, date, options, number of samples, what was fitted.
        fit: the fit's method and its error on the training samples.
        measure_with: the target spec and overrides that measure what this table
            predicts (``{"spec": "local", "overrides": {...}}``), or empty when unknown.
    """

    name: str
    weights_ms: dict[str, float]
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    fit: dict[str, Any] = dataclasses.field(default_factory=dict)
    measure_with: dict[str, Any] = dataclasses.field(default_factory=dict)

    def predict(self, model: bytes | GraphFeatures) -> Prediction:
        """Predict the latency of a flatbuffer, or of its already read features.

        Raises:
            ModelRejected: ``model`` is bytes that are not a readable TFLite flatbuffer.
        """
        graph = model if isinstance(model, GraphFeatures) else graph_features(bytes(model))
        by_feature: dict[str, float] = {}
        by_op_type: dict[str, float] = {}
        unpriced: dict[str, float] = {}
        for op in graph.ops:
            for feature, amount in op.features.items():
                weight = self.weights_ms.get(feature)
                if weight is None:
                    unpriced[feature] = unpriced.get(feature, 0.0) + amount
                    continue
                cost = weight * amount
                by_feature[feature] = by_feature.get(feature, 0.0) + cost
                by_op_type[op.op_type] = by_op_type.get(op.op_type, 0.0) + cost
        invoke = self.weights_ms.get(INVOKE_FEATURE, 0.0)
        by_feature[INVOKE_FEATURE] = invoke
        by_op_type[INVOKE_FEATURE] = invoke
        return Prediction(
            latency_ms=float(sum(by_feature.values())),
            by_feature_ms=by_feature,
            by_op_type_ms=dict(sorted(by_op_type.items(), key=lambda item: -item[1])),
            unpriced=unpriced,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document `save` writes."""
        return {
            "format": TABLE_FORMAT,
            "name": self.name,
            "unit": "ms per unit of each feature",
            "weights_ms": dict(sorted(self.weights_ms.items())),
            "provenance": self.provenance,
            "fit": self.fit,
            "measure_with": self.measure_with,
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], *, source: str = "") -> LatencyTable:
        """Rebuild a table from `to_dict`'s document; raises `TableError` naming the bad key."""
        where = f"{source}: " if source else ""
        if not isinstance(document, Mapping):
            raise TableError(f"{where}a latency table must be a JSON object, got {type(document).__name__}")
        if document.get("format") != TABLE_FORMAT:
            raise TableError(f"{where}format must be {TABLE_FORMAT!r}, got {document.get('format')!r}")
        name = document.get("name")
        if not isinstance(name, str) or not name:
            raise TableError(f"{where}name must be a non-empty string, got {name!r}")
        weights = document.get("weights_ms")
        if not isinstance(weights, Mapping) or not weights:
            raise TableError(f"{where}weights_ms must map feature names to prices, got {weights!r}")
        for feature, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                raise TableError(f"{where}weights_ms.{feature} must be a finite number >= 0, got {weight!r}")
        sections = {}
        for key in ("provenance", "fit", "measure_with"):
            value = document.get(key, {})
            if not isinstance(value, Mapping):
                raise TableError(f"{where}{key} must be a JSON object, got {type(value).__name__}")
            sections[key] = dict(value)
        return cls(name=name, weights_ms={key: float(value) for key, value in weights.items()}, **sections)

    def save(self, path: str | Path) -> Path:
        """Write the table as indented JSON and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by `save`; raises `TableError` when it is missing or invalid."""
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise TableError(f"latency table not found: {path}; fit one with `python -m targets.predict fit`") from error
        except (OSError, json.JSONDecodeError) as error:
            raise TableError(f"cannot read latency table {path}: {error}") from error
        return cls.from_dict(document, source=str(path))


def resolve_table(name_or_path: str | Path) -> Path:
    """Return the table file that a name (``local`` means ``targets/profiles/local.json``) or path names."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text.endswith(".json") or path.is_file():
        return path
    if Path(text).name != text:
        raise TableError(f"latency table {text!r} is neither a .json path nor a name from {PROFILES_DIR}")
    candidate = PROFILES_DIR / f"{text}.json"
    if not candidate.is_file():
        known = sorted(item.stem for item in PROFILES_DIR.glob("*.json"))
        raise TableError(f"no latency table named {text!r} in {PROFILES_DIR}; known: {known or 'none'}")
    return candidate


def nnls(matrix: np.ndarray, target: np.ndarray, *, max_iterations: int | None = None) -> np.ndarray:
    """Solve ``min ||matrix @ x - target||`` subject to ``x >= 0`` (Lawson and Hanson's active set method).

    C. L. Lawson and R. J. Hanson, *Solving Least Squares Problems*, 1974, chapter 23.
    Raises `RuntimeError` when it does not converge within ``max_iterations`` (default
    30 times the number of columns).
    """
    rows, columns = matrix.shape
    solution = np.zeros(columns)
    passive = np.zeros(columns, dtype=bool)
    tolerance = 10 * max(rows, columns) * np.finfo(float).eps * max(1.0, float(np.abs(matrix).sum(axis=0).max()))
    limit = max_iterations if max_iterations is not None else 30 * max(columns, 1)
    iterations = 0
    gradient = matrix.T @ (target - matrix @ solution)
    while not passive.all() and (gradient[~passive] > tolerance).any():
        passive[int(np.argmax(np.where(passive, -np.inf, gradient)))] = True
        while True:
            iterations += 1
            if iterations > limit:
                raise RuntimeError(f"non-negative least squares did not converge in {limit} iterations")
            candidate = np.zeros(columns)
            candidate[passive] = np.linalg.lstsq(matrix[:, passive], target, rcond=None)[0]
            if (candidate[passive] > tolerance).all():
                solution = candidate
                break
            # Step from the feasible solution towards the candidate until a variable hits zero,
            # then drop the variables at zero from the passive set.
            blocking = passive & (candidate <= tolerance)
            step = float(np.min(solution[blocking] / (solution[blocking] - candidate[blocking])))
            solution = solution + step * (candidate - solution)
            passive &= solution > tolerance
            solution[~passive] = 0.0
        gradient = matrix.T @ (target - matrix @ solution)
    return solution


def fit_weights(
    rows: Sequence[Mapping[str, float]],
    latencies_ms: Sequence[float],
    *,
    row_weights: Sequence[float] | None = None,
) -> dict[str, float]:
    """Fit non-negative prices so that each row's features times prices match its latency.

    ``row_weights`` defaults to ``1 / latency``, which minimises the squared relative error;
    latencies must then be positive. Features that are zero in every row get no price.
    Raises `ValueError` for no rows, mismatched lengths or an invalid latency.
    """
    if not rows:
        raise ValueError("fitting needs at least one measured row, got none")
    if len(rows) != len(latencies_ms):
        raise ValueError(f"got {len(rows)} feature rows but {len(latencies_ms)} latencies")
    target = np.asarray(latencies_ms, dtype=float)
    lowest = 0.0 if row_weights is not None else np.finfo(float).tiny
    if not np.all(np.isfinite(target)) or np.any(target < lowest):
        raise ValueError(
            f"latencies must be finite and {'non-negative' if row_weights is not None else 'positive'}, "
            f"got the lowest {sorted(target.tolist())[:3]}"
        )
    weights = np.asarray(row_weights, dtype=float) if row_weights is not None else 1.0 / target
    if weights.shape != target.shape:
        raise ValueError(f"got {len(weights)} row weights for {len(target)} rows")

    names = sorted({name for row in rows for name, value in row.items() if value})
    matrix = np.array([[float(row.get(name, 0.0)) for name in names] for row in rows])
    # Columns span MACs (1e8) to op counts (1e1); scaling them to a maximum of 1 keeps the
    # least-squares steps well conditioned.
    scale = np.abs(matrix).max(axis=0)
    scale[scale == 0] = 1.0
    scaled = (matrix / scale) * weights[:, None]
    solution = nnls(scaled, target * weights) / scale
    return {name: float(value) for name, value in zip(names, solution)}


def accuracy_report(predicted_ms: Sequence[float], measured_ms: Sequence[float], *, tolerance: float = 0.10) -> dict[str, Any]:
    """Summarise relative errors ``predicted / measured - 1``.

    Returns the number of pairs, ``within`` (the share with an absolute relative error of
    at most ``tolerance``, the accuracy figure nn-Meter reports for ±10 %), and the median,
    mean and maximum absolute relative errors and the mean signed one.
    """
    if len(predicted_ms) != len(measured_ms):
        raise ValueError(f"got {len(predicted_ms)} predictions but {len(measured_ms)} measurements")
    if not predicted_ms:
        return {"n": 0, "tolerance": tolerance, "within": None}
    errors = [predicted / measured - 1.0 for predicted, measured in zip(predicted_ms, measured_ms)]
    absolute = [abs(error) for error in errors]
    return {
        "n": len(errors),
        "tolerance": tolerance,
        "within": sum(error <= tolerance + 1e-12 for error in absolute) / len(errors),
        "median_abs_error": statistics.median(absolute),
        "mean_abs_error": statistics.fmean(absolute),
        "max_abs_error": max(absolute),
        "mean_error": statistics.fmean(errors),
    }


def today() -> str:
    """Return the current UTC time as an ISO 8601 string, for provenance records."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def model_rows(graphs: Sequence[GraphFeatures]) -> list[dict[str, float]]:
    """Return each model's summed features, the rows of a whole-model fit."""
    return [graph.total() for graph in graphs]


def residual_features(graph: GraphFeatures, indices: set[int]) -> dict[str, float]:
    """Sum the features of the ops whose index is in ``indices``."""
    return sum_features(op.features for op in graph.ops if op.index in indices)
