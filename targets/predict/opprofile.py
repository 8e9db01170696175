"""Per-op timings from TFLite's op profiler, as ``benchmark_model --enable_op_profiling=true`` prints them.

``lce_benchmark_model`` wraps TFLite's ``benchmark_model`` and prints the same tables. After
the run statistics it prints a section headed ``Operator-wise Profiling Info for Regular
Benchmark Runs:`` whose ``Run Order`` table has one row per executed node, in execution
order::

    ============================== Run Order ==============================
    	             [node type]	          [start]	  [first]	 [avg ms]	     [%]	  [cdf%]	  [mem KB]	[times called]	[Name]
    	                 CONV_2D	            0.000	    4.269	    4.184	 12.120%	 12.120%	     0.000	        1	[conv/Conv2D]:0
    	              LceBconv2d	            4.184	    1.208	    1.161	  3.363%	 15.483%	     0.000	        1	[bconv]:1

Older TensorFlow releases print a ``[start]`` column that later ones drop, and LiteRT
separates the columns with spaces instead of tabs. The name ends in ``:N``,
the node index, which equals the op's index in the model's main subgraph for ops that run
in the TFLite runtime. Ops taken over by a delegate (XNNPACK) appear as one node per
delegated partition, typed ``TfLiteXNNPackDelegate``, with an index past the model's ops.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["OpProfile", "OpTiming", "parse_op_profile"]

RUN_SECTION = "Operator-wise Profiling Info for Regular Benchmark Runs"
_TABLE_TITLE = re.compile(r"=+\s*(?P<title>[^=]+?)\s*=+")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NODE_INDEX = re.compile(r":(?P<index>\d+)\s*$")
_INFO_PREFIX = re.compile(r"^\s*(?:INFO:\s*)?")
_AVERAGE = re.compile(rf"Inference \(avg\): (?P<avg>{_NUMBER})")


@dataclasses.dataclass(frozen=True)
class OpTiming:
    """One row of the ``Run Order`` table; times in milliseconds per inference."""

    node_type: str
    first_ms: float
    avg_ms: float
    percent: float
    times_called: int
    name: str
    index: int | None


@dataclasses.dataclass(frozen=True)
class OpProfile:
    """The per-node rows of one profiled run and the tool's average inference time.

    ``inference_avg_ms`` comes from the ``Inference timings in us: ... Inference (avg): ...``
    line when the text contains it; it includes interpreter overhead outside the nodes.
    """

    ops: list[OpTiming]
    inference_avg_ms: float | None = None

    @property
    def total_ms(self) -> float:
        """Sum of the nodes' average times."""
        return sum(op.avg_ms for op in self.ops)


def parse_op_profile(text: str) -> OpProfile:
    """Parse the ``Run Order`` table of the regular benchmark runs from benchmark output.

    The table of the initialization phase, printed before it, is skipped. Raises
    `ValueError` when the text has no such section or a row cannot be read, naming the line.
    """
    lines = [_INFO_PREFIX.sub("", line.rstrip("\n")) for line in text.splitlines()]
    average = None
    for line in lines:
        match = _AVERAGE.search(line)
        if match:
            average = float(match.group("avg")) / 1000.0

    try:
        section = next(number for number, line in enumerate(lines) if RUN_SECTION in line)
    except StopIteration:
        raise ValueError(
            f"no '{RUN_SECTION}' section found; run the benchmark with --enable_op_profiling=true"
        ) from None
    header = None
    for number in range(section + 1, len(lines)):
        title = _TABLE_TITLE.fullmatch(lines[number].strip())
        if title and title.group("title") == "Run Order":
            header = number + 1
            break
    if header is None or header >= len(lines) or "[node type]" not in lines[header]:
        raise ValueError(f"the '{RUN_SECTION}' section has no 'Run Order' table with a [node type] header")
    has_start = "[start]" in lines[header]

    ops = []
    for number in range(header + 1, len(lines)):
        line = lines[number]
        if not line.strip() or _TABLE_TITLE.fullmatch(line.strip()):
            break
        ops.append(_parse_row(line, has_start, number + 1))
    if not ops:
        raise ValueError(f"the 'Run Order' table after line {header + 1} has no rows")
    return OpProfile(ops, average)


def _parse_row(line: str, has_start: bool, line_number: int) -> OpTiming:
    # Columns: node type, [start], first, avg ms, %, cdf%, mem KB, times called, name. The
    # node type may contain spaces ("Convolution (NHWC, F32) IGEMM"), so the numbers are
    # matched from its right.
    numbers = 7 if has_start else 6
    pattern = (
        r"^\s*(?P<type>.+?)"
        + "".join(rf"\s+(?P<n{position}>{_NUMBER})%?" for position in range(numbers))
        + r"\s+(?P<name>\S.*?)\s*$"
    )
    match = re.match(pattern, line)
    if match is None:
        raise ValueError(f"line {line_number} of the op profile is not a Run Order row: {line.strip()!r}")
    values = [match.group(f"n{position}") for position in range(numbers)]
    if has_start:
        values = values[1:]
    first, average, percent, _cdf, _memory, called = values
    name = match.group("name")
    index = _NODE_INDEX.search(name)
    return OpTiming(
        node_type=match.group("type").strip(),
        first_ms=float(first),
        avg_ms=float(average),
        percent=float(percent),
        times_called=int(float(called)),
        name=name,
        index=int(index.group("index")) if index else None,
    )
