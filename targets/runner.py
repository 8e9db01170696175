"""Benchmark a .tflite model with LCE's Python interpreter and print what ``lce_benchmark_model`` prints.

Usage::

    python runner.py --graph=MODEL.tflite --num_threads=1 --warmup_runs=5 --num_runs=50 \\
        [--use_xnnpack=true] [--use_indirect_bgemm=true] [--enable_op_profiling=true]

The output follows TFLite's ``benchmark_model`` (and LCE's ``lce_benchmark_model``, which
wraps it): one ``count=... first=... curr=... min=... max=... avg=... std=...`` line per
phase (warm-up, then timed runs), in microseconds, and a closing
``Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ...``
line, so `parse_benchmark_output` reads both tools. Like recent TFLite (LiteRT) releases,
the runner appends ``p5=... median=... p95=...`` to the ``count=`` lines.

This file is uploaded to boards and run there, so it imports only the standard library,
numpy and ``larq_compute_engine`` (Python 3.7 or newer). It loads LCE's interpreter
extension directly, which skips the package's TensorFlow import (about 4 s) when the
extension's own dependencies allow it.

``--enable_op_profiling`` prints a note and nothing else: LCE's Python interpreter exposes
no per-operator timers, so only the C++ benchmark tool can report them.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib.machinery
import importlib.util
import math
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

_WRAPPER_MODULE = "larq_compute_engine.tflite.python.interpreter_wrapper_lite"
# Exit status when the interpreter cannot be imported: the host is misconfigured.
EXIT_NO_INTERPRETER = 3


# ---------------------------------------------------------------- parsing (used by the agent)


@dataclasses.dataclass
class RunStats:
    """One ``count=...`` line of benchmark output, in microseconds."""

    count: int
    first: float
    curr: float
    min: float
    max: float
    avg: float
    std: float
    p5: float | None = None
    median: float | None = None
    p95: float | None = None


@dataclasses.dataclass
class BenchmarkOutput:
    """Statistics found by `parse_benchmark_output`, in microseconds; None when absent."""

    warmup: RunStats | None = None
    inference: RunStats | None = None
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"
_STAT_FULL = re.compile(
    rf"count=(?P<count>\d+) first=(?P<first>{_NUMBER}) curr=(?P<curr>{_NUMBER}) "
    rf"min=(?P<min>{_NUMBER}) max=(?P<max>{_NUMBER}) avg=(?P<avg>{_NUMBER}) std=(?P<std>{_NUMBER})"
    rf"(?: p5=(?P<p5>{_NUMBER}) median=(?P<median>{_NUMBER}) p95=(?P<p95>{_NUMBER}))?"
)
_STAT_SAME = re.compile(rf"count=(?P<count>\d+) curr=(?P<curr>{_NUMBER})(?:\(all same\))?")
_RUN_HEADER = re.compile(r"Running benchmark for at least")
_SUMMARY = re.compile(
    rf"Inference timings in us: Init: (?P<init>{_NUMBER}), First inference: (?P<first>{_NUMBER}), "
    rf"Warmup \(avg\): (?P<warmup>{_NUMBER}), Inference \(avg\): (?P<inference>{_NUMBER})"
)


def _parse_stat_line(line: str) -> RunStats | None:
    if re.search(r"count=0(?!\d)", line):
        nan = float("nan")
        return RunStats(0, nan, nan, nan, nan, nan, nan)
    match = _STAT_FULL.search(line)
    if match:
        values = {key: float(value) for key, value in match.groupdict().items() if value is not None}
        values["count"] = int(values["count"])
        return RunStats(**values)
    match = _STAT_SAME.search(line)
    if match and "count=" in line and "first=" not in line:
        count, value = int(match.group("count")), float(match.group("curr"))
        return RunStats(count, value, value, value, value, value, 0.0, value, value, value)
    return None


def parse_benchmark_output(text: str) -> BenchmarkOutput:
    """Parse the output of ``benchmark_model``, ``lce_benchmark_model`` or this runner.

    Each ``Running benchmark for at least ...`` line opens a phase (warm-up first, then the
    timed runs) and the first ``count=`` line after it contains that phase's statistics; later
    ``count=`` lines, such as the op profiler's, are ignored. Output without those headers
    falls back to the first two ``count=`` lines. Lines may carry an ``INFO:`` prefix.
    """
    output = BenchmarkOutput()
    phases: list[RunStats] = []
    loose: list[RunStats] = []
    awaiting_stats = False
    for line in text.splitlines():
        if _RUN_HEADER.search(line):
            awaiting_stats = True
            continue
        summary = _SUMMARY.search(line)
        if summary:
            output.init_us = float(summary.group("init"))
            output.first_inference_us = float(summary.group("first"))
            output.warmup_avg_us = float(summary.group("warmup"))
            output.inference_avg_us = float(summary.group("inference"))
            continue
        if "count=" not in line:
            continue
        stats = _parse_stat_line(line)
        if stats is None:
            continue
        if awaiting_stats:
            phases.append(stats)
            awaiting_stats = False
        else:
            loose.append(stats)
    if not phases and loose:
        phases = loose[:2]
    if len(phases) >= 2:
        output.warmup, output.inference = phases[0], phases[1]
    elif len(phases) == 1:
        output.inference = phases[0]
    return output


# ---------------------------------------------------------------- formatting


def _format_float(value: float) -> str:
    # C++ streams print a double with 6 significant digits, as %g does.
    return f"{value:g}"


def percentile(sorted_values: Sequence[int], percent: float) -> int:
    """Return the nearest-rank ``percent`` percentile of already sorted values."""
    index = min(len(sorted_values) - 1, int(len(sorted_values) * percent / 100))
    return sorted_values[index]


def format_stats(samples_us: Sequence[int]) -> str:
    """Format integer microsecond timings as TFLite's ``Stat`` does, plus percentiles."""
    if not samples_us:
        return "count=0"
    count = len(samples_us)
    low, high = min(samples_us), max(samples_us)
    if low == high:
        return f"count={count} curr={samples_us[-1]}" + ("(all same)" if count > 1 else "")
    average = sum(samples_us) / count
    variance = sum(value * value for value in samples_us) / count - average * average
    std = int(math.sqrt(max(variance, 0.0)))
    ordered = sorted(samples_us)
    return (
        f"count={count} first={samples_us[0]} curr={samples_us[-1]} min={low} max={high} "
        f"avg={_format_float(average)} std={std} p5={percentile(ordered, 5)} "
        f"median={percentile(ordered, 50)} p95={percentile(ordered, 95)}"
    )


def format_summary(init_us: int, warmup_us: Sequence[int], inference_us: Sequence[int]) -> str:
    """Format the closing ``Inference timings in us:`` line."""
    first = warmup_us[0] if warmup_us else 0
    warmup_avg = sum(warmup_us) / len(warmup_us) if warmup_us else float("nan")
    inference_avg = sum(inference_us) / len(inference_us) if inference_us else float("nan")
    return (
        f"Inference timings in us: Init: {init_us}, First inference: {first}, "
        f"Warmup (avg): {_format_float(warmup_avg)}, Inference (avg): {_format_float(inference_avg)}"
    )


# ---------------------------------------------------------------- interpreter


def load_interpreter_factory() -> Callable[..., Any]:
    """Return LCE's ``LiteInterpreter`` class, or the public ``Interpreter`` as a fallback.

    Both take ``(flatbuffer, num_threads, use_reference_bconv, use_indirect_bgemm,
    use_xnnpack)``. The extension is loaded by file path, because importing the package
    imports TensorFlow for its converter.
    """
    spec = importlib.util.find_spec("larq_compute_engine")
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(list(spec.submodule_search_locations)[0], "tflite", "python")
        candidates = sorted(glob.glob(os.path.join(folder, "interpreter_wrapper_lite*.so")))
        if candidates:
            try:
                loader = importlib.machinery.ExtensionFileLoader(_WRAPPER_MODULE, candidates[0])
                module_spec = importlib.util.spec_from_file_location(_WRAPPER_MODULE, candidates[0], loader=loader)
                module = importlib.util.module_from_spec(module_spec)
                loader.exec_module(module)
                return module.LiteInterpreter
            except ImportError:
                pass
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    def build(flatbuffer: bytes, *options: Any) -> Any:
        return Interpreter(flatbuffer, *options).interpreter

    return build


def random_inputs(shapes: Sequence[Sequence[int]], dtypes: Sequence[Any], seed: int = 0) -> list[Any]:
    """Return one seeded random array per input: uniform in [-1, 1] for floats, full range for integers."""
    import numpy as np

    generator = np.random.default_rng(seed)
    arrays = []
    for shape, dtype in zip(shapes, dtypes):
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            arrays.append(generator.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype))
        elif dtype == np.bool_:
            arrays.append(generator.integers(0, 2, size=shape).astype(np.bool_))
        else:
            arrays.append(generator.uniform(-1.0, 1.0, size=shape).astype(dtype))
    return arrays


def time_runs(
    invoke: Callable[[], Any], min_runs: int, min_secs: float, max_secs: float, run_delay: float = -1.0
) -> list[int]:
    """Call ``invoke`` as ``benchmark_model`` does and return each call's time in whole microseconds.

    Runs at least ``min_runs`` times and for at least ``min_secs`` seconds, and starts no
    new run after ``max_secs`` seconds.
    """
    timings: list[int] = []
    start = time.perf_counter()
    now = start
    while (len(timings) < min_runs or now - start < min_secs) and now - start <= max_secs:
        begin = time.perf_counter_ns()
        invoke()
        timings.append((time.perf_counter_ns() - begin) // 1000)
        if run_delay > 0:
            time.sleep(run_delay)
        now = time.perf_counter()
    return timings


# ---------------------------------------------------------------- command line


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser; flag names and defaults follow TFLite's ``benchmark_model``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", required=True, help="path to the .tflite model")
    parser.add_argument("--num_threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--warmup_runs", type=int, default=1, help="minimum warm-up runs (default 1)")
    parser.add_argument("--warmup_min_secs", type=float, default=0.5, help="minimum warm-up seconds (default 0.5)")
    parser.add_argument("--num_runs", type=int, default=50, help="minimum timed runs (default 50)")
    parser.add_argument("--min_secs", type=float, default=1.0, help="minimum timed seconds (default 1)")
    parser.add_argument("--max_secs", type=float, default=150.0, help="no new run starts after this many seconds (default 150)")
    parser.add_argument("--run_delay", type=float, default=-1.0, help="sleep between runs in seconds (default none)")
    parser.add_argument("--use_xnnpack", type=_boolean, default=False, help="apply the XNNPACK delegate")
    parser.add_argument("--use_indirect_bgemm", type=_boolean, default=False, help="use LCE's indirect BGEMM kernels")
    parser.add_argument("--use_reference_bconv", type=_boolean, default=False, help="use LCE's reference bconv kernel")
    parser.add_argument("--enable_op_profiling", type=_boolean, default=False, help="per-op timings (not available here)")
    parser.add_argument("--input_seed", type=int, default=0, help="seed of the random input (default 0)")
    return parser


def _log(message: str, stream: Any = None) -> None:
    print(f"INFO: {message}", file=stream or sys.stdout, flush=True)


def _error(message: str) -> None:
    print(f"ERROR: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its report; returns the process exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    _log("STARTING!")
    if unknown:
        print(f"WARNING: Unconsumed cmdline flags: {' '.join(unknown)}", file=sys.stderr, flush=True)
    _log(f"Graph: [{args.graph}]")
    _log(f"Num threads: [{args.num_threads}]")
    _log(f"Min num runs: [{args.num_runs}]")
    _log(f"Min warmup runs: [{args.warmup_runs}]")
    _log(f"Use xnnpack: [{int(args.use_xnnpack)}]")
    _log(f"Use indirect BGEMM: [{int(args.use_indirect_bgemm)}]")
    _log(f"Use reference Bconv: [{int(args.use_reference_bconv)}]")

    try:
        factory = load_interpreter_factory()
    except ImportError as error:
        _error(f"larq_compute_engine is not importable by {sys.executable}: {error}")
        return EXIT_NO_INTERPRETER

    begin = time.perf_counter_ns()
    try:
        with open(args.graph, "rb") as model_file:
            flatbuffer = model_file.read()
    except OSError as error:
        _error(f"Could not open '{args.graph}': {error}")
        _error("Benchmarking failed.")
        return 1
    _log(f"Loaded model {args.graph}")
    _log(f"The input model file size (MB): {_format_float(len(flatbuffer) / 1e6)}")
    try:
        interpreter = factory(
            flatbuffer, args.num_threads, args.use_reference_bconv, args.use_indirect_bgemm, args.use_xnnpack
        )
    except (RuntimeError, ValueError) as error:
        _error(f"Failed to construct the interpreter or allocate tensors: {str(error).strip()}")
        _error("Benchmarking failed.")
        return 1
    init_us = (time.perf_counter_ns() - begin) // 1000
    _log(f"Initialized session in {_format_float(init_us / 1e3)}ms.")
    inputs = random_inputs(interpreter.input_shapes, interpreter.input_types, args.input_seed)

    def invoke() -> Any:
        return interpreter.predict(inputs)

    phases = (
        (args.warmup_runs, args.warmup_min_secs),
        (args.num_runs, args.min_secs),
    )
    timings: list[list[int]] = []
    for min_runs, min_secs in phases:
        _log(
            f"Running benchmark for at least {min_runs} iterations and at least {_format_float(min_secs)} "
            f"seconds but terminate if exceeding {_format_float(args.max_secs)} seconds."
        )
        try:
            samples = time_runs(invoke, min_runs, min_secs, args.max_secs, args.run_delay)
        except (RuntimeError, ValueError) as error:
            _error(f"Failed to invoke the interpreter: {str(error).strip()}")
            _error("Benchmarking failed.")
            return 1
        timings.append(samples)
        _log(format_stats(samples) + "\n")

    if args.enable_op_profiling:
        _log("Op profiling is not available: LCE's Python interpreter has no per-op timers.")
    _log(format_summary(init_us, timings[0], timings[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
