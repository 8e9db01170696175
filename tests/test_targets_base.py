"""The Latency record, the exception hierarchy and the target registry."""

from __future__ import annotations

import json
from typing import Any

import pytest

import targets
from blocks.errors import BinaryFaceError
from targets import (
    BenchmarkTimeout,
    Latency,
    ModelRejected,
    Target,
    TargetError,
    TargetUnavailable,
    TransientTargetError,
    get_target,
    list_target_kinds,
    register_target_kind,
)
from targets import registry
from targets.base import is_tflite_flatbuffer
from targets.device import DeviceFileError


def test_exceptions_share_one_root() -> None:
    for error in (ModelRejected, TargetUnavailable, TransientTargetError, BenchmarkTimeout, DeviceFileError):
        assert issubclass(error, TargetError)
    assert issubclass(TargetError, BinaryFaceError)
    assert issubclass(DeviceFileError, TargetUnavailable)
    assert not issubclass(BenchmarkTimeout, TransientTargetError)


def test_latency_from_samples() -> None:
    latency = Latency.from_samples([3.0, 1.0, 2.0, 10.0], warmup=4, first_ms=12.0)

    assert latency.median_ms == 2.5
    assert latency.mean_ms == 4.0
    assert latency.min_ms == 1.0
    assert latency.max_ms == 10.0
    assert latency.runs == 4
    assert latency.warmup == 4
    assert latency.first_ms == 12.0
    assert latency.spread_ms == 9.0
    assert latency.median_from == "samples"
    latency.check()


def test_latency_from_no_samples() -> None:
    with pytest.raises(ValueError, match="at least one timed run"):
        Latency.from_samples([], warmup=0)


def test_latency_round_trip() -> None:
    latency = Latency.from_samples([1.0, 2.0], warmup=1, options={"use_xnnpack": True}, round_medians_ms=[1.0, 1.5])
    record = json.loads(json.dumps(latency.to_dict()))

    assert record["spread_ms"] == 0.5
    assert Latency.from_dict(record) == latency


def test_latency_check_catches_contradictions() -> None:
    latency = Latency.from_samples([1.0, 2.0], warmup=1)
    latency.median_ms = 5.0
    with pytest.raises(ValueError, match=r"median_ms must lie within \[min_ms, max_ms\], got 5.0"):
        latency.check()


def test_tflite_identifier_check() -> None:
    assert is_tflite_flatbuffer(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 8)
    assert not is_tflite_flatbuffer(b"TFL3")
    assert not is_tflite_flatbuffer(b"\x00" * 16)


def test_public_names_exported() -> None:
    assert set(targets.__all__) >= {"get_target", "Target", "Latency", "ModelRejected", "TargetUnavailable"}


class _FixedTarget(Target):
    kind = "fixed"

    def __init__(self, argument: str, value: float = 1.0) -> None:
        self.argument = argument
        self.value = value
        self.closed = 0

    def measure(self, flatbuffer: bytes, *, name: str = "model") -> Latency:
        return Latency.from_samples([self.value], warmup=0)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "cpu": "none", "options": {}}

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fixed_kind() -> Any:
    register_target_kind("fixed", _FixedTarget)
    yield
    registry._KINDS.pop("fixed")


def test_registered_kind_built_with_argument(fixed_kind: None) -> None:
    with get_target("fixed:some name", value=3.0) as target:
        assert isinstance(target, _FixedTarget)
        assert target.argument == "some name"
        assert target.measure(b"").median_ms == 3.0
    assert target.closed == 1
    assert "fixed" in list_target_kinds()


def test_lazy_kind_reference() -> None:
    register_target_kind("lazy", "test_targets_base:_FixedTarget")
    try:
        target = get_target("lazy:abc")
        assert isinstance(target, _FixedTarget)
        assert target.argument == "abc"
    finally:
        registry._KINDS.pop("lazy")


def test_duplicate_kind_rejected() -> None:
    with pytest.raises(ValueError, match="'local' is already registered"):
        register_target_kind("local", _FixedTarget)


def test_invalid_kind_name_rejected() -> None:
    with pytest.raises(ValueError, match="target kind must be a word"):
        register_target_kind("a:b", _FixedTarget)


def test_get_target_local_default() -> None:
    target = get_target()
    assert target.kind == "local"
    target.close()


def test_get_target_local_rejects_argument() -> None:
    with pytest.raises(ValueError, match="takes no argument"):
        get_target("local:fast")


def test_get_target_unknown_device_lists_known() -> None:
    with pytest.raises(DeviceFileError, match=r"no device named 'raspberry-pi'; known devices: \['jetson-nano'\]"):
        get_target("raspberry-pi")


def test_get_target_missing_device_file(tmp_path: Any) -> None:
    with pytest.raises(DeviceFileError, match="device file not found"):
        get_target(f"ssh:{tmp_path}/none.yaml")


def test_get_target_unknown_spec() -> None:
    with pytest.raises(ValueError, match="unknown target spec 'a/b'"):
        get_target("a/b")


def test_get_target_empty_spec() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        get_target("  ")


def test_get_target_overrides_device_keys() -> None:
    target = get_target("jetson-nano", host="192.0.2.7", num_runs=10)

    assert target.config.connection.host == "192.0.2.7"
    assert target.config.benchmark.num_runs == 10
    target.close()
