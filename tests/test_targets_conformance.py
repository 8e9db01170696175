"""The `Target` contract, checked against every target kind: local and SSH (loopback sshd)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from targets import ModelRejected, Target, get_target
from targets.runner import load_interpreter_factory, random_inputs

WARMUP_RUNS = 2
NUM_RUNS = 5


@pytest.fixture(params=["local", "ssh"])
def case(request: pytest.FixtureRequest) -> Iterator[tuple[Target, int]]:
    """A target and the number of timed runs it should report."""
    if request.param == "local":
        target = get_target("local", warmup_runs=WARMUP_RUNS, num_runs=NUM_RUNS, rounds=2, selection_runs=2)
        expected_runs = NUM_RUNS * 2
    else:
        device = request.getfixturevalue("device_file")()
        target = get_target(f"ssh:{device}", warmup_runs=WARMUP_RUNS, num_runs=NUM_RUNS)
        expected_runs = NUM_RUNS
    yield target, expected_runs
    target.close()


def reference_ms(flatbuffer: bytes) -> float:
    """Median of a few direct interpreter calls, to check the unit of a target's figures."""
    interpreter = load_interpreter_factory()(flatbuffer, 1, False, True, False)
    inputs = random_inputs(interpreter.input_shapes, interpreter.input_types)
    timings = []
    for _ in range(7):
        begin = time.perf_counter()
        interpreter.predict(inputs)
        timings.append((time.perf_counter() - begin) * 1000)
    return statistics.median(timings[2:])


def test_latency_in_milliseconds(case: tuple[Target, int], tiny_models: dict[str, Any]) -> None:
    target, _ = case
    latency = target.measure(tiny_models["binary"], name="tiny")
    reference = reference_ms(tiny_models["binary"])

    # Interpreter options and host noise move the figure by a few times at most; a wrong
    # unit would be off by 1000.
    assert reference / 30 < latency.median_ms < reference * 30
    assert latency.mean_ms > 0


def test_warmup_excluded_and_runs_counted(case: tuple[Target, int], tiny_models: dict[str, Any]) -> None:
    target, expected_runs = case
    latency = target.measure(tiny_models["binary"], name="tiny")

    assert latency.runs == expected_runs
    assert latency.warmup == WARMUP_RUNS
    assert latency.first_ms is not None
    assert latency.init_ms is not None
    if latency.samples_ms:
        assert len(latency.samples_ms) == latency.runs


def test_median_within_min_and_max(case: tuple[Target, int], tiny_models: dict[str, Any]) -> None:
    target, _ = case
    latency = target.measure(tiny_models["binary"], name="tiny")

    assert latency.min_ms <= latency.median_ms <= latency.max_ms
    assert latency.min_ms <= latency.mean_ms <= latency.max_ms
    assert latency.std_ms >= 0
    latency.check()


def test_record_is_json_ready(case: tuple[Target, int], tiny_models: dict[str, Any]) -> None:
    target, _ = case
    latency = target.measure(tiny_models["binary"], name="tiny")
    record = json.loads(json.dumps(latency.to_dict()))

    assert record["median_ms"] == latency.median_ms
    assert record["target"]["kind"] == target.kind
    assert record["target"]["cpu"]
    assert record["options"]["num_threads"] == 1
    assert set(record["board_state"]) >= {"before", "after"}
    assert latency.started_at is not None
    assert latency.finished_at is not None
    assert latency.started_at <= latency.finished_at


def test_garbage_bytes_rejected(case: tuple[Target, int]) -> None:
    target, _ = case
    with pytest.raises(ModelRejected, match="not a TFLite flatbuffer"):
        target.measure(b"this is not a model", name="garbage")


def test_broken_flatbuffer_rejected(case: tuple[Target, int], tiny_models: dict[str, Any]) -> None:
    target, _ = case
    # The identifier is right but the tables after it are cut off.
    broken = tiny_models["binary"][:64]
    with pytest.raises(ModelRejected):
        target.measure(broken, name="broken")


def test_describe_names_kind_cpu_options(case: tuple[Target, int]) -> None:
    target, _ = case
    description = target.describe()

    assert description["kind"] == target.kind
    assert description["cpu"]
    assert isinstance(description["options"], dict)
    json.dumps(description)


def test_close_idempotent_and_reopens(case: tuple[Target, int], tiny_models: dict[str, Any]) -> None:
    target, _ = case
    target.measure(tiny_models["binary"], name="before-close")
    target.close()
    target.close()

    latency = target.measure(tiny_models["binary"], name="after-close")
    assert latency.runs > 0
    with target as entered:
        assert entered is target
    target.close()
