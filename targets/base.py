"""The latency-target contract: `Target`, the `Latency` record and the target exceptions."""

from __future__ import annotations

import abc
import dataclasses
import math
import statistics
from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar

from blocks.errors import BinaryFaceError

__all__ = [
    "BenchmarkTimeout",
    "Latency",
    "ModelRejected",
    "Target",
    "TargetError",
    "TargetUnavailable",
    "TransientTargetError",
    "flatbuffer_problem",
    "is_tflite_flatbuffer",
]

# The four bytes at offset 4 of every TFLite flatbuffer (the flatbuffers file identifier).
TFLITE_IDENTIFIER = b"TFL3"


class TargetError(BinaryFaceError):
    """Root of the errors a latency target raises.

    A bare `TargetError` means one measurement failed for a reason that is neither the
    model's nor the connection's fault, for example a benchmark that exited with an
    unexpected status. The trial fails and the search goes on.
    """


class ModelRejected(TargetError):
    """The model cannot run on this target: loading, conversion or tensor allocation failed.

    The candidate is a failed trial; the search goes on. The message names the cause
    reported by the interpreter or benchmark tool.
    """


class TargetUnavailable(TargetError):
    """The target cannot be reached or is misconfigured, so no model can be measured on it.

    Raised for an authentication failure, an unknown or changed host key, a missing
    benchmark binary or an invalid device file. The message is one line that names the
    fix. A search stops on this error.
    """


class TransientTargetError(TargetError):
    """A failure that may pass when repeated: connection reset or refused, timeout, EOF.

    Targets retry these themselves a bounded number of times. When one escapes, the
    retries are exhausted: the trial fails with this cause and the search goes on.
    """


class BenchmarkTimeout(TargetError):
    """The benchmark ran longer than its time limit and was stopped.

    Not retried, because a model that hangs the benchmark once usually hangs it again;
    the trial fails and the search goes on.
    """


def is_tflite_flatbuffer(flatbuffer: bytes) -> bool:
    """Return whether ``flatbuffer`` carries the TFLite file identifier ``TFL3``."""
    return len(flatbuffer) >= 8 and flatbuffer[4:8] == TFLITE_IDENTIFIER


def flatbuffer_problem(flatbuffer: bytes) -> str | None:
    """Return why ``flatbuffer`` cannot be a complete TFLite model, or ``None`` when it can.

    TFLite's and LCE's interpreters read a truncated flatbuffer past its end and crash the
    process. So every table and vector is unpacked here first, with TensorFlow's schema
    module (about 20 ms for a 2 MB model), where an out-of-range offset raises instead.
    """
    if not flatbuffer:
        return "the file is empty"
    if not is_tflite_flatbuffer(flatbuffer):
        return f"not a TFLite flatbuffer ({len(flatbuffer)} bytes without the TFL3 identifier)"
    from tensorflow.lite.python import schema_py_generated as schema

    try:
        model = schema.ModelT.InitFromPackedBuf(bytes(flatbuffer), 0)
    except Exception as error:  # noqa: BLE001  (struct, numpy and flatbuffers raise several kinds)
        return f"truncated or corrupt TFLite flatbuffer ({len(flatbuffer)} bytes): {error}"
    for buffer in model.buffers or []:
        # Models over 2 GB keep tensor data after the flatbuffer, at an offset and size.
        if buffer.offset and buffer.offset + buffer.size > len(flatbuffer):
            return f"truncated TFLite flatbuffer: tensor data ends at byte {buffer.offset + buffer.size}, the file has {len(flatbuffer)}"
    return None


@dataclasses.dataclass
class Latency:
    """Latency of one model on one target, in milliseconds per image at batch size 1.

    Warm-up runs are excluded from every statistic except ``first_ms``.

    Attributes:
        median_ms: median of the timed runs. How it was obtained is in ``median_from``.
        mean_ms: mean of the timed runs.
        std_ms: population standard deviation of the timed runs.
        min_ms: fastest timed run.
        max_ms: slowest timed run.
        runs: number of timed runs behind the statistics.
        warmup: number of warm-up runs made before the timed runs.
        first_ms: first inference after loading the model, when the target measures it.
        init_ms: loading the model and allocating its tensors, when the target measures it.
        median_from: ``"samples"`` (median of ``samples_ms``), ``"rounds"`` (the minimum of
            per-round medians, see ``round_medians_ms``), ``"reported"`` (the median the
            benchmark tool printed) or ``"avg"`` (only the mean was known, so
            ``median_ms`` equals ``mean_ms``).
        round_medians_ms: the median of each measuring round, when the target measured in
            rounds; their range shows how noisy the host was.
        remeasures: how often the measurement was repeated because the board throttled.
        options: interpreter or benchmark options used (threads, XNNPACK, indirect BGEMM).
        target: where it ran (kind, name, host, CPU model).
        board_state: ``{"before": {...}, "after": {...}}`` with clocks and temperatures,
            empty dicts when the target does not read them.
        samples_ms: the timed runs, when the target keeps them (empty otherwise).
        started_at: Unix time when the measurement started.
        finished_at: Unix time when the measurement finished.
    """

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    first_ms: float | None = None
    init_ms: float | None = None
    median_from: str = "samples"
    round_medians_ms: list[float] = dataclasses.field(default_factory=list)
    remeasures: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    target: dict[str, Any] = dataclasses.field(default_factory=dict)
    board_state: dict[str, Any] = dataclasses.field(default_factory=lambda: {"before": {}, "after": {}})
    samples_ms: list[float] = dataclasses.field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def spread_ms(self) -> float:
        """Range of the round medians, or of all timed runs when there were no rounds."""
        if self.round_medians_ms:
            return max(self.round_medians_ms) - min(self.round_medians_ms)
        return self.max_ms - self.min_ms

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], *, warmup: int, **fields: Any) -> Latency:
        """Build a record whose statistics are computed from ``samples_ms``."""
        if not samples_ms:
            raise ValueError("samples_ms must hold at least one timed run, got an empty sequence")
        samples = [float(sample) for sample in samples_ms]
        return cls(
            median_ms=statistics.median(samples),
            mean_ms=statistics.fmean(samples),
            std_ms=statistics.pstdev(samples),
            min_ms=min(samples),
            max_ms=max(samples),
            runs=len(samples),
            warmup=warmup,
            samples_ms=samples,
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy of every field plus ``spread_ms``."""
        record = dataclasses.asdict(self)
        record["spread_ms"] = self.spread_ms
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Latency:
        """Rebuild a record written by `to_dict`; unknown keys are ignored."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})

    def check(self) -> None:
        """Raise `ValueError` when the statistics contradict each other."""
        values = (self.median_ms, self.mean_ms, self.std_ms, self.min_ms, self.max_ms)
        if not all(math.isfinite(value) and value >= 0 for value in values):
            raise ValueError(f"latency statistics must be finite and non-negative, got {values}")
        if not self.min_ms <= self.median_ms <= self.max_ms:
            raise ValueError(
                f"median_ms must lie within [min_ms, max_ms], got {self.median_ms} "
                f"outside [{self.min_ms}, {self.max_ms}]"
            )
        if self.runs < 1:
            raise ValueError(f"runs must be at least 1, got {self.runs}")


class Target(abc.ABC):
    """Somewhere a converted model can be timed.

    Contract every implementation honours (and the conformance suite checks):

    - `measure` takes a TFLite flatbuffer, as written by
      ``larq_compute_engine.convert_keras_model``, and returns a `Latency` in
      milliseconds per image at batch size 1. Warm-up runs happen first and are excluded
      from the statistics; ``Latency.runs`` counts the timed runs and ``Latency.warmup``
      the warm-up runs; ``min_ms <= median_ms <= max_ms``.
    - A model the target cannot load or allocate raises `ModelRejected` (a failed trial).
      A target that cannot be reached or is misconfigured raises `TargetUnavailable`
      (the search stops). Retryable failures are retried inside the target; when the
      retries run out it raises `TransientTargetError`. A benchmark past its time limit
      raises `BenchmarkTimeout`.
    - `describe` returns a JSON-ready dict with at least ``kind``, ``cpu`` and
      ``options``.
    - A target is a context manager. `close` releases what the target opened and may be
      called any number of times; a closed target may be used again and reopens lazily.
    """

    kind: ClassVar[str] = ""

    @abc.abstractmethod
    def measure(self, flatbuffer: bytes, *, name: str = "model") -> Latency:
        """Time ``flatbuffer`` and return its latency; ``name`` labels logs and remote files."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Return the target's kind, CPU model and options as a JSON-ready dict."""

    def close(self) -> None:
        """Release connections and files this target opened; safe to call repeatedly."""

    def __enter__(self) -> Target:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
