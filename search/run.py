"""Search binary face-recognition architectures under a latency budget.

Example::

    python -m search.run --budget-ms 160 --data ../shared/data/att_faces --trials 4 --epochs 1 --out runs/att

Running the same command again resumes the study stored under ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import search  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from blocks.errors import BinaryFaceError

__all__ = ["main", "parse_args"]

log = logging.getLogger("search.run")
DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "experiments" / "spaces" / "binaryfacenet.yaml"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m search.run",
        description="Search binary face-recognition networks: maximise verification accuracy "
        "subject to measured latency <= budget.",
    )
    parser.add_argument("--budget-ms", type=float, required=True, help="latency budget in milliseconds per 112x112 image, on --target")
    parser.add_argument("--data", type=Path, help="folder of identity subfolders (LFW View 1 when its pair lists are present); default: LFW from the data cache")
    parser.add_argument("--cache-dir", type=Path, help="data cache folder (default: $BINARYFACE_CACHE or ~/.cache/binaryface)")
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="search space YAML (default: %(default)s)")
    parser.add_argument("--target", default="local", help="latency target: 'local', a device name or a device YAML path (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=20, help="number of finished trials the study should reach (default: %(default)s)")
    parser.add_argument("--epochs", type=float, default=1.0, help="ArcFace training epochs per candidate; fractions allowed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/search"), help="output folder: study.db, trials.jsonl, best.yaml, specs/, models/ (default: %(default)s)")
    parser.add_argument("--study-name", default="binaryfacenet", help="Optuna study name (default: %(default)s)")
    parser.add_argument("--storage", help="Optuna storage URL (default: SQLite file study.db under --out)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data split, sampler and initialisation (default: %(default)s)")
    parser.add_argument("--align", choices=("auto", "mtcnn", "none"), default="auto", help="face alignment: auto aligns photos that are not 112x112 crops (default: %(default)s)")
    parser.add_argument("--no-flip", action="store_true", help="score without horizontal-flip embedding averaging")
    parser.add_argument("--quiet", action="store_true", help="print only warnings, errors and the final table")
    args = parser.parse_args(argv)
    if args.budget_ms <= 0:
        parser.error(f"--budget-ms must be positive, got {args.budget_ms:g}")
    if args.trials <= 0:
        parser.error(f"--trials must be positive, got {args.trials}")
    if args.epochs <= 0:
        parser.error(f"--epochs must be positive, got {args.epochs:g}")
    if args.batch_size <= 0:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    _configure_logging(args.quiet)

    try:
        study, records = _run(args)
    except BinaryFaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume the study", file=sys.stderr)
        return 130

    print(format_table(records, args.budget_ms))
    print(f"\nresults: {args.out / 'trials.jsonl'}" + (f", best spec: {args.out / 'best.yaml'}" if (args.out / "best.yaml").exists() else ""))
    return 0


def _run(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    from search.data import load_face_folder
    from search.space import load_space
    from search.study import SearchConfig, run_search, study_records
    from search.train import TrainConfig
    from targets import get_target

    # Everything a user can get wrong is checked before the first model is built.
    space = load_space(args.space)
    data_root = args.data if args.data is not None else _cached_lfw(args.cache_dir)
    data = load_face_folder(data_root, seed=args.seed, align=args.align, cache_dir=args.cache_dir, progress=not args.quiet)

    config = SearchConfig(
        budget_ms=args.budget_ms,
        out=args.out,
        trials=args.trials,
        study_name=args.study_name,
        storage=args.storage,
        seed=args.seed,
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed),
        flip=not args.no_flip,
        progress=not args.quiet,
    )
    log.info(
        "search %s: budget %g ms on %s, %d trials, %g epochs; data %s (%s: %d training images of %d identities, %d pairs)",
        space.name, args.budget_ms, args.target, args.trials, args.epochs, data_root, data.protocol,
        len(data.train_images), data.n_classes, len(data.pairs),
    )
    with get_target(args.target) as target:
        study = run_search(config, space, data, target)
    return study, study_records(study)


def _cached_lfw(cache_dir: Path | None) -> Path:
    from search.download import ensure_lfw

    return ensure_lfw(cache_dir)


def format_table(records: list[Any], budget_ms: float, limit: int = 5) -> str:
    """Return the final table: the best feasible trials, then counts by outcome."""
    from search.study import best_feasible

    best = best_feasible(records, budget_ms)
    over = sum(1 for record in records if record.reason and record.reason.startswith("over budget"))
    failed = sum(1 for record in records if record.state == "FAIL")
    lines = [
        f"{len(records)} trials: {len(best)} feasible, {over} over the {budget_ms:g} ms budget, {failed} failed",
        "",
    ]
    if not best:
        nearest = sorted((record for record in records if record.latency_ms is not None), key=lambda record: record.latency_ms)
        lines.append("no candidate fits the budget; nearest by latency:")
        for record in nearest[:limit]:
            lines.append(f"  trial {record.number}: {record.latency_ms:.2f} ms ({record.reason or record.state})")
        return "\n".join(lines)

    header = f"{'trial':>5} {'accuracy':>9} {'latency ms':>11} {'LceBconv2d':>10} {'binary MACs':>13} {'float MACs':>11} {'params':>9}"
    lines += ["best feasible candidates:", header, "-" * len(header)]
    for record in best[:limit]:
        lines.append(
            f"{record.number:>5} {record.accuracy:>9.4f} {record.latency_ms:>11.2f} {100 * (record.binary_mac_share or 0):>9.1f}% "
            f"{record.binary_macs or 0:>13,} {record.float_macs or 0:>11,} {record.params_count or 0:>9,}"
        )
    top = best[0]
    lines += ["", f"best: trial {top.number}, parameters " + ", ".join(f"{key}={value}" for key, value in top.params.items())]
    return "\n".join(lines)


def _configure_logging(quiet: bool) -> None:
    import optuna

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    logging.getLogger("optuna").setLevel(logging.ERROR)
    # AutoGraph warns about larq's quantized variables on every traced function.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


if __name__ == "__main__":
    raise SystemExit(main())
