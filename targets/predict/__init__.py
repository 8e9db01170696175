"""Latency prediction: per-op cost tables fitted to measurements, and targets that use them.

`graph_features` reads per-op cost features from a converted flatbuffer. A `LatencyTable`
prices them for one device and is stored as JSON in ``targets/profiles/``. `PredictedTarget`
(``get_target("predict:NAME")``) returns predictions, and `ScreeningTarget` (the same with
``budget_ms=...``) predicts first and measures only candidates that may fit the budget.
``python -m targets.predict fit`` fits a table. `CpuClockTarget` (``get_target("local-cpu")``)
times this host's interpreter by CPU time, which time spent waiting for a core does not inflate.
"""

from targets.predict.cpuclock import CpuClockTarget
from targets.predict.features import GraphFeatures, OpFeatures, graph_features
from targets.predict.fit import fit_from_latencies, fit_from_op_profiles, measure_interleaved, robust_ms
from targets.predict.opprofile import OpProfile, OpTiming, parse_op_profile
from targets.predict.table import LatencyTable, Prediction, TableError, accuracy_report, fit_weights, resolve_table
from targets.predict.target import PredictedTarget, ScreeningTarget, predict_factory

__all__ = [
    "CpuClockTarget",
    "GraphFeatures",
    "LatencyTable",
    "OpFeatures",
    "OpProfile",
    "OpTiming",
    "PredictedTarget",
    "Prediction",
    "ScreeningTarget",
    "TableError",
    "accuracy_report",
    "fit_from_latencies",
    "fit_from_op_profiles",
    "fit_weights",
    "graph_features",
    "measure_interleaved",
    "parse_op_profile",
    "predict_factory",
    "resolve_table",
    "robust_ms",
]
