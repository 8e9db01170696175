"""Search binary face-recognition networks under a latency budget.

Example::

    python -m search.run --budget-ms 160 --data ../shared/data/att_faces --trials 4 --epochs 1 --out runs/att

Running the same command again resumes the study stored under ``--out``; a trial that was
interrupted is run again. With ``--storage postgresql://USER:PASSWORD@HOST:PORT/DATABASE``
the same command on several machines runs one study together until it reaches ``--trials``
finished trials. Workers that start a trial at the same moment near the end can each add one,
so the study may end with up to one trial more than requested per additional worker.

Every setting, the space, the target and the data are checked before the output folder or the
study database is created: a bad value prints one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Sequence

import search  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from blocks.errors import BinaryFaceError

__all__ = ["format_table", "main", "parse_args"]

log = logging.getLogger("search.run")
DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "experiments" / "spaces" / "binaryfacenet.yaml"
HELP_HINT = "run python -m search.run --help for usage"


class UsageError(BinaryFaceError):
    """A command-line argument is missing or invalid."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} ({HELP_HINT})")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the arguments; raises `UsageError` with a one-line message."""
    from search.study import OBJECTIVES, PRUNERS

    parser = _ArgumentParser(
        prog="python -m search.run",
        description="Search binary face-recognition networks: maximise verification accuracy "
        "subject to measured latency <= budget, or find the accuracy-latency Pareto front within it.",
    )
    parser.add_argument("--budget-ms", type=float, required=True, help="latency budget in milliseconds per 112x112 image, on --target")
    parser.add_argument("--data", type=Path, help="folder of identity subfolders (LFW View 1 when its pair lists are present); default: LFW from the data cache")
    parser.add_argument("--cache-dir", type=Path, help="data cache folder (default: $BINARYFACE_CACHE or ~/.cache/binaryface)")
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="search space YAML (default: %(default)s)")
    parser.add_argument(
        "--target", default="local",
        help="latency target: 'local', a device name, a device YAML path, or 'predict:TABLE', which measures "
        "only the candidates that a latency table in targets/profiles/ predicts near or under the budget (default: %(default)s)",
    )
    parser.add_argument(
        "--objective", choices=OBJECTIVES, default="accuracy",
        help="'accuracy': maximise accuracy within the budget, pruning candidates during training; "
        "'pareto': maximise accuracy and minimise latency within the budget (default: %(default)s)",
    )
    parser.add_argument(
        "--pruner", choices=PRUNERS,
        help="stops unpromising candidates after 1, 3, 9, ... epochs with --objective accuracy and --epochs above 1: "
        "successive halving, Hyperband, or the median rule (default: halving; none with --objective pareto)",
    )
    parser.add_argument("--trials", type=int, default=20, help="number of finished trials the study should reach, counted over all workers (default: %(default)s)")
    parser.add_argument("--epochs", type=float, default=1.0, help="ArcFace training epochs per candidate; fractions allowed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/search"), help="output folder: study.db, trials.jsonl, summary.json, best.yaml, specs/, models/ (default: %(default)s)")
    parser.add_argument("--study-name", default="binaryfacenet", help="Optuna study name (default: %(default)s)")
    parser.add_argument("--storage", help="Optuna storage URL shared by all workers, e.g. postgresql://USER:PASSWORD@HOST:PORT/DATABASE (default: SQLite file study.db under --out)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data split, sampler and initialisation (default: %(default)s)")
    parser.add_argument("--align", choices=("auto", "mtcnn", "none"), default="auto", help="face alignment: auto aligns photos that are not 112x112 crops (default: %(default)s)")
    parser.add_argument("--no-flip", action="store_true", help="score without horizontal-flip embedding averaging")
    parser.add_argument("--quiet", action="store_true", help="print only warnings, errors and the final table; no progress bars")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    if not (math.isfinite(args.budget_ms) and args.budget_ms > 0):
        parser.error(f"--budget-ms must be a positive number of milliseconds, got {args.budget_ms:g}")
    if args.trials <= 0:
        parser.error(f"--trials must be a positive integer, got {args.trials}")
    if not (math.isfinite(args.epochs) and args.epochs > 0):
        parser.error(f"--epochs must be positive, got {args.epochs:g}")
    if args.batch_size <= 0:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
    if args.objective == "pareto" and args.pruner not in (None, "none"):
        parser.error(f"--pruner {args.pruner} needs --objective accuracy, because Optuna cannot prune multi-objective trials")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:
        # --help and --version exit through argparse.
        return int(exit_.code or 0)
    _configure_logging(args.quiet)

    try:
        with _sigterm_as_interrupt():
            study, records, summary = _run(args)
    except BinaryFaceError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume the study", file=sys.stderr)
        return 130

    from search.study import format_savings

    print(format_table(records, args.budget_ms, objective=args.objective))
    print(f"\n{format_savings(summary)}")
    outputs = [f"{args.out / 'trials.jsonl'}", f"summary: {args.out / 'summary.json'}"]
    if (args.out / "best.yaml").exists():
        outputs.append(f"best spec: {args.out / 'best.yaml'}")
    print("results: " + ", ".join(outputs))
    return 0


def _run(args: argparse.Namespace) -> tuple[Any, list[Any], dict[str, Any]]:
    from search.data import load_face_folder
    from search.space import load_space
    from search.study import SearchConfig, run_search, search_summary, study_records
    from search.train import TrainConfig

    # Everything a user can get wrong is checked before the output folder is created. The
    # data, which may take minutes to align, comes last.
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
        objective=args.objective,
        pruner=args.pruner,
    )
    space = load_space(args.space)
    target = _make_target(args)
    data_root = args.data if args.data is not None else _cached_lfw(args.cache_dir)
    config = dataclasses.replace(
        config, data=str(Path(data_root).resolve()), align=args.align, command=recorded_command(args.argv)
    )
    data = load_face_folder(data_root, seed=args.seed, align=args.align, cache_dir=args.cache_dir, progress=not args.quiet)

    log.info(
        "search %s: objective %s, budget %g ms on %s, %d trials, %g epochs, pruner %s; storage %s; "
        "data %s (%s: %d training images of %d identities, %d pairs)",
        space.name, config.objective, args.budget_ms, args.target, args.trials, args.epochs, config.resolved_pruner,
        config.redacted_storage_url, data_root, data.protocol, len(data.train_images), data.n_classes, len(data.pairs),
    )
    with target, _progress_logging(not args.quiet):
        study = run_search(config, space, data, target)
    records = study_records(study)
    return study, records, search_summary(records, config)


def recorded_command(argv: Sequence[str]) -> str:
    """Return the command line of this run as a study records it, without database passwords."""
    from search.dashboard import redact_url

    words = ["python", "-m", "search.run"]
    for word in argv:
        words.append(redact_url(word) if "://" in word else word)
    return shlex.join(words)


def _make_target(args: argparse.Namespace) -> Any:
    from targets import get_target

    # A predict target screens against the budget: it measures only the candidates that
    # its latency table predicts near or under it.
    overrides = {"budget_ms": args.budget_ms} if args.target.startswith("predict:") else {}
    try:
        return get_target(args.target, **overrides)
    except ValueError as error:
        raise UsageError(f"invalid --target {args.target!r}: {error}") from error


def _cached_lfw(cache_dir: Path | None) -> Path:
    from search.download import ensure_lfw

    return ensure_lfw(cache_dir)


def format_table(records: list[Any], budget_ms: float, limit: int = 5, *, objective: str = "accuracy") -> str:
    """Return the final table: counts by outcome, then the best feasible trials.

    With ``objective="pareto"`` the table lists the feasible Pareto front, fastest first.
    When no trial is feasible it lists the candidates nearest to the budget instead.
    """
    from search.study import PRUNED_OVER_BUDGET, best_feasible, pareto_front

    best = best_feasible(records, budget_ms)
    over = sum(1 for record in records if record.reason and record.reason.startswith(PRUNED_OVER_BUDGET))
    pruned = sum(1 for record in records if record.state == "PRUNED" and (record.epochs_trained or 0) > 0)
    interrupted = sum(1 for record in records if record.interrupted)
    failed = sum(1 for record in records if record.state == "FAIL") - interrupted
    counts = f"{len(records) - interrupted} trials: {len(best)} feasible, {over} over the {budget_ms:g} ms budget, "
    counts += f"{pruned} pruned during training, {failed} failed"
    if interrupted:
        counts += f" ({interrupted} interrupted and run again)"
    lines = [counts, ""]
    if not best:
        nearest = sorted((record for record in records if record.latency_ms is not None), key=lambda record: record.latency_ms)
        lines.append("no candidate fits the budget; nearest by latency:")
        for record in nearest[:limit]:
            lines.append(f"  trial {record.number}: {record.latency_ms:.2f} ms ({record.reason or record.state})")
        return "\n".join(lines)

    if objective == "pareto":
        listed = pareto_front(records, budget_ms)
        title = f"feasible Pareto front ({len(listed)} trials; accuracy up, latency down):"
    else:
        listed = best[:limit]
        title = "best feasible candidates:"
    header = f"{'trial':>5} {'accuracy':>9} {'latency ms':>11} {'LceBconv2d':>10} {'binary MACs':>13} {'float MACs':>11} {'params':>9}"
    lines += [title, header, "-" * len(header)]
    for record in listed:
        lines.append(
            f"{record.number:>5} {record.accuracy:>9.4f} {record.latency_ms:>11.2f} {100 * (record.binary_mac_share or 0):>9.1f}% "
            f"{record.binary_macs or 0:>13,} {record.float_macs or 0:>11,} {record.params_count or 0:>9,}"
        )
    top = best[0]
    lines += ["", f"most accurate: trial {top.number}, parameters " + ", ".join(f"{key}={value}" for key, value in top.params.items())]
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so the running trial is marked interrupted and queued again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _progress_logging(enabled: bool) -> Any:
    """Route log lines through tqdm while progress bars are drawn on a terminal."""
    if not (enabled and sys.stderr.isatty()):
        return nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


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
