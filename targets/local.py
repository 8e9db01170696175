"""Latency on this host with LCE's Python interpreter.

LCE's optimised kernels target 64-bit ARM; on x86 the interpreter's options change speed a
lot. With LCE 0.16 on an x86 host, QuickNet at 112x112 took about 30 ms per image at the
default options and about 5 ms with ``use_indirect_bgemm=True``, and XNNPACK sped up the
float layers. Grouped binary convolutions allocate only with the indirect BGEMM kernels.
So by default this target tries several option sets, keeps those whose output matches a
reference, and measures with the fastest.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from targets import runner as runner_module
from targets.base import (
    BenchmarkTimeout,
    Latency,
    ModelRejected,
    Target,
    TargetError,
    flatbuffer_problem,
    is_tflite_flatbuffer,
)
from targets.runner import random_inputs

__all__ = ["OPTION_SETS", "LocalTarget", "cpu_model"]

logger = logging.getLogger(__name__)

# Candidate interpreter options, fastest first on the x86 hosts measured so far.
OPTION_SETS: dict[str, dict[str, bool]] = {
    "indirect_bgemm+xnnpack": {"use_indirect_bgemm": True, "use_xnnpack": True},
    "indirect_bgemm": {"use_indirect_bgemm": True},
    "xnnpack": {"use_xnnpack": True},
    "default": {},
}
OPTION_KEYS = ("use_reference_bconv", "use_indirect_bgemm", "use_xnnpack")
OPTION_CHOICES = ("fastest", "default")

# Loads and runs the model once per option set in a child process. LCE's interpreter does
# not verify the flatbuffer, so a malformed model can crash the process: LCE 0.16 dies with
# SIGSEGV on a truncated file. Here a crash ends the child, not the caller.
_PREFLIGHT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import runner
factory = runner.load_interpreter_factory()
with open(sys.argv[2], "rb") as model_file:
    flatbuffer = model_file.read()
for name, options in json.loads(sys.argv[4]):
    print("try", name, flush=True)
    try:
        interpreter = factory(flatbuffer, int(sys.argv[3]), options.get("use_reference_bconv", False),
                              options.get("use_indirect_bgemm", False), options.get("use_xnnpack", False))
        interpreter.predict(runner.random_inputs(interpreter.input_shapes, interpreter.input_types))
    except Exception as error:
        print("failed", name, json.dumps(str(error)), flush=True)
    else:
        print("ok", name, flush=True)
"""


def cpu_model() -> str:
    """Return the CPU model from ``/proc/cpuinfo``, else what `platform` reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@contextlib.contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2; the text lands in the yielded list.

    LCE reports the cause of an allocation failure (``Grouped binary convolutions are not
    supported with this kernel``) only on stderr, while the Python exception reports only
    that ``AllocateTensors()`` failed. Other threads writing to stderr meanwhile are
    captured too.
    """
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError):
            pass
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def _validate_options(options: Any) -> str | dict[str, bool]:
    if isinstance(options, str):
        if options not in OPTION_CHOICES:
            raise ValueError(
                f"options must be one of {list(OPTION_CHOICES)} or a dict of {list(OPTION_KEYS)}, got {options!r}"
            )
        return options
    if isinstance(options, Mapping):
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown interpreter options {unknown}; valid keys: {list(OPTION_KEYS)}")
        for key, value in options.items():
            if not isinstance(value, bool):
                raise TypeError(f"interpreter option {key} must be true or false, got {value!r}")
        return dict(options)
    raise TypeError(f"options must be a string or a dict, got {type(options).__name__} {options!r}")


def _relative_error(output: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Return max |output - reference| divided by max |reference| (or 1 when that is 0)."""
    worst = 0.0
    for value, expected in zip(output, reference):
        value = np.asarray(value, dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        difference = float(np.max(np.abs(value - expected))) if expected.size else 0.0
        worst = max(worst, difference / (scale if scale > 0 else 1.0))
    return worst


class _Candidate:
    """One built interpreter with its options, build time and first inference."""

    def __init__(self, name: str, options: dict[str, bool], interpreter: Any, init_ms: float) -> None:
        self.name = name
        self.options = options
        self.interpreter = interpreter
        self.init_ms = init_ms
        self.first_ms: float | None = None
        self.output: list[np.ndarray] = []

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        # The wrapper object behind the public Interpreter times one Invoke plus the input and
        # output copies, without Interpreter.predict's per-batch Python bookkeeping.
        return self.interpreter.interpreter.predict(inputs)

    def time_one(self, inputs: list[np.ndarray]) -> float:
        begin = time.perf_counter_ns()
        self.run(inputs)
        return (time.perf_counter_ns() - begin) / 1e6


class LocalTarget(Target):
    """LCE's Python interpreter on this host (``larq_compute_engine`` ``Interpreter``).

    Args:
        num_threads: interpreter threads; 1 matches a single pinned core on a board.
        options: ``"fastest"`` tries every set in `OPTION_SETS` and keeps those whose
            output on a fixed random input agrees with a reference set within ``rtol``.
            The reference is the default options when they allocate, else indirect BGEMM
            without XNNPACK. Each kept set is timed for ``selection_runs`` interleaved
            runs, and the fastest is measured.
            ``"default"`` uses the interpreter's defaults. A dict such as
            ``{"use_indirect_bgemm": True}`` forces those options.
        warmup_runs: untimed runs before the timed rounds.
        num_runs: timed runs per round.
        rounds: timed rounds. ``Latency.median_ms`` is the smallest round median, which
            resists bursts of load on a shared host; ``round_medians_ms`` shows the spread.
        selection_runs: timed runs per candidate when picking the fastest option set.
        rtol: largest accepted relative output difference to the reference option set.
        seed: seed of the random input.
        preflight: load and run the model once per option set in a child process first,
            so that a model that crashes the interpreter raises `ModelRejected` instead of
            killing this process (about 0.2 s per model).
        preflight_timeout_s: time limit of that child process (`BenchmarkTimeout`).
    """

    kind = "local"

    def __init__(
        self,
        *,
        num_threads: int = 1,
        options: str | Mapping[str, bool] = "fastest",
        warmup_runs: int = 5,
        num_runs: int = 20,
        rounds: int = 3,
        selection_runs: int = 5,
        rtol: float = 1e-3,
        seed: int = 0,
        preflight: bool = True,
        preflight_timeout_s: float = 120.0,
    ) -> None:
        for name, value, minimum in (
            ("num_threads", num_threads, 1),
            ("warmup_runs", warmup_runs, 0),
            ("num_runs", num_runs, 1),
            ("rounds", rounds, 1),
            ("selection_runs", selection_runs, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
        if not isinstance(rtol, (int, float)) or rtol <= 0:
            raise ValueError(f"rtol must be a positive number such as 1e-3, got {rtol!r}")
        self.num_threads = num_threads
        self.options = _validate_options(options)
        self.warmup_runs = warmup_runs
        self.num_runs = num_runs
        self.rounds = rounds
        self.selection_runs = selection_runs
        self.rtol = float(rtol)
        self.seed = seed
        self.preflight = preflight
        self.preflight_timeout_s = preflight_timeout_s

    def describe(self) -> dict[str, Any]:
        """Return the kind, host, CPU model and settings of this target."""
        try:
            lce_version = importlib.metadata.version("larq-compute-engine")
        except importlib.metadata.PackageNotFoundError:
            lce_version = "unknown"
        return {
            "kind": self.kind,
            "name": "local",
            "host": socket.gethostname(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "lce_version": lce_version,
            "options": {
                "num_threads": self.num_threads,
                "options": self.options,
                "warmup_runs": self.warmup_runs,
                "num_runs": self.num_runs,
                "rounds": self.rounds,
            },
        }

    def _candidates(self) -> dict[str, dict[str, bool]]:
        if self.options == "fastest":
            return {name: dict(options) for name, options in OPTION_SETS.items()}
        if self.options == "default":
            return {"default": {}}
        assert isinstance(self.options, dict)
        return {"forced": dict(self.options)}

    def _find_crashes(self, flatbuffer: bytes, candidates: dict[str, dict[str, bool]]) -> dict[str, str]:
        """Return the option sets that crash the interpreter in a child process, with the signal."""
        crashed: dict[str, str] = {}
        remaining = list(candidates.items())
        runner_dir = str(Path(runner_module.__file__).resolve().parent)
        with tempfile.TemporaryDirectory(prefix="binaryface-preflight-") as folder:
            model_path = Path(folder) / "model.tflite"
            model_path.write_bytes(flatbuffer)
            while remaining:
                command = [
                    sys.executable, "-c", _PREFLIGHT, runner_dir, str(model_path), str(self.num_threads),
                    json.dumps(remaining),
                ]
                try:
                    child = subprocess.run(command, capture_output=True, text=True, timeout=self.preflight_timeout_s)
                except subprocess.TimeoutExpired as error:
                    raise BenchmarkTimeout(
                        f"loading and running the model once took longer than {self.preflight_timeout_s:g} s "
                        "(preflight_timeout_s) in a child process"
                    ) from error
                if child.returncode == 0:
                    break
                tried = [line.split()[1] for line in child.stdout.splitlines() if line.startswith("try ")]
                finished = {line.split()[1] for line in child.stdout.splitlines() if line.startswith(("ok ", "failed "))}
                if child.returncode > 0 or not tried or tried[-1] in finished:
                    tail = " | ".join(child.stderr.strip().splitlines()[-3:])
                    raise TargetError(f"the interpreter check exited with status {child.returncode}: {tail}")
                try:
                    cause = signal.Signals(-child.returncode).name
                except ValueError:
                    cause = f"signal {-child.returncode}"
                crashed[tried[-1]] = f"crashed: the interpreter died with {cause} loading or running the model"
                names = [name for name, _ in remaining]
                remaining = remaining[names.index(tried[-1]) + 1 :]
        return crashed

    def _build(self, flatbuffer: bytes, name: str, options: dict[str, bool]) -> _Candidate:
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        begin = time.perf_counter_ns()
        with _native_stderr() as native:
            try:
                interpreter = Interpreter(flatbuffer, num_threads=self.num_threads, **options)
            except (RuntimeError, ValueError) as error:
                failure = error
            else:
                failure = None
        init_ms = (time.perf_counter_ns() - begin) / 1e6
        messages = [line.strip() for line in native[0].splitlines() if line.strip()]
        if failure is not None:
            causes = [line for line in messages if "ERROR" in line and "interpreter_wrapper" not in line]
            cause = "; ".join(line.removeprefix("ERROR: ") for line in causes) or str(failure).strip()
            if "Grouped binary convolutions are not supported" in cause:
                cause += " (grouped binary convolutions need use_indirect_bgemm=True)"
            raise ModelRejected(cause) from failure
        for line in messages:
            logger.debug("interpreter (%s): %s", name, line)
        return _Candidate(name, options, interpreter, init_ms)

    def _select(self, candidates: list[_Candidate], inputs: list[np.ndarray]) -> tuple[_Candidate, dict[str, Any]]:
        """Drop candidates whose output disagrees with the reference, then pick the fastest."""
        report: dict[str, Any] = {}
        by_name = {candidate.name: candidate for candidate in candidates}
        reference = by_name.get("default") or by_name.get("indirect_bgemm") or candidates[0]
        agreeing = []
        for candidate in candidates:
            error = _relative_error(candidate.output, reference.output)
            if error <= self.rtol:
                agreeing.append(candidate)
            else:
                report[candidate.name] = f"output differs from {reference.name} by {error:.3g} (relative)"
                logger.warning(
                    "option set %s gives a different output than %s (relative difference %.3g > rtol %g); not used",
                    candidate.name,
                    reference.name,
                    error,
                    self.rtol,
                )
        if len(agreeing) == 1:
            return agreeing[0], report

        for candidate in agreeing:
            candidate.run(inputs)
        timings: dict[str, list[float]] = {candidate.name: [] for candidate in agreeing}
        for _ in range(self.selection_runs):
            # Interleaved, so that a burst of load on the host slows every candidate alike.
            for candidate in agreeing:
                timings[candidate.name].append(candidate.time_one(inputs))
        medians = {name: statistics.median(values) for name, values in timings.items()}
        # Unrounded, so that the reported minimum is always the chosen set.
        report.update(medians)
        best = min(agreeing, key=lambda candidate: medians[candidate.name])
        return best, report

    def measure(self, flatbuffer: bytes, *, name: str = "model") -> Latency:
        """Time ``flatbuffer`` with the configured or fastest correct interpreter options."""
        if not isinstance(flatbuffer, (bytes, bytearray, memoryview)):
            raise TypeError(f"flatbuffer must be bytes, got {type(flatbuffer).__name__}")
        flatbuffer = bytes(flatbuffer)
        if not is_tflite_flatbuffer(flatbuffer):
            raise ModelRejected(
                f"{name}: not a TFLite flatbuffer ({len(flatbuffer)} bytes without the TFL3 identifier); "
                "pass the bytes that larq_compute_engine.convert_keras_model returns"
            )
        problem = flatbuffer_problem(flatbuffer)
        if problem is not None:
            raise ModelRejected(f"{name}: {problem}")
        started_at = time.time()
        before = {"loadavg": list(os.getloadavg())}

        candidates: list[_Candidate] = []
        option_sets = self._candidates()
        report: dict[str, Any] = self._find_crashes(flatbuffer, option_sets) if self.preflight else {}
        for option_name, options in option_sets.items():
            if option_name in report:
                logger.debug("%s: option set %s: %s", name, option_name, report[option_name])
                continue
            try:
                candidates.append(self._build(flatbuffer, option_name, options))
            except ModelRejected as error:
                report[option_name] = f"rejected: {error}"
                logger.debug("%s: option set %s rejected: %s", name, option_name, error)
        if not candidates:
            causes = " | ".join(f"{option_name} {option_sets[option_name]}: {reason}" for option_name, reason in report.items())
            raise ModelRejected(f"{name}: no interpreter option set could run the model: {causes}")

        inputs = random_inputs(
            candidates[0].interpreter.input_shapes, candidates[0].interpreter.input_types, self.seed
        )
        for candidate in candidates:
            begin = time.perf_counter_ns()
            try:
                candidate.output = [np.array(array) for array in candidate.run(inputs)]
            except (RuntimeError, ValueError) as error:
                raise ModelRejected(f"{name}: inference failed with option set {candidate.name}: {error}") from error
            candidate.first_ms = (time.perf_counter_ns() - begin) / 1e6
        if len(candidates) > 1:
            chosen, selection = self._select(candidates, inputs)
            report.update(selection)
        else:
            chosen = candidates[0]
        candidates = [chosen]

        for _ in range(self.warmup_runs):
            chosen.run(inputs)
        samples: list[float] = []
        round_medians: list[float] = []
        for _ in range(self.rounds):
            round_samples = [chosen.time_one(inputs) for _ in range(self.num_runs)]
            round_medians.append(statistics.median(round_samples))
            samples.extend(round_samples)
        after = {"loadavg": list(os.getloadavg())}

        options = {key: bool(chosen.options.get(key, False)) for key in OPTION_KEYS}
        options.update(
            num_threads=self.num_threads,
            option_set=chosen.name,
            selected_by=self.options if isinstance(self.options, str) else "forced",
            candidates=report,
        )
        latency = Latency.from_samples(
            samples,
            warmup=self.warmup_runs,
            first_ms=chosen.first_ms,
            init_ms=chosen.init_ms,
            options=options,
            target={key: value for key, value in self.describe().items() if key != "options"},
            board_state={"before": before, "after": after},
            started_at=started_at,
            finished_at=time.time(),
        )
        if self.rounds > 1:
            latency.median_ms = min(round_medians)
            latency.median_from = "rounds"
            latency.round_medians_ms = round_medians
        logger.debug(
            "%s: %.4f ms (option set %s, round medians %s)", name, latency.median_ms, chosen.name, round_medians
        )
        return latency
