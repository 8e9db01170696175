"""The Python benchmark runner and the parser shared with lce_benchmark_model's output."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from targets import runner
from targets.runner import format_stats, format_summary, parse_benchmark_output

RUNNER = Path(runner.__file__).resolve()

# Output of TFLite's benchmark_model as TF 2.x prints it (numbers made up, layout upstream's).
UPSTREAM_OUTPUT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Graph: [/tmp/model.tflite]
INFO: Loaded model /tmp/model.tflite
INFO: The input model file size (MB): 4.12
INFO: Initialized session in 12.3ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=9 first=87112 curr=51629 min=51629 max=87112 avg=58147.4 std=11478

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=52162 curr=49785 min=49088 max=68610 avg=51743.2 std=2716

INFO: Inference timings in us: Init: 12345, First inference: 87112, Warmup (avg): 58147.4, Inference (avg): 51743.2
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE.
"""


def test_parse_upstream_output() -> None:
    parsed = parse_benchmark_output(UPSTREAM_OUTPUT)

    assert parsed.warmup is not None
    assert parsed.inference is not None
    assert parsed.warmup.count == 9
    assert parsed.inference.count == 50
    assert parsed.inference.min == 49088
    assert parsed.inference.max == 68610
    assert parsed.inference.avg == 51743.2
    assert parsed.inference.std == 2716
    assert parsed.inference.median is None
    assert parsed.init_us == 12345
    assert parsed.first_inference_us == 87112
    assert parsed.warmup_avg_us == 58147.4
    assert parsed.inference_avg_us == 51743.2


def test_parse_without_prefix_and_with_percentiles() -> None:
    text = (
        "Running benchmark for at least 1 iterations\n"
        "count=1 curr=90000\n\n"
        "Running benchmark for at least 20 iterations\n"
        "count=20 first=5100 curr=5000 min=4900 max=6100 avg=5120.5 std=250 p5=4901 median=5050 p95=6000\n"
    )
    parsed = parse_benchmark_output(text)

    assert parsed.warmup is not None
    assert parsed.inference is not None
    assert parsed.warmup.count == 1
    assert parsed.warmup.first == 90000
    assert parsed.inference.median == 5050
    assert parsed.inference.p95 == 6000
    assert parsed.init_us is None


def test_parse_all_same_and_empty_phase() -> None:
    text = (
        "INFO: Running benchmark for at least 0 iterations\nINFO: count=0\n\n"
        "INFO: Running benchmark for at least 3 iterations\nINFO: count=3 curr=700(all same)\n"
    )
    parsed = parse_benchmark_output(text)

    assert parsed.warmup is not None
    assert parsed.inference is not None
    assert parsed.warmup.count == 0
    assert parsed.inference.count == 3
    assert parsed.inference.min == parsed.inference.max == parsed.inference.median == 700
    assert parsed.inference.std == 0


def test_parse_ignores_op_profiler_stats() -> None:
    profiler = (
        "Operator-wise Profiling Info for Regular Benchmark Runs:\n"
        "Timings (microseconds): count=50 first=1 curr=1 min=1 max=2 avg=1.5 std=0\n"
        "Memory (bytes): count=0\n"
    )
    parsed = parse_benchmark_output(UPSTREAM_OUTPUT + profiler)

    assert parsed.inference is not None
    assert parsed.inference.avg == 51743.2


def test_parse_without_headers_uses_first_two_lines() -> None:
    parsed = parse_benchmark_output("count=2 first=5 curr=6 min=5 max=6 avg=5.5 std=0\ncount=4 first=3 curr=3 min=2 max=4 avg=3 std=1\n")

    assert parsed.warmup is not None
    assert parsed.inference is not None
    assert parsed.warmup.count == 2
    assert parsed.inference.count == 4


def test_parse_nothing() -> None:
    parsed = parse_benchmark_output("ERROR: Benchmarking failed.\n")

    assert parsed.inference is None
    assert parsed.warmup is None


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], "count=0"),
        ([7], "count=1 curr=7"),
        ([7, 7], "count=2 curr=7(all same)"),
        ([10, 20, 30, 40], "count=4 first=10 curr=40 min=10 max=40 avg=25 std=11 p5=10 median=30 p95=40"),
    ],
)
def test_format_stats_like_tflite(samples: list[int], expected: str) -> None:
    assert format_stats(samples) == expected


def test_format_then_parse_round_trip() -> None:
    warmup, timed = [900, 800], [510, 490, 500, 530, 470]
    text = "\n".join(
        [
            "INFO: Running benchmark for at least 2 iterations",
            "INFO: " + format_stats(warmup),
            "INFO: Running benchmark for at least 5 iterations",
            "INFO: " + format_stats(timed),
            "INFO: " + format_summary(1234, warmup, timed),
        ]
    )
    parsed = parse_benchmark_output(text)

    assert parsed.inference is not None
    assert parsed.inference.median == 500
    assert parsed.inference.avg == 500
    assert parsed.first_inference_us == 900
    assert parsed.init_us == 1234
    assert parsed.warmup_avg_us == 850


def test_format_summary_without_warmup() -> None:
    line = format_summary(10, [], [5, 6])

    assert line.startswith("Inference timings in us: Init: 10, First inference: 0, Warmup (avg): nan")
    assert math.isnan(parse_benchmark_output(line).warmup_avg_us or 0.0)


def run_runner(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUNNER), *arguments], capture_output=True, text=True, timeout=120)


def test_runner_cli_counts_runs(tiny_models: dict[str, Any]) -> None:
    result = run_runner(
        f"--graph={tiny_models['binary_path']}", "--num_threads=1", "--warmup_runs=3", "--num_runs=7",
        "--min_secs=0", "--warmup_min_secs=0", "--use_xnnpack=true", "--unknown_flag=1",
    )
    parsed = parse_benchmark_output(result.stdout)

    assert result.returncode == 0, result.stderr
    assert parsed.warmup is not None
    assert parsed.inference is not None
    assert parsed.warmup.count == 3
    assert parsed.inference.count == 7
    assert parsed.inference.median is not None
    assert parsed.init_us is not None
    assert parsed.init_us > 0
    assert "Unconsumed cmdline flags: --unknown_flag=1" in result.stderr
    assert "Use xnnpack: [1]" in result.stdout


def test_runner_cli_reports_allocation_failure(tiny_models: dict[str, Any]) -> None:
    result = run_runner(f"--graph={tiny_models['grouped_path']}", "--num_runs=1")

    assert result.returncode == 1
    assert "Grouped binary convolutions are not supported" in result.stderr
    assert "ERROR: Benchmarking failed." in result.stderr


def test_runner_cli_missing_model(tmp_path: Path) -> None:
    result = run_runner(f"--graph={tmp_path / 'none.tflite'}")

    assert result.returncode == 1
    assert "Could not open" in result.stderr


def test_runner_cli_op_profiling_note(tiny_models: dict[str, Any]) -> None:
    result = run_runner(
        "--graph", str(tiny_models["binary_path"]), "--num_runs", "2", "--min_secs", "0",
        "--warmup_min_secs", "0", "--enable_op_profiling", "true",
    )

    assert result.returncode == 0, result.stderr
    assert "Op profiling is not available" in result.stdout


def test_runner_avoids_tensorflow_import(tiny_models: dict[str, Any]) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(RUNNER.parent)!r}); import runner; "
        "runner.load_interpreter_factory(); print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    assert result.stdout.strip() == "False", result.stderr
