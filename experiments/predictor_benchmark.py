"""Predictor benchmark: does a fitted latency table predict unseen candidates within ±10 %?

Goal: fit a latency table (`targets.predict`) to random candidates of a search space measured
on this host. Then report the share of held-out candidates whose predicted latency lies
within ±10 % of the measured one (the accuracy figure nn-Meter reports). Beside it, report
the measurement's own repeatability: the share of held-out candidates whose two independent
measurements lie within ±10 % of each other. A predictor cannot score better than the
measurement it is checked against, so the two figures belong together.

Measurement: each model has two measurement slots, A and B, and every pass measures every
slot of every model once, in a new random order. A model's measurement A is the minimum of
its A-slot medians over the passes, B likewise; the training figure is the minimum over
both. A and B thus see the same drift of the host's load, and their agreement is the
repeatability that the predictor's error should be read against. The target is
``local-cpu``, LCE's interpreter timed by the inference thread's CPU time: on this host
under a load average of 7, wall-clock medians of one model varied 2-3 fold between passes.

Expected cost: converting a BinaryFaceNet candidate took 10-70 s on a shared two-core x86
host. Flatbuffers are cached under ``--cache``, so a second run only measures, and
``--reuse-measurements`` refits without measuring. Measuring took about 0.6 s per slot and
pass: 6 minutes for 100 models, 2 slots and 3 passes. The defaults from a cold cache took
about an hour.

Expected result: at least 90 % of the held-out candidates within ±10 %, where the
repeatability is at least as high. On 2026-12-04 (experiments/RESULTS.md): 98.2 % of 55
within ±10 % of measurement A (median error 1.8 %), repeatability 98.2 %.

Command (records a section in experiments/RESULTS.md and writes runs/predictor/)::

    .venv/bin/python -m experiments.predictor_benchmark --train 45 --test 55 --passes 3 \\
        --save-table targets/profiles/local.json

``--quick`` runs the same steps on a tiny space of 16x16 models in about a minute; the test
suite runs it through `main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import experiments  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from blocks.errors import BinaryFaceError

__all__ = ["Settings", "main", "run_benchmark"]

log = logging.getLogger("experiments.predictor_benchmark")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = PROJECT_ROOT / "experiments" / "spaces" / "binaryfacenet.yaml"
RESULTS_PAGE = PROJECT_ROOT / "experiments" / "RESULTS.md"
TOLERANCE = 0.10
SLOTS = ("A", "B")
SLOT_SEPARATOR = "#"

# A space of tiny models for --quick: a float stem and a binary or float body at 16x16.
_QUICK_SPEC = """\
name: quick
input_shape: [16, 16, 3]
blocks:
  - block: conv_unit
    name: stem
    filters: 32
    kernel_size: 3
    strides: 2
    bits: 32
  - block: conv_unit
    name: body
    filters: 32
    kernel_size: 3
    bits: 1
"""
_QUICK_SPACE = """\
name: quick
description: Tiny models for the benchmark's quick mode.
base_spec: quick_spec.yaml
params:
  stem.filters: [32, 64]
  body.filters: [32, 64, 96]
  body.kernel_size: [1, 3]
  body.bits: [1, 32]
"""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The benchmark's settings, by section."""

    # search space
    space: Path = DEFAULT_SPACE
    seed: int = 0
    # split: candidates drawn for fitting and for scoring
    train: int = 45
    test: int = 55
    # target and measurement
    target: str = "local-cpu"
    target_overrides: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"options": {"use_indirect_bgemm": True, "use_xnnpack": True}, "rounds": 5, "num_runs": 10}
    )
    passes: int = 3
    # screening: budgets at these percentiles of the held-out latencies, and the margin
    budget_percentiles: tuple[int, ...] = (25, 50, 75)
    margin: float = 0.15
    # output
    out: Path = Path("runs/predictor")
    cache: Path = Path("runs/predictor/flatbuffers")
    save_table: Path | None = None
    record: bool = True
    reuse_measurements: bool = False


QUICK = {
    "train": 6,
    "test": 4,
    "passes": 1,
    "target_overrides": {"options": {"use_indirect_bgemm": True, "use_xnnpack": True}, "rounds": 2, "num_runs": 3, "warmup_runs": 1},
    "record": False,
}


def run_benchmark(settings: Settings, *, progress: bool = True) -> dict[str, Any]:
    """Convert, measure, fit and score; return the results document that is also written as JSON."""
    from search.space import load_space
    from targets import get_target
    from targets.predict.features import graph_features
    from targets.predict.fit import fit_from_latencies, host_clocks, load_snapshot, measure_interleaved, software_versions
    from targets.predict.sample import convert_candidates, sample_params
    from targets.predict.table import accuracy_report

    started = time.time()
    space = load_space(settings.space)
    params = sample_params(space, settings.train + settings.test, seed=settings.seed)
    log.info("space %s (%g candidates): drew %d train + %d test", space.name, space.size(), settings.train, settings.test)
    train_params, test_params = params[: settings.train], params[settings.train :]
    train = convert_candidates(space, train_params, settings.cache, seed=settings.seed, progress=progress)
    test = convert_candidates(space, test_params, settings.cache, seed=settings.seed, progress=progress)
    converted_at = time.time()
    models = {candidate.name: candidate.flatbuffer() for candidate in [*train, *test]}
    slots = {f"{name}{SLOT_SEPARATOR}{slot}": flatbuffer for name, flatbuffer in models.items() for slot in SLOTS}

    raw_path = settings.out / "measurements.json"
    if settings.reuse_measurements and raw_path.is_file():
        raw = json.loads(raw_path.read_text(encoding="utf-8"))
        missing = {"target", "before", "after", "rejected", "medians_ms"} - set(raw if isinstance(raw, dict) else {})
        if missing:
            raise ValueError(f"{raw_path} lacks {sorted(missing)}, so this script did not write it; run without --reuse-measurements")
        log.info("reusing the measurements in %s", raw_path)
    else:
        before = load_snapshot()
        with get_target(settings.target, **settings.target_overrides) as target:
            measured, rejected = measure_interleaved(target, slots, passes=settings.passes, seed=settings.seed)
            described = target.describe()
        raw = {
            "target": described,
            "before": before,
            "after": load_snapshot(),
            "rejected": rejected,
            "medians_ms": {key: [latency.median_ms for latency in latencies] for key, latencies in measured.items()},
        }
        settings.out.mkdir(parents=True, exist_ok=True)
        raw_path.write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    measured_at = time.time()
    described, rejected, medians = raw["target"], raw["rejected"], raw["medians_ms"]

    # Medians per model and slot, for the models whose every slot was measured.
    results = {
        name: {slot: medians[f"{name}{SLOT_SEPARATOR}{slot}"] for slot in SLOTS}
        for name in models
        if all(medians.get(f"{name}{SLOT_SEPARATOR}{slot}") for slot in SLOTS)
    }

    def measurement(name: str, slot: str | None) -> float:
        return min(value for key in ([slot] if slot else SLOTS) for value in results[name][key])

    train_names = [candidate.name for candidate in train if candidate.name in results]
    test_names = [candidate.name for candidate in test if candidate.name in results]
    if len(train_names) < 2 or not test_names:
        raise ValueError(f"too few measured models to fit and score: {len(train_names)} train, {len(test_names)} test")
    graphs = {name: graph_features(models[name]) for name in [*train_names, *test_names]}
    table = fit_from_latencies(
        "local" if settings.target in ("local", "local-cpu") else settings.target,
        [graphs[name] for name in train_names],
        [measurement(name, None) for name in train_names],
        provenance={
            "source": "whole-model latencies",
            "target": {key: value for key, value in described.items() if key != "options"},
            "target_options": described.get("options", {}),
            "software": software_versions(),
            "clocks": host_clocks(),
            "measured": {
                "passes": settings.passes,
                "slots_per_pass": len(SLOTS),
                "statistic": "minimum over passes and slots of the target's median_ms",
                "before": raw["before"],
                "after": raw["after"],
            },
            "space": str(settings.space),
            "seed": settings.seed,
            "script": "experiments/predictor_benchmark.py",
        },
        measure_with={"spec": settings.target, "overrides": settings.target_overrides},
    )

    measured_a = [measurement(name, "A") for name in test_names]
    measured_b = [measurement(name, "B") for name in test_names]
    predicted = [table.predict(graphs[name]).latency_ms for name in test_names]
    single_first = [results[name]["A"][0] for name in test_names]
    single_second = [results[name]["B"][0] for name in test_names]
    document: dict[str, Any] = {
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(settings).items()},
        "machine": _machine(described),
        "counts": {"train": len(train_names), "test": len(test_names), "rejected": rejected},
        "accuracy": {
            "predicted_vs_a": accuracy_report(predicted, measured_a, tolerance=TOLERANCE),
            "predicted_vs_b": accuracy_report(predicted, measured_b, tolerance=TOLERANCE),
            "repeatability_a_vs_b": accuracy_report(measured_a, measured_b, tolerance=TOLERANCE),
            "repeatability_single_medians": accuracy_report(single_first, single_second, tolerance=TOLERANCE),
            "training": table.fit.get("training"),
            "leave_one_out": table.fit.get("leave_one_out"),
        },
        "screening": _screening(predicted, measured_a, settings),
        "weights_ms": table.weights_ms,
        "models": [
            {
                "name": name,
                "params": next(candidate.params for candidate in test if candidate.name == name),
                "predicted_ms": value,
                "measured_a_ms": first,
                "measured_b_ms": second,
                "medians_ms": results[name],
            }
            for name, value, first, second in zip(test_names, predicted, measured_a, measured_b)
        ],
        "training_models": [
            {
                "name": name,
                "measured_ms": measurement(name, None),
                "medians_ms": results[name],
            }
            for name in train_names
        ],
        "durations_s": {"convert": converted_at - started, "measure": measured_at - converted_at, "total": time.time() - started},
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    settings.out.mkdir(parents=True, exist_ok=True)
    table.save(settings.out / f"{table.name}.json")
    if settings.save_table is not None:
        table.save(settings.save_table)
    (settings.out / "benchmark.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return document


def _screening(predicted: list[float], measured: list[float], settings: Settings) -> list[dict[str, Any]]:
    """Count, per budget, the held-out models a screen would not measure and the feasible ones it would lose."""
    rows = []
    ordered = sorted(measured)
    for percentile in settings.budget_percentiles:
        budget = ordered[min(len(ordered) - 1, int(len(ordered) * percentile / 100))]
        threshold = budget * (1 + settings.margin)
        skipped = [index for index, value in enumerate(predicted) if value > threshold]
        lost = [index for index in skipped if measured[index] <= budget]
        rows.append(
            {
                "percentile": percentile,
                "budget_ms": budget,
                "margin": settings.margin,
                "models": len(predicted),
                "not_measured": len(skipped),
                "feasible_lost": len(lost),
                "feasible": sum(value <= budget for value in measured),
            }
        )
    return rows


def _machine(described: dict[str, Any]) -> dict[str, Any]:
    return {
        "host": described.get("host", platform.node()),
        "cpu": described.get("cpu", "unknown"),
        "cpu_count": os.cpu_count(),
        "lce_version": described.get("lce_version", "unknown"),
        "python": platform.python_version(),
        "loadavg_at_end": list(os.getloadavg()),
    }


def format_report(document: dict[str, Any]) -> str:
    """Return the figures as the lines the CLI prints."""
    accuracy = document["accuracy"]
    counts = document["counts"]

    def share(report: dict[str, Any] | None) -> str:
        if not report or report.get("within") is None:
            return "n/a"
        return f"{100 * report['within']:.1f} % of {report['n']} (median error {100 * report['median_abs_error']:.1f} %)"

    lines = [
        f"trained on {counts['train']} candidates, scored on {counts['test']} held-out candidates",
        f"predicted within ±10 % of measurement A: {share(accuracy['predicted_vs_a'])}",
        f"predicted within ±10 % of measurement B: {share(accuracy['predicted_vs_b'])}",
        f"repeatability, measurement A within ±10 % of B: {share(accuracy['repeatability_a_vs_b'])}",
        f"repeatability of single medians (first A vs first B): {share(accuracy['repeatability_single_medians'])}",
        f"training fit: {share(accuracy['training'])}; leave-one-out: {share(accuracy['leave_one_out'])}",
    ]
    for row in document["screening"]:
        lines.append(
            f"screen at budget {row['budget_ms']:.3g} ms (p{row['percentile']}, margin {100 * row['margin']:.0f} %): "
            f"{row['not_measured']} of {row['models']} not measured, {row['feasible_lost']} of {row['feasible']} feasible lost"
        )
    return "\n".join(lines)


def record_results(document: dict[str, Any], command: str, page: Path = RESULTS_PAGE) -> None:
    """Append a Markdown section with the command, machine and figures to ``page``."""
    accuracy = document["accuracy"]
    machine = document["machine"]
    settings = document["settings"]

    def cell(report: dict[str, Any] | None) -> str:
        if not report or report.get("within") is None:
            return "n/a"
        return f"{100 * report['within']:.1f} % | {100 * report['median_abs_error']:.1f} % | {100 * report['max_abs_error']:.1f} %"

    date = document["finished_at"][:10]
    lines = [
        f"## Latency predictor on this host ({date})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cpu_count']} cores shared with other jobs "
        f"(load average {machine['loadavg_at_end'][0]:.1f} at the end), LCE {machine['lce_version']}, Python {machine['python']}. "
        f"Target `{settings['target']}` with {json.dumps(settings['target_overrides'])}; "
        f"{settings['passes']} passes, each measuring the A and B slot of every model in random order. Space `{Path(settings['space']).name}`, seed {settings['seed']}.",
        "",
        f"Fitted on {document['counts']['train']} random candidates (non-negative least squares over per-op features, "
        f"{len(document['weights_ms'])} priced), scored on {document['counts']['test']} held-out ones. "
        "Measurement A and B are each the minimum of the model's medians in that slot over the passes.",
        "",
        "| comparison | share within ±10 % | median error | max error |",
        "|---|---|---|---|",
        f"| prediction vs measurement A | {cell(accuracy['predicted_vs_a'])} |",
        f"| prediction vs measurement B | {cell(accuracy['predicted_vs_b'])} |",
        f"| repeatability: measurement A vs B | {cell(accuracy['repeatability_a_vs_b'])} |",
        f"| repeatability: single medians, first A vs first B | {cell(accuracy['repeatability_single_medians'])} |",
        f"| leave-one-out on the training set | {cell(accuracy['leave_one_out'])} |",
        "",
        "Screening (predict, then measure only candidates predicted at most budget + margin):",
        "",
        "| budget | margin | not measured | feasible candidates lost |",
        "|---|---|---|---|",
    ]
    for row in document["screening"]:
        lines.append(
            f"| {row['budget_ms']:.3g} ms (p{row['percentile']}) | {100 * row['margin']:.0f} % | "
            f"{row['not_measured']} of {row['models']} | {row['feasible_lost']} of {row['feasible']} |"
        )
    duration = document["durations_s"]
    lines += [
        "",
        f"Run time: conversion {duration['convert'] / 60:.0f} min (partly cached), measurement {duration['measure'] / 60:.0f} min. "
        f"Per-model figures: `{settings['out']}/benchmark.json`.",
        "",
    ]
    _append_section("\n".join(lines), page)


def _append_section(markdown: str, page: Path) -> None:
    """Append ``markdown`` to ``page`` under an exclusive lock, because other experiments append to it too."""
    page.parent.mkdir(parents=True, exist_ok=True)
    with open(page, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            existing = handle.read()
            if not existing:
                handle.write("# Recorded results\n\nEach section was appended by the experiment it names.\n")
            elif not existing.endswith("\n"):
                handle.write("\n")
            handle.write("\n" + markdown.rstrip("\n") + "\n")
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    """Parse the command line into settings; ``--quick`` applies `QUICK` before the other flags."""
    parser = argparse.ArgumentParser(prog="python -m experiments.predictor_benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, help=f"search space YAML (default: {DEFAULT_SPACE.relative_to(PROJECT_ROOT)})")
    parser.add_argument("--train", type=int, help=f"candidates to fit on (default: {Settings.train})")
    parser.add_argument("--test", type=int, help=f"held-out candidates to score (default: {Settings.test})")
    parser.add_argument("--passes", type=int, help=f"passes; each measures every model twice, once per slot (default: {Settings.passes})")
    parser.add_argument("--seed", type=int, help=f"seed of the draw and of the pass order (default: {Settings.seed})")
    parser.add_argument("--margin", type=float, help=f"screening margin above the budget, as a fraction (default: {Settings.margin})")
    parser.add_argument("--out", type=Path, help=f"output folder (default: {Settings.out})")
    parser.add_argument("--cache", type=Path, help=f"flatbuffer cache folder (default: {Settings.cache})")
    parser.add_argument("--save-table", type=Path, help="also write the fitted table here, e.g. targets/profiles/local.json")
    parser.add_argument("--no-record", action="store_true", help="do not append a section to experiments/RESULTS.md")
    parser.add_argument(
        "--reuse-measurements", action="store_true",
        help="fit and score the medians stored in OUT/measurements.json by an earlier run instead of measuring again",
    )
    parser.add_argument("--quick", action="store_true", help="tiny space and counts, no RESULTS.md section (about a minute)")
    args = parser.parse_args(argv)

    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    for key in ("space", "train", "test", "passes", "seed", "margin", "out", "cache", "save_table"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    if args.no_record:
        values["record"] = False
    if args.reuse_measurements:
        values["reuse_measurements"] = True
    if args.quick:
        out = values.get("out", Path("runs/predictor-quick"))
        values.setdefault("out", out)
        values.setdefault("cache", out / "flatbuffers")
        values.setdefault("space", _write_quick_space(out))
    settings = Settings(**values)
    for key in ("train", "test", "passes"):
        if getattr(settings, key) < 1:
            parser.error(f"--{key} must be at least 1, got {getattr(settings, key)}")
    if settings.train < 2:
        parser.error(f"--train must be at least 2, got {settings.train}")
    return settings, args


def _write_quick_space(out: Path) -> Path:
    folder = out / "space"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "quick_spec.yaml").write_text(_QUICK_SPEC, encoding="utf-8")
    path = folder / "quick.yaml"
    path.write_text(_QUICK_SPACE, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures; returns the exit status."""
    try:
        settings, args = parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    log.info("settings: %s", settings)

    try:
        document = run_benchmark(settings, progress=not args.quick)
    except (BinaryFaceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; converted flatbuffers stay cached, so a rerun starts at measuring", file=sys.stderr)
        return 130

    print(format_report(document))
    print(f"results: {settings.out / 'benchmark.json'}")
    if settings.record:
        command = " ".join(["python -m experiments.predictor_benchmark", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
        record_results(document, command)
        print(f"recorded in {RESULTS_PAGE.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
