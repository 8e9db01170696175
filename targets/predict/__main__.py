"""Fit, inspect and use latency tables.

Examples::

    # Convert 60 random candidates of a space, measure each 3 times on this host, fit:
    python -m targets.predict fit --target local-cpu --space experiments/spaces/binaryfacenet.yaml \\
        --samples 60 --out targets/profiles/local.json

    # Fit a board's table from per-op profiles. DIR contains NAME.tflite and NAME.txt, the
    # output of `lce_benchmark_model --graph=NAME.tflite --enable_op_profiling=true`:
    python -m targets.predict fit --op-profiles DIR --name jetson-nano --out targets/profiles/jetson-nano.json

    python -m targets.predict predict --table local model.tflite
    python -m targets.predict show --table local
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blocks.errors import BinaryFaceError

__all__ = ["main"]

logger = logging.getLogger("targets.predict")

DEFAULT_CACHE = Path("runs/predictor/flatbuffers")
LOCAL_KINDS = ("local", "local-cpu")
# LCE's indirect BGEMM kernels with XNNPACK are the fastest correct option set on the x86
# hosts measured so far, and the only one that runs grouped binary convolutions with XNNPACK.
# Forcing them keeps every measurement on one code path.
LOCAL_OVERRIDES: dict[str, Any] = {"options": {"use_indirect_bgemm": True, "use_xnnpack": True}, "rounds": 5, "num_runs": 10}


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``fit``, ``predict`` and ``show`` commands."""
    parser = argparse.ArgumentParser(prog="python -m targets.predict", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="measure models and fit a latency table")
    source = fit.add_mutually_exclusive_group(required=True)
    source.add_argument("--space", type=Path, help="search space YAML whose random candidates are converted and measured")
    source.add_argument("--models", type=Path, help="folder of .tflite files to measure")
    source.add_argument("--op-profiles", type=Path, help="folder of NAME.tflite with NAME.txt op-profiling output; nothing is measured")
    fit.add_argument(
        "--target", default="local-cpu",
        help="target that measures: 'local-cpu' (this host, timed by the inference thread's CPU time, which load on "
        "a shared host does not inflate), 'local', a device name or a device YAML (default: %(default)s)",
    )
    fit.add_argument(
        "--target-overrides",
        type=json.loads,
        help=f"JSON object of target settings; default for local and local-cpu: {json.dumps(LOCAL_OVERRIDES)}, else none",
    )
    fit.add_argument("--name", help="table name (default: the target's name)")
    fit.add_argument("--samples", type=int, default=60, help="candidates drawn from --space (default: %(default)s)")
    fit.add_argument("--passes", type=int, default=3, help="interleaved measurements per model; the minimum median counts (default: %(default)s)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the candidate draw and the pass order (default: %(default)s)")
    fit.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder of cached flatbuffers (default: %(default)s)")
    fit.add_argument("--out", type=Path, required=True, help="table file to write")

    predict = commands.add_parser("predict", help="predict the latency of .tflite files")
    predict.add_argument("--table", default="local", help="table name in targets/profiles/ or path (default: %(default)s)")
    predict.add_argument("models", type=Path, nargs="+", help=".tflite files")

    show = commands.add_parser("show", help="print a table's prices and provenance")
    show.add_argument("--table", default="local", help="table name in targets/profiles/ or path (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        if args.command == "fit":
            return _fit(args)
        if args.command == "predict":
            return _predict(args)
        return _show(args)
    except (BinaryFaceError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _fit(args: argparse.Namespace) -> int:
    from targets.predict.fit import fit_from_op_profiles

    if args.op_profiles is not None:
        graphs, profiles, names = _read_op_profiles(args.op_profiles)
        provenance = {"source": "op profiles", "folder": str(args.op_profiles), "models": names}
        table = fit_from_op_profiles(args.name or args.op_profiles.name, graphs, profiles, provenance=provenance)
    else:
        models = _models(args)
        table = _measure_and_fit(args, models)
    table.save(args.out)
    print(_summary(table))
    print(f"written: {args.out}")
    return 0


def _models(args: argparse.Namespace) -> dict[str, bytes]:
    if args.models is not None:
        files = sorted(args.models.glob("*.tflite"))
        if not files:
            raise ValueError(f"no .tflite files in {args.models}")
        return {path.stem: path.read_bytes() for path in files}

    from search.space import load_space
    from targets.predict.sample import convert_candidates, sample_params

    if args.samples < 2:
        raise ValueError(f"--samples must be at least 2, got {args.samples}")
    space = load_space(args.space)
    params = sample_params(space, args.samples, seed=args.seed)
    candidates = convert_candidates(space, params, args.cache, seed=args.seed, progress=True)
    return {candidate.name: candidate.flatbuffer() for candidate in candidates}


def _measure_and_fit(args: argparse.Namespace, models: dict[str, bytes]) -> Any:
    from targets import get_target
    from targets.predict.features import graph_features
    from targets.predict.fit import fit_from_latencies, host_clocks, load_snapshot, measure_interleaved, robust_ms, software_versions

    overrides = args.target_overrides
    if overrides is None:
        overrides = LOCAL_OVERRIDES if args.target in LOCAL_KINDS else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"--target-overrides must be a JSON object, got {overrides!r}")
    before = load_snapshot()
    with get_target(args.target, **overrides) as target:
        results, rejected = measure_interleaved(target, models, passes=args.passes, seed=args.seed)
        described = target.describe()
    after = load_snapshot()
    names = sorted(results)
    graphs = [graph_features(models[name]) for name in names]
    latencies = [robust_ms(results[name]) for name in names]
    first = results[names[0]][0] if names else None
    if args.target in LOCAL_KINDS:
        clocks = host_clocks()
    else:
        clocks = first.board_state if first is not None else {}
    provenance = {
        "source": "whole-model latencies",
        "target": {key: value for key, value in described.items() if key != "options"},
        "target_options": described.get("options", {}),
        "tool": first.options if first is not None else {},
        "software": software_versions() if args.target in LOCAL_KINDS else {},
        "clocks": clocks,
        "measured": {"passes": args.passes, "statistic": "minimum over passes of the target's median_ms", "before": before, "after": after},
        "space": str(args.space) if args.space is not None else None,
        "models_folder": str(args.models) if args.models is not None else None,
        "seed": args.seed,
        "rejected": rejected,
    }
    return fit_from_latencies(
        args.name or str(described.get("name", args.target)),
        graphs,
        latencies,
        provenance=provenance,
        measure_with={"spec": args.target, "overrides": overrides},
    )


def _read_op_profiles(folder: Path) -> tuple[list[Any], list[Any], list[str]]:
    from targets.predict.features import graph_features
    from targets.predict.opprofile import parse_op_profile

    graphs, profiles, names = [], [], []
    for model in sorted(folder.glob("*.tflite")):
        text_path = model.with_suffix(".txt")
        if not text_path.is_file():
            logger.warning("%s has no op profile %s; skipped", model, text_path.name)
            continue
        try:
            profiles.append(parse_op_profile(text_path.read_text(encoding="utf-8", errors="replace")))
        except ValueError as error:
            raise ValueError(f"{text_path}: {error}") from error
        graphs.append(graph_features(model.read_bytes()))
        names.append(model.stem)
    if not graphs:
        raise ValueError(f"no NAME.tflite with NAME.txt pairs in {folder}")
    return graphs, profiles, names


def _predict(args: argparse.Namespace) -> int:
    from targets.predict.table import LatencyTable, resolve_table

    table = LatencyTable.load(resolve_table(args.table))
    for path in args.models:
        prediction = table.predict(path.read_bytes())
        top = ", ".join(f"{op} {cost:.2f}" for op, cost in list(prediction.by_op_type_ms.items())[:4])
        unpriced = f"; unpriced: {', '.join(sorted(prediction.unpriced))}" if prediction.unpriced else ""
        print(f"{path}: {prediction.latency_ms:.2f} ms ({top}){unpriced}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from targets.predict.table import LatencyTable, resolve_table

    print(_summary(LatencyTable.load(resolve_table(args.table))))
    return 0


def _summary(table: Any) -> str:
    lines = [f"table {table.name}: {len(table.weights_ms)} priced features"]
    for feature, weight in sorted(table.weights_ms.items()):
        lines.append(f"  {feature:<32} {weight:.4g} ms")
    for key in ("training", "leave_one_out"):
        report = table.fit.get(key)
        if report and report.get("within") is not None:
            lines.append(
                f"{key}: {100 * report['within']:.0f} % of {report['n']} within ±{100 * report['tolerance']:.0f} %, "
                f"median error {100 * report['median_abs_error']:.1f} %"
            )
    target = table.provenance.get("target", {})
    if target:
        lines.append(f"measured on {target.get('name', '?')} ({target.get('cpu', '?')}), {table.provenance.get('fitted_at', '?')}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
