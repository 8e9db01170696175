"""The local target: option selection, forced options, rounds and rejected models."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from targets import ModelRejected, get_target
from targets.local import OPTION_SETS, LocalTarget, _relative_error, cpu_model

SMALL = {"warmup_runs": 2, "num_runs": 5, "rounds": 2, "selection_runs": 2}


def test_fastest_picks_a_candidate(tiny_models: dict[str, Any]) -> None:
    latency = get_target("local", **SMALL).measure(tiny_models["binary"], name="binary")

    assert latency.options["option_set"] in OPTION_SETS
    assert latency.options["selected_by"] == "fastest"
    assert set(latency.options["candidates"]) == set(OPTION_SETS)
    timed = {name: value for name, value in latency.options["candidates"].items() if isinstance(value, float)}
    assert latency.options["option_set"] == min(timed, key=timed.__getitem__)
    assert latency.median_from == "rounds"
    assert len(latency.round_medians_ms) == 2
    assert latency.median_ms == min(latency.round_medians_ms)
    assert latency.runs == 10
    assert len(latency.samples_ms) == 10


def test_grouped_model_needs_indirect_bgemm(tiny_models: dict[str, Any]) -> None:
    latency = get_target("local", **SMALL).measure(tiny_models["grouped"], name="grouped")

    assert latency.options["use_indirect_bgemm"] is True
    assert latency.options["candidates"]["default"].startswith("rejected: ")
    assert "Grouped binary convolutions are not supported" in latency.options["candidates"]["default"]
    assert isinstance(latency.options["candidates"]["indirect_bgemm"], float)


def test_default_options_reject_grouped_model(tiny_models: dict[str, Any]) -> None:
    target = get_target("local", options="default", **SMALL)

    with pytest.raises(ModelRejected, match=r"grouped: no interpreter option set could run the model: default \{\}: .*use_indirect_bgemm=True"):
        target.measure(tiny_models["grouped"], name="grouped")


def test_forced_options_used(tiny_models: dict[str, Any]) -> None:
    latency = get_target("local", options={"use_xnnpack": True}, **SMALL).measure(tiny_models["binary"])

    assert latency.options["option_set"] == "forced"
    assert latency.options["selected_by"] == "forced"
    assert latency.options["use_xnnpack"] is True
    assert latency.options["use_indirect_bgemm"] is False


def test_single_round_reports_sample_median(tiny_models: dict[str, Any]) -> None:
    latency = get_target("local", options="default", warmup_runs=0, num_runs=4, rounds=1).measure(tiny_models["binary"])

    assert latency.median_from == "samples"
    assert latency.round_medians_ms == []
    assert latency.runs == 4
    assert latency.warmup == 0


def test_truncated_model_rejected(tiny_models: dict[str, Any]) -> None:
    truncated = tiny_models["binary"][:64]

    with pytest.raises(ModelRejected, match=r"truncated: truncated or corrupt TFLite flatbuffer \(64 bytes\)"):
        get_target("local", **SMALL).measure(truncated, name="truncated")


def test_crash_found_without_killing_caller(tiny_models: dict[str, Any]) -> None:
    target = get_target("local", **SMALL)

    # The interpreter reads past the end of a truncated flatbuffer, in a child process here.
    crashes = target._find_crashes(tiny_models["binary"][:64], {"default": {}})

    assert crashes["default"].startswith("crashed: the interpreter died with SIGSEGV")


def test_wrong_output_option_set_dropped(
    tiny_models: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import targets.local as local

    original = local._Candidate.run

    def skewed(self: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
        outputs = original(self, inputs)
        return [output + 1.0 for output in outputs] if self.name == "xnnpack" else outputs

    monkeypatch.setattr(local._Candidate, "run", skewed)
    with caplog.at_level(logging.WARNING, logger="targets.local"):
        latency = get_target("local", **SMALL).measure(tiny_models["binary"])

    assert latency.options["option_set"] != "xnnpack"
    assert latency.options["candidates"]["xnnpack"].startswith("output differs from default")
    assert "option set xnnpack gives a different output than default" in caplog.text


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"options": "quick"}, ValueError, "options must be one of"),
        ({"options": {"use_gpu": True}}, ValueError, r"unknown interpreter options \['use_gpu'\]"),
        ({"options": {"use_xnnpack": 1}}, TypeError, "use_xnnpack must be true or false"),
        ({"num_runs": 0}, ValueError, "num_runs must be an integer of at least 1, got 0"),
        ({"rounds": 1.5}, ValueError, "rounds must be an integer"),
        ({"rtol": 0}, ValueError, "rtol must be a positive number"),
    ],
)
def test_invalid_settings_rejected(settings: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        LocalTarget(**settings)


def test_relative_error_scales_by_reference() -> None:
    reference = [np.array([2.0, -4.0])]

    assert _relative_error([np.array([2.0, -4.0])], reference) == 0.0
    assert _relative_error([np.array([2.0, -3.0])], reference) == 0.25
    assert _relative_error([np.array([0.5])], [np.array([0.0])]) == 0.5


def test_cpu_model_read() -> None:
    assert cpu_model()
