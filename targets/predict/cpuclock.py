"""The local target timed by the inference thread's CPU time instead of the wall clock.

On a shared host the wall-clock time of one inference includes the time the thread waited
for a core. At a load average of 7 on two cores, 10-run wall-clock medians of one
BinaryFaceNet candidate ranged from 15 to 31 ms while its CPU time stayed between 5.3 and
6.2 ms (LCE 0.16, this project's x86 host). With one interpreter thread, LCE's kernels and
XNNPACK run in the calling thread: over an ``Invoke`` the process's CPU time equalled the
thread's within 0.3 % there. So ``time.thread_time_ns`` around ``Invoke`` counts the
inference's own work. It comes close to the wall-clock time of a run that is not
preempted: at ``nice -n -20`` the fastest of 60 wall-clock runs of one candidate took
16.0 ms against 14.0 ms of CPU time. Cache and memory-bandwidth contention from other
processes still slow the CPU time too.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from targets.base import Latency
from targets.local import LocalTarget, _Candidate

__all__ = ["CpuClockTarget", "cpu_clock_factory"]

CLOCK = "thread CPU time"


class _CpuClockCandidate(_Candidate):
    def time_one(self, inputs: list[np.ndarray]) -> float:
        begin = time.thread_time_ns()
        self.run(inputs)
        return (time.thread_time_ns() - begin) / 1e6


class CpuClockTarget(LocalTarget):
    """`LocalTarget` whose timed runs, and the timing that picks the fastest option set, use CPU time.

    Takes `LocalTarget`'s arguments. ``num_threads`` must be 1, because the CPU time of
    the calling thread misses work done by interpreter worker threads. ``first_ms`` and
    ``init_ms`` stay wall-clock times.
    """

    kind = "local-cpu"

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if self.num_threads != 1:
            raise ValueError(
                f"the local-cpu target times the calling thread, so num_threads must be 1, got {self.num_threads}; "
                "use the local target for several threads"
            )

    def _build(self, flatbuffer: bytes, name: str, options: dict[str, bool]) -> _Candidate:
        built = super()._build(flatbuffer, name, options)
        return _CpuClockCandidate(built.name, built.options, built.interpreter, built.init_ms)

    def describe(self) -> dict[str, Any]:
        """Return `LocalTarget.describe` with the clock named in the options."""
        info = super().describe()
        info["options"]["clock"] = CLOCK
        return info

    def measure(self, flatbuffer: bytes, *, name: str = "model") -> Latency:
        """Time ``flatbuffer`` as `LocalTarget.measure` does, with each run's thread CPU time."""
        latency = super().measure(flatbuffer, name=name)
        latency.options["clock"] = CLOCK
        return latency


def cpu_clock_factory(argument: str, **overrides: Any) -> CpuClockTarget:
    """Build the target for ``local-cpu``, which takes no argument."""
    if argument:
        raise ValueError(f"the local-cpu target takes no argument, got 'local-cpu:{argument}'; use 'local-cpu'")
    return CpuClockTarget(**overrides)
