"""The latency predictor: features, fitting, tables, the op-profile parser and the predict targets."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from targets import Latency, ModelRejected, Target, get_target
from targets.predict import (
    GraphFeatures,
    LatencyTable,
    OpFeatures,
    PredictedTarget,
    ScreeningTarget,
    TableError,
    accuracy_report,
    fit_from_latencies,
    fit_from_op_profiles,
    fit_weights,
    graph_features,
    parse_op_profile,
)
from targets.predict.__main__ import main as predict_main
from targets.predict.fit import measure_interleaved, op_profile_rows, robust_ms
from targets.predict.table import nnls, resolve_table

PRICES = {"CONV_2D.macs_kxk": 2e-8, "LceBconv2d.macs_kxk": 1e-9, "PRELU.elements": 3e-7, "ops": 0.004, "model.invoke": 0.05}


def synthetic_graph(conv_macs: float, binary_macs: float, elements: float, extra_ops: int = 0) -> GraphFeatures:
    """A graph of a float conv, a binary conv, a PReLU and ``extra_ops`` reshapes."""
    ops = [
        OpFeatures(0, "CONV_2D", ("conv",), {"CONV_2D.macs_kxk": conv_macs, "ops": 1.0}),
        OpFeatures(1, "LceBconv2d", ("bconv",), {"LceBconv2d.macs_kxk": binary_macs, "ops": 1.0}),
        OpFeatures(2, "PRELU", ("prelu",), {"PRELU.elements": elements, "ops": 1.0}),
    ]
    ops += [OpFeatures(3 + index, "RESHAPE", (f"reshape{index}",), {"ops": 1.0}) for index in range(extra_ops)]
    return GraphFeatures(ops)


def priced(graph: GraphFeatures, prices: dict[str, float] = PRICES) -> float:
    return sum(prices.get(name, 0.0) * amount for name, amount in graph.total().items())


def synthetic_graphs(count: int, seed: int = 0) -> list[GraphFeatures]:
    generator = np.random.default_rng(seed)
    return [
        synthetic_graph(
            float(generator.uniform(1e6, 1e8)),
            float(generator.uniform(1e7, 1e9)),
            float(generator.uniform(1e4, 1e6)),
            int(generator.integers(0, 6)),
        )
        for _ in range(count)
    ]


def small_table(weights: dict[str, float] | None = None, **sections: Any) -> LatencyTable:
    return LatencyTable(
        name="bench",
        weights_ms=dict(weights or PRICES),
        provenance=sections.pop("provenance", {"target": {"kind": "local", "cpu": "Test CPU 3000"}, "samples": 3}),
        **sections,
    )


# ---------------------------------------------------------------- features


def test_bconv_macs_from_flatbuffer(tiny_models: dict[str, Any]) -> None:
    graph = graph_features(tiny_models["binary"])
    totals = graph.total()

    assert graph.op_counts()["LceBconv2d"] == 1
    # 8x8 output, 32 filters, 3x3 kernel, 32 input channels.
    assert totals["LceBconv2d.macs_kxk"] == 8 * 8 * 32 * 9 * 32
    assert totals["LceBconv2d.outputs_float"] == 8 * 8 * 32
    assert totals["ops"] == len(graph.ops)
    assert totals["model.invoke"] == 1.0


def test_grouped_bconv_counts_group_channels(tiny_models: dict[str, Any]) -> None:
    totals = graph_features(tiny_models["grouped"]).total()

    # 2 groups of 32 input channels each, 64 filters: each output reads one group.
    assert totals["LceBconv2d.macs_kxk"] == 8 * 8 * 64 * 9 * 32


def test_features_reject_garbage() -> None:
    with pytest.raises(ModelRejected, match="not a TFLite flatbuffer"):
        graph_features(b"this is not a model")


def test_features_reject_truncated(tiny_models: dict[str, Any]) -> None:
    with pytest.raises(ModelRejected, match="cannot read the ops of the flatbuffer"):
        graph_features(tiny_models["binary"][:64])


# ---------------------------------------------------------------- fitting


def test_nnls_matches_scipy() -> None:
    optimize = pytest.importorskip("scipy.optimize")
    generator = np.random.default_rng(3)
    for _ in range(30):
        matrix = generator.normal(size=(12, 5))
        target = generator.normal(size=12)
        solution = nnls(matrix, target)
        reference, _ = optimize.nnls(matrix, target)

        assert np.all(solution >= 0)
        assert np.linalg.norm(matrix @ solution - target) <= np.linalg.norm(matrix @ reference - target) + 1e-9


def test_fit_recovers_synthetic_prices() -> None:
    graphs = synthetic_graphs(12)
    rows = [graph.total() for graph in graphs]
    weights = fit_weights(rows, [priced(graph) for graph in graphs])

    for name, price in PRICES.items():
        assert weights[name] == pytest.approx(price, rel=1e-6)


def test_fit_keeps_prices_non_negative() -> None:
    # Latency falls as PReLU elements rise: least squares would price them negative.
    rows = [{"model.invoke": 1.0, "PRELU.elements": float(amount)} for amount in (1, 2, 3, 4)]
    weights = fit_weights(rows, [4.0, 3.0, 2.0, 1.0])

    assert weights["PRELU.elements"] == 0.0
    assert weights["model.invoke"] > 0


def test_fit_rejects_bad_latencies() -> None:
    with pytest.raises(ValueError, match="latencies must be finite and positive"):
        fit_weights([{"ops": 1.0}, {"ops": 2.0}], [1.0, 0.0])
    with pytest.raises(ValueError, match="got 2 feature rows but 1 latencies"):
        fit_weights([{"ops": 1.0}, {"ops": 2.0}], [1.0])


def test_fitted_table_predicts_unseen_graphs() -> None:
    training, unseen = synthetic_graphs(10, seed=1), synthetic_graphs(5, seed=2)
    table = fit_from_latencies("bench", training, [priced(graph) for graph in training])

    predicted = [table.predict(graph).latency_ms for graph in unseen]
    report = accuracy_report(predicted, [priced(graph) for graph in unseen])

    assert report["within"] == 1.0
    assert report["max_abs_error"] < 1e-6
    assert table.fit["leave_one_out"]["n"] == 10
    assert table.provenance["samples"] == 10


def test_prediction_breaks_down_by_op_type() -> None:
    graph = synthetic_graph(1e7, 1e8, 1e5, extra_ops=2)
    prediction = small_table().predict(graph)

    assert prediction.latency_ms == pytest.approx(priced(graph))
    assert prediction.by_op_type_ms["CONV_2D"] == pytest.approx(1e7 * 2e-8 + 0.004)
    assert prediction.by_op_type_ms["RESHAPE"] == pytest.approx(2 * 0.004)
    assert prediction.by_op_type_ms["model.invoke"] == pytest.approx(0.05)
    assert prediction.unpriced == {}


def test_unpriced_features_reported() -> None:
    table = small_table({key: value for key, value in PRICES.items() if key != "PRELU.elements"})
    prediction = table.predict(synthetic_graph(1e7, 1e8, 1e5))

    assert prediction.unpriced == {"PRELU.elements": 1e5}
    assert prediction.latency_ms < priced(synthetic_graph(1e7, 1e8, 1e5))


def test_accuracy_report_counts_within_tolerance() -> None:
    report = accuracy_report([1.05, 0.8, 1.1, 2.0], [1.0, 1.0, 1.0, 1.0])

    assert report["n"] == 4
    assert report["within"] == 0.5
    assert report["max_abs_error"] == pytest.approx(1.0)


# ---------------------------------------------------------------- tables as JSON


def test_table_round_trip_keeps_provenance(tmp_path: Path) -> None:
    provenance = {
        "target": {"kind": "local", "cpu": "Test CPU 3000", "lce_version": "0.16.0"},
        "software": {"larq-compute-engine": "0.16.0"},
        "clocks": {"cpu_mhz": [2999.9]},
        "fitted_at": "2026-01-02T03:04:05+00:00",
        "measured": {"passes": 6, "statistic": "minimum over passes of the target's median_ms"},
        "samples": 3,
    }
    table = small_table(provenance=provenance, fit={"method": "nnls", "samples": 3}, measure_with={"spec": "local", "overrides": {"rounds": 5}})
    path = table.save(tmp_path / "profiles" / "bench.json")

    loaded = LatencyTable.load(path)
    document = json.loads(path.read_text())

    assert loaded == table
    assert document["format"] == "binaryface-latency-table/1"
    assert document["provenance"]["target"]["cpu"] == "Test CPU 3000"
    assert document["provenance"]["fitted_at"] == "2026-01-02T03:04:05+00:00"
    assert document["measure_with"]["overrides"] == {"rounds": 5}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other/2"}, r"format must be 'binaryface-latency-table/1', got 'other/2'"),
        ({"name": ""}, r"name must be a non-empty string"),
        ({"weights_ms": {}}, r"weights_ms must map feature names to prices"),
        ({"weights_ms": {"ops": -1.0}}, r"weights_ms\.ops must be a finite number >= 0, got -1\.0"),
        ({"provenance": []}, r"provenance must be a JSON object, got list"),
    ],
)
def test_invalid_table_rejected(change: dict[str, Any], message: str, tmp_path: Path) -> None:
    document = small_table().to_dict()
    document.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))

    with pytest.raises(TableError, match=message):
        LatencyTable.load(path)


def test_missing_table_names_fit_command(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"latency table not found: .*absent\.json; fit one with `python -m targets\.predict fit`"):
        LatencyTable.load(tmp_path / "absent.json")


def test_unknown_table_name_lists_known() -> None:
    with pytest.raises(TableError, match=r"no latency table named 'no-such-board' in .*profiles; known: "):
        resolve_table("no-such-board")


# ---------------------------------------------------------------- op profiles

# Benchmark output as older TFLite releases print it (tab-separated, with [start]),
# cut to the parts the parser reads: the initialization table must be skipped.
TAB_PROFILE = """\
INFO: Inference timings in us: Init: 21087, First inference: 4933, Warmup (avg): 4714.5, Inference (avg): 4600
Profiling Info for Benchmark Initialization:
============================== Run Order ==============================
\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t         AllocateTensors\t            0.000\t    1.356\t    1.356\t100.000%\t100.000%\t     0.000\t        1\tAllocateTensors/0

Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t                 CONV_2D\t            0.000\t    2.301\t    2.250\t 50.000%\t 50.000%\t     0.000\t        1\t[model/conv/Conv2D]:0
\t              LceBconv2d\t            2.250\t    1.402\t    1.350\t 30.000%\t 80.000%\t     0.000\t        1\t[model/bconv/QuantConv2D;model/bn]:1
\t                   PRELU\t            3.600\t    0.910\t    0.900\t 20.000%\t100.000%\t     0.000\t        1\t[model/prelu/Relu]:2

============================== Top by Computation Time ==============================
\t                 CONV_2D\t            0.000\t    2.301\t    2.250\t 50.000%\t 50.000%\t     0.000\t        1\t[model/conv/Conv2D]:0
"""

# The same run as LiteRT prints it: space-separated, no [start], an INFO: prefix, and the
# float ops merged into one XNNPACK partition node with an index past the model's ops.
SPACE_PROFILE = """\
INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
INFO: ============================== Run Order ==============================
INFO:                      [node type]    [first]   [avg ms]        [%]     [cdf%]   [mem KB] [times called]  [Name]
INFO:            TfLiteXNNPackDelegate      3.101      3.050    69.318%    69.318%      0.000          1  [model/conv/Conv2D, model/prelu/Relu]:3
INFO:                       LceBconv2d      1.402      1.350    30.682%   100.000%      0.000          1  [model/bconv/QuantConv2D;model/bn]:1
INFO:
INFO: Inference timings in us: Init: 21087, First inference: 4933, Warmup (avg): 4714.5, Inference (avg): 4600
"""


def test_op_profile_tab_format_with_start() -> None:
    profile = parse_op_profile(TAB_PROFILE)

    assert [op.node_type for op in profile.ops] == ["CONV_2D", "LceBconv2d", "PRELU"]
    assert [op.index for op in profile.ops] == [0, 1, 2]
    assert [op.avg_ms for op in profile.ops] == [2.25, 1.35, 0.9]
    assert profile.ops[1].first_ms == 1.402
    assert profile.ops[1].name == "[model/bconv/QuantConv2D;model/bn]:1"
    assert profile.ops[2].percent == 20.0
    assert profile.ops[0].times_called == 1
    assert profile.total_ms == pytest.approx(4.5)
    assert profile.inference_avg_ms == pytest.approx(4.6)


def test_op_profile_space_format_with_delegate() -> None:
    profile = parse_op_profile(SPACE_PROFILE)

    assert [op.node_type for op in profile.ops] == ["TfLiteXNNPackDelegate", "LceBconv2d"]
    assert [op.index for op in profile.ops] == [3, 1]
    assert profile.ops[0].avg_ms == 3.05
    assert profile.ops[0].name == "[model/conv/Conv2D, model/prelu/Relu]:3"


def test_op_profile_node_type_with_spaces() -> None:
    text = SPACE_PROFILE.replace("TfLiteXNNPackDelegate", "Convolution (NHWC, F32) IGEMM")
    profile = parse_op_profile(text)

    assert profile.ops[0].node_type == "Convolution (NHWC, F32) IGEMM"
    assert profile.ops[0].avg_ms == 3.05


def test_op_profile_missing_section() -> None:
    with pytest.raises(ValueError, match=r"no 'Operator-wise Profiling Info for Regular Benchmark Runs' section found; run the benchmark with --enable_op_profiling=true"):
        parse_op_profile("count=50 first=1 curr=1 min=1 max=1 avg=1 std=0\n")


def test_op_profile_bad_row_names_line() -> None:
    text = TAB_PROFILE.replace("\t                   PRELU\t            3.600", "\t                   PRELU\t            oops")
    with pytest.raises(ValueError, match=r"line 12 of the op profile is not a Run Order row"):
        parse_op_profile(text)


def test_op_rows_merge_delegated_ops() -> None:
    graph = synthetic_graph(1e7, 1e8, 1e5)
    rows, times = op_profile_rows(graph, parse_op_profile(SPACE_PROFILE))

    # The binary conv alone, the delegated conv and PReLU together, then the time outside nodes.
    assert rows[0] == {"LceBconv2d.macs_kxk": 1e8, "ops": 1.0}
    assert times[0] == 1.35
    assert rows[1] == {"CONV_2D.macs_kxk": 1e7, "PRELU.elements": 1e5, "ops": 2.0}
    assert times[1] == 3.05
    assert rows[2] == {"model.invoke": 1.0}
    assert times[2] == pytest.approx(4.6 - 4.4)


def test_fit_from_op_profiles_recovers_prices() -> None:
    graphs = synthetic_graphs(6, seed=4)
    profiles = []
    for graph in graphs:
        lines = []
        for op in graph.ops:
            cost = sum(PRICES.get(name, 0.0) * amount for name, amount in op.features.items())
            lines.append(f"\t{op.op_type:>24}\t{0.5:>9.3f}\t{cost:>12.9f}\t  1.000%\t  1.000%\t     0.000\t        1\t[{op.outputs[0]}]:{op.index}")
        total_us = 1000 * (priced(graph))
        text = "\n".join(
            [
                "Operator-wise Profiling Info for Regular Benchmark Runs:",
                "============================== Run Order ==============================",
                "\t[node type]\t[first]\t[avg ms]\t[%]\t[cdf%]\t[mem KB]\t[times called]\t[Name]",
                *lines,
                "",
                f"Inference timings in us: Init: 1, First inference: 1, Warmup (avg): 1, Inference (avg): {total_us:.6f}",
            ]
        )
        profiles.append(parse_op_profile(text))
    table = fit_from_op_profiles("board", graphs, profiles, provenance={"tool": "lce_benchmark_model"})

    for name, price in PRICES.items():
        assert table.weights_ms[name] == pytest.approx(price, rel=1e-4)
    assert table.fit["training"]["within"] == 1.0
    assert table.provenance["tool"] == "lce_benchmark_model"


# ---------------------------------------------------------------- predict targets


@pytest.fixture
def table_file(tmp_path: Path, tiny_models: dict[str, Any]) -> Path:
    """A table that prices the tiny models' features, recording the local target to measure with."""
    weights = {name: 1e-6 for name in graph_features(tiny_models["grouped"]).total()}
    weights.update({name: 1e-6 for name in graph_features(tiny_models["binary"]).total()})
    table = small_table(weights, measure_with={"spec": "local", "overrides": {"rounds": 1, "num_runs": 2, "warmup_runs": 0}})
    return table.save(tmp_path / "bench.json")


def test_predicted_target_honours_contract(table_file: Path, tiny_models: dict[str, Any]) -> None:
    with get_target(f"predict:{table_file}") as target:
        latency = target.measure(tiny_models["binary"], name="tiny")
        description = target.describe()

    assert isinstance(target, PredictedTarget)
    latency.check()
    assert latency.median_from == "predicted"
    assert latency.runs == 1
    assert latency.warmup == 0
    assert latency.median_ms == latency.mean_ms == latency.min_ms == latency.max_ms
    assert latency.median_ms == pytest.approx(LatencyTable.load(table_file).predict(tiny_models["binary"]).latency_ms)
    assert latency.started_at <= latency.finished_at
    record = json.loads(json.dumps(latency.to_dict()))
    assert record["target"]["kind"] == "predict"
    assert record["target"]["cpu"] == "Test CPU 3000"
    assert record["options"]["table"] == str(table_file)
    assert description["kind"] == "predict"
    assert description["cpu"] == "Test CPU 3000"
    assert isinstance(description["options"], dict)


def test_predicted_target_rejects_bad_models(table_file: Path, tiny_models: dict[str, Any]) -> None:
    target = get_target(f"predict:{table_file}")

    with pytest.raises(ModelRejected, match="not a TFLite flatbuffer"):
        target.measure(b"this is not a model", name="garbage")
    with pytest.raises(ModelRejected):
        target.measure(tiny_models["binary"][:64], name="broken")
    with pytest.raises(TypeError, match="flatbuffer must be bytes, got str"):
        target.measure("model.tflite")  # type: ignore[arg-type]


def test_predicted_target_close_idempotent(table_file: Path, tiny_models: dict[str, Any]) -> None:
    target = get_target(f"predict:{table_file}")
    target.close()
    target.close()

    assert target.measure(tiny_models["binary"]).runs == 1


def test_unpriced_ops_warn_once(tmp_path: Path, tiny_models: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    path = small_table({"ops": 0.01}).save(tmp_path / "sparse.json")
    target = get_target(f"predict:{path}")

    with caplog.at_level(logging.WARNING, logger="targets.predict.target"):
        target.measure(tiny_models["binary"], name="first")
        target.measure(tiny_models["binary"], name="second")

    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "first: the bench table has no price for " in warnings[0]
    assert "LceBconv2d.macs_kxk" in warnings[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"budget": 3}, r"unknown settings \['budget'\] for the predict target; valid: \['budget_ms', 'margin', 'inner'\]"),
        ({"margin": 0.2}, r"margin applies only with budget_ms"),
        ({"budget_ms": -1.0}, r"budget_ms must be a positive number of milliseconds, got -1\.0"),
        ({"budget_ms": 5.0, "margin": -0.1}, r"margin must be a number >= 0 such as 0\.15, got -0\.1"),
    ],
)
def test_predict_settings_checked(table_file: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_target(f"predict:{table_file}", **overrides)


def test_spec_string_sets_margin_and_inner(table_file: Path) -> None:
    target = get_target(f"predict:{table_file},margin=0.3,inner=local", budget_ms=5.0)

    assert isinstance(target, ScreeningTarget)
    assert target.margin == 0.3
    assert target.threshold_ms == pytest.approx(6.5)
    assert target.describe()["options"]["inner"] == "local"


@pytest.mark.parametrize(
    ("suffix", "overrides", "message"),
    [
        (",speed=2", {"budget_ms": 5.0}, r"invalid setting 'speed=2' in 'predict:.*'; expected ,margin=FRACTION or ,inner=TARGET"),
        (",margin=wide", {"budget_ms": 5.0}, r"invalid margin 'wide' in 'predict:.*,margin=wide'"),
        (",margin=0.2", {"budget_ms": 5.0, "margin": 0.1}, r"margin is given both in 'predict:.*' and as a setting; give it once"),
    ],
)
def test_spec_string_settings_checked(table_file: Path, suffix: str, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_target(f"predict:{table_file}{suffix}", **overrides)


def test_predict_needs_table_argument() -> None:
    with pytest.raises(ValueError, match=r"the predict target needs a latency table: use 'predict:NAME'"):
        get_target("predict:")


class CountingTarget(Target):
    """A fake measuring target that counts its measurements and returns a fixed latency."""

    kind = "fake"

    def __init__(self) -> None:
        self.names: list[str] = []
        self.closed = 0

    def measure(self, flatbuffer: bytes, *, name: str = "model") -> Latency:
        self.names.append(name)
        return Latency.from_samples([1.0, 1.5, 2.0], warmup=1, target={"kind": "fake", "cpu": "none"})

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "cpu": "none", "options": {}}

    def close(self) -> None:
        self.closed += 1


def test_screening_measures_only_near_budget(table_file: Path, tiny_models: dict[str, Any]) -> None:
    table = LatencyTable.load(table_file)
    small = table.predict(tiny_models["binary"]).latency_ms
    large = table.predict(tiny_models["grouped"]).latency_ms
    assert small < large
    inner = CountingTarget()
    # The budget lies between the two; the margin keeps `small` measured even 10 % above it.
    target = get_target(f"predict:{table_file}", budget_ms=small / 1.1, margin=0.15, inner=inner)

    for index in range(3):
        target.measure(tiny_models["binary"], name=f"small{index}")
    over = target.measure(tiny_models["grouped"], name="large")
    measured = target.measure(tiny_models["binary"], name="small3")
    target.close()

    assert isinstance(target, ScreeningTarget)
    assert inner.names == ["small0", "small1", "small2", "small3"]
    assert target.measured == 4
    assert target.screened == 1
    assert over.median_from == "predicted"
    assert over.median_ms == pytest.approx(large)
    assert over.options["screened_out"] is True
    over.check()
    assert measured.median_ms == 1.5
    assert measured.options["predicted_ms"] == pytest.approx(small)
    assert inner.closed == 1


def test_screening_measures_unpriced_models(tmp_path: Path, tiny_models: dict[str, Any]) -> None:
    path = small_table({"ops": 100.0}).save(tmp_path / "ops-only.json")
    inner = CountingTarget()
    target = get_target(f"predict:{path}", budget_ms=1.0, inner=inner)

    latency = target.measure(tiny_models["binary"], name="tiny")

    # Predicted far over budget from ops alone, but the binary conv has no price: measured.
    assert inner.names == ["tiny"]
    assert latency.median_from == "samples"


def test_screening_without_recorded_target(tmp_path: Path) -> None:
    path = small_table().save(tmp_path / "bare.json")

    with pytest.raises(ValueError, match=r"the bench table records no target to measure with \(measure_with\.spec\); pass inner="):
        get_target(f"predict:{path}", budget_ms=5.0)


def test_screening_builds_recorded_target(table_file: Path, tiny_models: dict[str, Any]) -> None:
    target = get_target(f"predict:{table_file}", budget_ms=1000.0)
    latency = target.measure(tiny_models["binary"], name="tiny")
    target.close()

    assert latency.target["kind"] == "local"
    assert latency.runs == 2
    assert latency.options["predicted_ms"] > 0
    assert target.describe()["options"]["measured"] == 1


# ---------------------------------------------------------------- end to end on this host


def test_cpu_clock_target_names_clock(tiny_models: dict[str, Any]) -> None:
    with get_target("local-cpu", options={"use_indirect_bgemm": True}, warmup_runs=1, num_runs=3, rounds=2) as target:
        latency = target.measure(tiny_models["grouped"], name="grouped")
        description = target.describe()

    latency.check()
    assert latency.runs == 6
    assert latency.options["clock"] == "thread CPU time"
    assert latency.target["kind"] == "local-cpu"
    assert description["kind"] == "local-cpu"
    assert description["options"]["clock"] == "thread CPU time"


def test_cpu_clock_target_needs_one_thread() -> None:
    with pytest.raises(ValueError, match=r"the local-cpu target times the calling thread, so num_threads must be 1, got 2"):
        get_target("local-cpu", num_threads=2)


def test_interleaved_measurement_counts_passes(tiny_models: dict[str, Any]) -> None:
    inner = CountingTarget()
    results, rejected = measure_interleaved(inner, {"a": tiny_models["binary"], "b": tiny_models["grouped"]}, passes=3)

    assert sorted(inner.names) == ["a", "a", "a", "b", "b", "b"]
    assert rejected == {}
    assert robust_ms(results["a"]) == 1.5


def test_fit_cli_on_measured_models(tmp_path: Path, tiny_models: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("binary", "grouped"):
        (models / f"{name}.tflite").write_bytes(tiny_models[name])
    out = tmp_path / "local.json"
    overrides = json.dumps({"options": {"use_indirect_bgemm": True}, "rounds": 2, "num_runs": 3, "warmup_runs": 1})

    status = predict_main(["fit", "--models", str(models), "--passes", "2", "--target-overrides", overrides, "--out", str(out)])
    table = LatencyTable.load(out)
    measured = get_target(f"predict:{out}").measure(tiny_models["grouped"])

    assert status == 0
    assert "table local: " in capsys.readouterr().out
    assert table.provenance["samples"] == 2
    assert table.provenance["measured"]["passes"] == 2
    assert table.provenance["target"]["cpu"]
    assert table.provenance["software"]["larq-compute-engine"] == "0.16.0"
    assert table.measure_with == {"spec": "local-cpu", "overrides": json.loads(overrides)}
    # Two models fit exactly when the features outnumber them.
    assert table.fit["training"]["max_abs_error"] < 0.05
    assert measured.median_ms > 0

    assert predict_main(["predict", "--table", str(out), str(models / "binary.tflite")]) == 0
    assert "binary.tflite: " in capsys.readouterr().out


def test_fit_cli_reports_missing_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = predict_main(["fit", "--models", str(tmp_path), "--out", str(tmp_path / "t.json")])

    assert status == 2
    assert f"error: no .tflite files in {tmp_path}" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_quick_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.predictor_benchmark import main as benchmark_main

    status = benchmark_main(["--quick", "--out", str(tmp_path / "bench")])
    output = capsys.readouterr().out
    document = json.loads((tmp_path / "bench" / "benchmark.json").read_text())

    assert status == 0
    assert "predicted within ±10 % of measurement A: " in output
    assert "repeatability, measurement A within ±10 % of B: " in output
    assert document["counts"]["test"] == 4
    assert document["accuracy"]["repeatability_a_vs_b"]["n"] == 4
    assert LatencyTable.load(tmp_path / "bench" / "local.json").fit["samples"] == 6
    assert document["settings"]["record"] is False
