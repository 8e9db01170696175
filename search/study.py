"""The Optuna study: sample a spec, convert, measure, train and evaluate it under a latency budget.

One trial follows one candidate through the whole pipeline::

    params -> spec (validated) -> Keras model -> LCE flatbuffer + audit -> Target.measure
           -> over budget: pruned before training
           -> else ArcFace training -> verification accuracy on the evaluation pairs

Two objectives:

- ``accuracy`` maximises verification accuracy; the budget is a hard filter. Each candidate
  reports its accuracy after every epoch and a pruner stops the unpromising ones, so only the
  promising candidates train for all epochs (successive halving by default).
- ``pareto`` maximises accuracy and minimises latency. Optuna cannot prune multi-objective
  trials, so every candidate within the budget trains for all epochs.

Every measured trial carries the Optuna constraint ``latency - budget <= 0`` and the same
number in the user attribute ``constraint``. A candidate over the budget is never trained, in
either mode: its trial is PRUNED with its latency and the violated constraint. Optuna builds
the Pareto front (``study.best_trials``) from COMPLETE feasible trials only, so the front that
the study returns is the feasible front, and TPE ranks the pruned trials as infeasible by how
far they exceed the budget.

Storage is SQLite under the output folder by default, so running the same command again
resumes the study. A ``postgresql://`` URL lets workers on several machines share one study.
``SearchConfig.trials`` counts the finished trials of the whole study, not of one worker.
A trial whose worker died is failed with the reason ``interrupted`` and its parameters are
queued again: at start for dead processes on the same host, and through Optuna's heartbeat
for workers on other hosts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from blocks.errors import BinaryFaceError, ConversionError, SpecError
from blocks.files import write_atomically
from blocks.spec import DeploymentWarning
from search.space import SearchSpace
from search.train import TrainConfig

__all__ = [
    "OBJECTIVES",
    "PRUNERS",
    "SearchConfig",
    "StudyError",
    "TrialRecord",
    "best_feasible",
    "open_study",
    "pareto_front",
    "run_search",
    "search_summary",
    "study_records",
    "write_outputs",
]

log = logging.getLogger(__name__)

OBJECTIVES = ("accuracy", "pareto")
PRUNERS = ("halving", "hyperband", "median", "none")

# Trial user attributes that the dashboard and export read; new ones are added, never renamed.
WORKER_ATTR = "worker"
REASON_ATTR = "reason"
PHASE_ATTR = "phase"
CONSTRAINT_ATTR = "constraint"
EPOCHS_ATTR = "epochs_trained"
RETRY_OF_ATTR = "retry_of"
RETRIES_ATTR = "retries"
PRUNED_OVER_BUDGET = "over budget"
INTERRUPTED = "interrupted"
# After this many retries a candidate whose worker died is not queued again, because the
# candidate itself may kill the worker (by running out of memory, for example).
MAX_RETRIES = 2
SUMMARY_FILE = "summary.json"


class StudyError(BinaryFaceError):
    """The study cannot run as configured: invalid settings, unreachable storage, or a stored
    study whose objective or budget differs from this run's."""


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search run.

    ``trials`` is the number of finished trials the whole study should reach; every worker
    sharing the study stops there. ``pruner`` is ``None`` for the objective's default:
    ``"halving"`` for ``accuracy`` and ``"none"`` for ``pareto``. ``heartbeat_s`` and
    ``grace_s`` set Optuna's heartbeat: a RUNNING trial whose worker has not beaten for
    ``grace_s`` seconds is failed and queued again. ``poll_s`` is how often a worker that
    waits for the last trials of other workers checks the storage. ``data`` (the face folder),
    ``align`` (its alignment mode) and ``command`` are recorded in a new study.
    """

    budget_ms: float
    out: Path
    trials: int = 20
    study_name: str = "binaryfacenet"
    storage: str | None = None
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    flip: bool = True
    progress: bool = True
    objective: str = "accuracy"
    pruner: str | None = None
    n_startup_trials: int = 5
    heartbeat_s: int = 60
    grace_s: int = 180
    poll_s: float = 10.0
    data: str | None = None
    align: str | None = None
    command: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.budget_ms, (int, float)) and math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise StudyError(f"the latency budget must be a positive number of milliseconds, got {self.budget_ms!r}")
        if not isinstance(self.trials, int) or self.trials <= 0:
            raise StudyError(f"the number of trials must be a positive integer, got {self.trials!r}")
        if self.objective not in OBJECTIVES:
            raise StudyError(f"unknown objective {self.objective!r}; expected one of {', '.join(OBJECTIVES)}")
        if self.pruner is not None and self.pruner not in PRUNERS:
            raise StudyError(f"unknown pruner {self.pruner!r}; expected one of {', '.join(PRUNERS)}")
        if self.objective == "pareto" and self.pruner not in (None, "none"):
            raise StudyError(
                f"pruner {self.pruner!r} needs the accuracy objective: Optuna cannot prune multi-objective "
                "trials; use pruner 'none' with the pareto objective"
            )
        if self.heartbeat_s <= 0 or self.grace_s <= self.heartbeat_s:
            raise StudyError(f"the heartbeat needs 0 < heartbeat_s < grace_s, got {self.heartbeat_s} and {self.grace_s}")
        if self.storage is not None:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                make_url(self.storage)
            except ArgumentError as error:
                # The URL is not repeated: it may contain a password.
                raise StudyError(
                    "invalid storage URL: expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
                ) from error

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    @property
    def redacted_storage_url(self) -> str:
        """The storage URL with its password masked, for logs and messages."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            return make_url(self.storage_url).render_as_string(hide_password=True)
        except ArgumentError:
            return "<invalid URL>"

    @property
    def resolved_pruner(self) -> str:
        """The pruner in use: the configured one, or the objective's default."""
        if self.pruner is not None:
            return self.pruner
        return "halving" if self.objective == "accuracy" else "none"

    @property
    def prunes(self) -> bool:
        """Whether candidates report per-epoch accuracy to a pruner (needs more than one epoch)."""
        return self.objective == "accuracy" and self.resolved_pruner != "none" and self.train.epochs > 1


@dataclass
class TrialRecord:
    """One finished trial as ``trials.jsonl`` stores it.

    ``accuracy`` is set for COMPLETE trials only. ``constraint`` is latency minus budget in
    milliseconds (feasible when <= 0). ``pareto_optimal`` marks the COMPLETE feasible trials
    that no other such trial beats in both accuracy and latency. ``epochs_trained`` is 0 for a
    candidate screened out by the budget and less than the configured epochs for one pruned
    during training.
    """

    number: int
    state: str
    params: dict[str, Any]
    latency_ms: float | None = None
    accuracy: float | None = None
    accuracy_std: float | None = None
    auc: float | None = None
    binary_mac_share: float | None = None
    binary_macs: int | None = None
    float_macs: int | None = None
    params_count: int | None = None
    size_bytes: float | None = None
    spec: str | None = None
    reason: str | None = None
    duration_s: float | None = None
    latency: dict[str, Any] | None = None
    constraint: float | None = None
    feasible: bool | None = None
    pareto_optimal: bool = False
    epochs_trained: float | None = None
    train_seconds: float | None = None
    accuracy_by_epoch: dict[str, float] | None = None
    worker: str | None = None
    retry_of: int | None = None
    weights: str | None = None

    @property
    def interrupted(self) -> bool:
        """Whether the trial failed because its worker stopped, not because of the candidate.

        A FAIL without a reason is a trial that Optuna's heartbeat failed, or one whose worker
        crashed on an unexpected error.
        """
        return self.state == "FAIL" and (not self.reason or self.reason.startswith(INTERRUPTED))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


def run_search(config: SearchConfig, space: SearchSpace, data: Any, target: Any) -> Any:
    """Run trials until the study reaches ``config.trials`` finished ones; return the Optuna study.

    ``data`` is a ``search.data.FaceSet``; ``target`` a ``targets.Target``. Errors of a single
    candidate (invalid spec, failed conversion, rejected by the target, diverged training)
    are recorded in its trial; an unreachable target stops the run.
    """
    study = open_study(config, space)
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "specs").mkdir(exist_ok=True)
    objective = _Objective(config, space, data, target)
    _recover_interrupted(study, objective.worker)

    objective.progress = _SearchProgress(config, _finished_count(study.get_trials(deepcopy=False)))
    try:
        _optimize(study, objective, config)
    finally:
        objective.progress.close()
    records = write_outputs(study, config.out, config.budget_ms)
    write_summary(records, config)
    return study


def open_study(config: SearchConfig, space: SearchSpace | None = None) -> Any:
    """Create or load the study that ``config`` names and check that it matches this run.

    The default SQLite storage lives in ``config.out``, which is created for it. A stored
    study with another objective or budget raises `StudyError`, because its trials would
    not compare with this run's. Another space or epoch count only logs a warning.
    """
    if config.storage is None:
        config.out.mkdir(parents=True, exist_ok=True)
    storage = _storage(config)
    directions = ["maximize"] if config.objective == "accuracy" else ["maximize", "minimize"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            study_name=config.study_name,
            storage=storage,
            directions=directions,
            load_if_exists=True,
            sampler=_sampler(config),
            pruner=_pruner(config),
        )
    _check_study(study, config, space)
    return study


def study_records(study: Any) -> list[TrialRecord]:
    """Return a record for every finished trial of ``study``, in trial order."""
    return _records(study.get_trials(deepcopy=False))


def _records(trials: Sequence[Any]) -> list[TrialRecord]:
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    records = []
    for trial in trials:
        if trial.state not in finished:
            continue
        attrs = trial.user_attrs
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        constraint = attrs.get(CONSTRAINT_ATTR)
        records.append(
            TrialRecord(
                number=trial.number,
                state=trial.state.name,
                params=dict(trial.params),
                latency_ms=attrs.get("latency_ms"),
                accuracy=trial.values[0] if complete and trial.values else None,
                accuracy_std=attrs.get("accuracy_std"),
                auc=attrs.get("auc"),
                binary_mac_share=attrs.get("binary_mac_share"),
                binary_macs=attrs.get("binary_macs"),
                float_macs=attrs.get("float_macs"),
                params_count=attrs.get("params_count"),
                size_bytes=attrs.get("size_bytes"),
                spec=attrs.get("spec"),
                reason=attrs.get(REASON_ATTR),
                duration_s=trial.duration.total_seconds() if trial.duration else None,
                latency=attrs.get("latency"),
                constraint=constraint,
                feasible=None if constraint is None else constraint <= 0,
                epochs_trained=attrs.get(EPOCHS_ATTR),
                train_seconds=attrs.get("train_seconds"),
                accuracy_by_epoch=attrs.get("accuracy_by_epoch"),
                worker=attrs.get(WORKER_ATTR),
                retry_of=attrs.get(RETRY_OF_ATTR),
                weights=attrs.get("weights"),
            )
        )
    front = {record.number for record in pareto_front(records)}
    for record in records:
        record.pareto_optimal = record.number in front
    return records


def best_feasible(records: list[TrialRecord], budget_ms: float | None = None) -> list[TrialRecord]:
    """Return the completed trials within ``budget_ms``, best accuracy first."""
    feasible = [
        record
        for record in records
        if record.state == "COMPLETE"
        and record.accuracy is not None
        and (budget_ms is None or (record.latency_ms is not None and record.latency_ms <= budget_ms))
    ]
    return sorted(feasible, key=lambda record: (-record.accuracy, record.latency_ms or 0.0))


def pareto_front(records: list[TrialRecord], budget_ms: float | None = None) -> list[TrialRecord]:
    """Return the feasible completed trials no other one beats in accuracy and latency, fastest first.

    A trial is dominated when another is at least as accurate and at least as fast, and
    strictly better in one of the two. This is the set Optuna's ``study.best_trials``
    returns for the pareto objective.
    """
    candidates = [
        record
        for record in best_feasible(records, budget_ms)
        if record.latency_ms is not None and record.feasible is not False
    ]

    def dominated(record: TrialRecord) -> bool:
        return any(
            other.accuracy >= record.accuracy
            and other.latency_ms <= record.latency_ms
            and (other.accuracy > record.accuracy or other.latency_ms < record.latency_ms)
            for other in candidates
        )

    return sorted((record for record in candidates if not dominated(record)), key=lambda record: record.latency_ms)


def write_outputs(study: Any, out: Path, budget_ms: float | None = None) -> list[TrialRecord]:
    """Rewrite ``trials.jsonl`` and ``best.yaml`` from the study, atomically.

    Both files are derived from the study's storage, so an interrupted run never leaves a
    trial in them twice or drops one the storage has. ``best.yaml`` is the most accurate
    feasible spec, read from its file or, when another machine wrote that file, from the
    copy stored in the trial.
    """
    trials = study.get_trials(deepcopy=False)
    records = _records(trials)
    _atomic_write(out / "trials.jsonl", "".join(record.to_json() + "\n" for record in records))

    best = best_feasible(records, budget_ms)
    best_path = out / "best.yaml"
    text = None
    if best:
        if best[0].spec and Path(best[0].spec).is_file():
            text = Path(best[0].spec).read_text(encoding="utf-8")
        else:
            text = next((trial.user_attrs.get("spec_yaml") for trial in trials if trial.number == best[0].number), None)
    if text:
        _atomic_write(best_path, text)
    elif best_path.exists() and not best:
        best_path.unlink()
    return records


def search_summary(records: list[TrialRecord], config: SearchConfig) -> dict[str, Any]:
    """Count outcomes and what the budget screening and pruning saved against full training.

    The reference is training every candidate that converted and was measured for all
    ``config.train.epochs``. Epochs are counted per candidate. The seconds saved are an
    estimate: the mean training seconds per epoch of this study times the epochs saved,
    although candidates differ in size.
    """
    epochs = float(config.train.epochs)
    finished = [record for record in records if not record.interrupted]
    measured = [record for record in finished if record.latency_ms is not None]
    over_budget = [record for record in finished if (record.reason or "").startswith(PRUNED_OVER_BUDGET)]
    pruned_in_training = [
        record for record in finished if record.state == "PRUNED" and (record.epochs_trained or 0) > 0
    ]
    failed = [record for record in finished if record.state == "FAIL"]
    interrupted = [record for record in records if record.interrupted]
    feasible = best_feasible(records, config.budget_ms)

    trained_epochs = sum(record.epochs_trained or 0.0 for record in finished)
    lost_epochs = sum(record.epochs_trained or 0.0 for record in interrupted)
    full_epochs = len(measured) * epochs
    screening_saved = len(over_budget) * epochs
    pruning_saved = sum(epochs - (record.epochs_trained or 0.0) for record in pruned_in_training)
    train_seconds = sum(record.train_seconds or 0.0 for record in records)
    all_epochs = trained_epochs + lost_epochs
    seconds_per_epoch = train_seconds / all_epochs if all_epochs else None
    saved_epochs = max(0.0, full_epochs - trained_epochs)

    best = feasible[0] if feasible else None
    return {
        "objective": config.objective,
        "pruner": config.resolved_pruner,
        "budget_ms": config.budget_ms,
        "epochs_per_candidate": epochs,
        "trials_requested": config.trials,
        "trials_finished": len(finished),
        "states": dict(Counter(record.state for record in records)),
        "feasible": len(feasible),
        "over_budget": len(over_budget),
        "pruned_in_training": len(pruned_in_training),
        "failed": len(failed),
        "interrupted": len(interrupted),
        "candidates_measured": len(measured),
        "epochs_trained": round(trained_epochs, 4),
        "epochs_lost_to_interruptions": round(lost_epochs, 4),
        "epochs_if_all_trained_fully": round(full_epochs, 4),
        "epochs_saved": round(saved_epochs, 4),
        "epochs_saved_by_budget_screening": round(screening_saved, 4),
        "epochs_saved_by_pruning": round(pruning_saved, 4),
        "saved_share": round(saved_epochs / full_epochs, 4) if full_epochs else 0.0,
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": None if seconds_per_epoch is None else round(seconds_per_epoch, 3),
        "estimated_seconds_saved": None if seconds_per_epoch is None else round(seconds_per_epoch * saved_epochs, 1),
        "best": None if best is None else {"number": best.number, "accuracy": best.accuracy, "latency_ms": best.latency_ms},
        "pareto_front": [
            {"number": record.number, "accuracy": record.accuracy, "latency_ms": record.latency_ms}
            for record in pareto_front(records, config.budget_ms)
        ],
        "workers": dict(Counter(record.worker for record in finished if record.worker)),
    }


def write_summary(records: list[TrialRecord], config: SearchConfig) -> dict[str, Any]:
    """Write ``summary.json`` under ``config.out`` and return its content."""
    summary = search_summary(records, config)
    _atomic_write(config.out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def format_savings(summary: dict[str, Any]) -> str:
    """Return one line on the epochs trained against training every measured candidate fully."""
    full = summary["epochs_if_all_trained_fully"]
    if not full:
        return "training: no candidate was measured, so none could be trained"
    line = (
        f"training: {summary['epochs_trained']:g} of {full:g} candidate-epochs "
        f"({100 * (1 - summary['saved_share']):.0f}%); budget screening saved "
        f"{summary['epochs_saved_by_budget_screening']:g} ({summary['over_budget']} candidates), "
        f"pruning saved {summary['epochs_saved_by_pruning']:g} ({summary['pruned_in_training']} candidates)"
    )
    if summary["estimated_seconds_saved"]:
        line += f", about {summary['estimated_seconds_saved'] / 3600:.2f} h of training"
    return line


class _Objective:
    def __init__(self, config: SearchConfig, space: SearchSpace, data: Any, target: Any) -> None:
        self.config = config
        self.space = space
        self.data = data
        self.target = target
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.progress: _SearchProgress | None = None

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        from targets import TargetUnavailable

        trial.set_user_attr(WORKER_ATTR, self.worker)
        try:
            return self._run(trial)
        except TargetUnavailable as error:
            # Not the candidate's fault: queue it again for the next run, then stop this one.
            self._interrupt(trial, f"{INTERRUPTED}: target unavailable: {error}")
            raise
        except KeyboardInterrupt:
            self._interrupt(trial, f"{INTERRUPTED}: worker {self.worker} was stopped (Ctrl-C or SIGTERM)")
            raise
        except (BinaryFaceError, FloatingPointError, MemoryError) as error:
            # A failed candidate is not a failed search: record why and go on. Optuna marks
            # a trial whose objective returns NaN as failed.
            reason = f"{type(error).__name__}: {error}"
            trial.set_user_attr(REASON_ATTR, reason)
            log.warning("trial %d failed: %s", trial.number, reason)
            return float("nan") if self.config.objective == "accuracy" else (float("nan"), float("nan"))
        finally:
            _release_models()

    def _interrupt(self, trial: Any, reason: str) -> None:
        trial.set_user_attr(REASON_ATTR, reason)
        _queue_retry(trial.study, trial.number, trial.params, trial.user_attrs)

    def _run(self, trial: Any) -> float | tuple[float, float]:
        params = {dimension.path: dimension.suggest(trial) for dimension in self.space.dimensions}
        name = f"{self.space.name}_trial{trial.number:04d}"

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeploymentWarning)
            try:
                spec = self.space.spec_for(params, name=name)
            except SpecError as error:
                return self._prune(trial, f"invalid spec: {error}")
        if caught:
            trial.set_user_attr("deployment_warnings", [str(warning.message) for warning in caught][:20])
        spec_yaml = spec.to_yaml()
        spec_path = self.config.out / "specs" / f"{name}.yaml"
        spec_path.write_text(spec_yaml, encoding="utf-8")
        trial.set_user_attr("spec", str(spec_path))
        # The text too, so that a worker on another machine can write best.yaml.
        trial.set_user_attr("spec_yaml", spec_yaml)

        trial.set_user_attr(PHASE_ATTR, "converting")
        model, flatbuffer = self._build_and_convert(trial, spec)
        trial.set_user_attr(PHASE_ATTR, "measuring")
        latency = self._measure(trial, flatbuffer, name)
        constraint = latency - self.config.budget_ms
        trial.set_user_attr(CONSTRAINT_ATTR, constraint)
        _set_latency_constraint(trial, constraint)
        if constraint > 0:
            log.info(
                "trial %d: %.2f ms is over the %g ms budget; pruned before training",
                trial.number, latency, self.config.budget_ms,
            )
            trial.set_user_attr(EPOCHS_ATTR, 0.0)
            return self._prune(trial, f"{PRUNED_OVER_BUDGET}: {latency:.2f} ms > {self.config.budget_ms:g} ms", quiet=True)

        trial.set_user_attr(PHASE_ATTR, "training")
        accuracy = self._train_and_evaluate(trial, spec, model)
        models = self.config.out / "models"
        models.mkdir(exist_ok=True)
        model.save_weights(str(models / f"{name}.weights.h5"))
        trial.set_user_attr("weights", str(models / f"{name}.weights.h5"))
        trial.set_user_attr(PHASE_ATTR, "done")
        return accuracy if self.config.objective == "accuracy" else (accuracy, latency)

    def _build_and_convert(self, trial: Any, spec: Any) -> tuple[Any, bytes]:
        from blocks.build import build_model
        from blocks.convert import audit_flatbuffer, convert_model
        from blocks.stats import model_stats

        model = build_model(spec, seed=self.config.seed)
        stats = model_stats(model)
        trial.set_user_attr("binary_macs", stats.binary_macs)
        trial.set_user_attr("float_macs", stats.float_macs)
        trial.set_user_attr("params_count", stats.params)
        trial.set_user_attr("size_bytes", stats.size_bytes)
        try:
            flatbuffer, messages = convert_model(model)
        except ConversionError as error:
            self._prune(trial, f"conversion failed: {error}")
        audit = audit_flatbuffer(flatbuffer, model, messages=messages)
        trial.set_user_attr("binary_mac_share", audit.binary_kernel_mac_share)
        trial.set_user_attr("lce_ops", audit.op_counts)
        trial.set_user_attr("float_fallbacks", [f"{item.layer}: {item.reason}" for item in audit.float_fallbacks])
        return model, flatbuffer

    def _measure(self, trial: Any, flatbuffer: bytes, name: str) -> float:
        from targets import ModelRejected

        try:
            latency = self.target.measure(flatbuffer, name=name)
        except ModelRejected as error:
            self._prune(trial, f"rejected by the target: {error}")
        trial.set_user_attr("latency_ms", float(latency.median_ms))
        trial.set_user_attr("latency", _plain(latency.to_dict()))
        return float(latency.median_ms)

    def _train_and_evaluate(self, trial: Any, spec: Any, model: Any) -> float:
        """Train a copy of ``model`` whose grouped convs run split, then copy the weights back."""
        from blocks.build import build_model
        from blocks.primitives import split_groups
        from search.train import train_arcface

        data = self.data
        epochs = self.config.train.epochs
        started = time.monotonic()
        with split_groups():
            training_model = build_model(spec, seed=self.config.seed)
        training_model.set_weights(model.get_weights())
        by_epoch: dict[str, float] = {}

        def on_epoch_end(epoch: int, loss: float) -> None:
            trial.set_user_attr("train_loss", loss)
            trial.set_user_attr(EPOCHS_ATTR, float(min(epoch + 1, epochs)))
            trial.set_user_attr("train_seconds", time.monotonic() - started)
            if self.config.prunes and epoch + 1 < epochs:
                accuracy = self._evaluate(training_model)[0]
                by_epoch[str(epoch + 1)] = accuracy
                trial.set_user_attr("accuracy_by_epoch", dict(by_epoch))
                # The step is the number of epochs trained, the resource the pruners count.
                trial.report(accuracy, epoch + 1)
                if trial.should_prune():
                    self._prune(trial, f"pruned after epoch {epoch + 1} of {epochs:g} at accuracy {accuracy:.4f}", quiet=True)

        train_arcface(
            training_model, data.train_images, data.train_labels, data.n_classes, self.config.train,
            on_epoch_end=on_epoch_end, progress=self.config.progress,
        )
        model.set_weights(training_model.get_weights())
        accuracy, result = self._evaluate(training_model)
        trial.set_user_attr("accuracy_std", result.std)
        trial.set_user_attr("auc", result.auc)
        trial.set_user_attr("train_seconds", time.monotonic() - started)
        return accuracy

    def _evaluate(self, model: Any) -> tuple[float, Any]:
        from search.metrics import evaluate_verification, pair_scores
        from search.train import embed

        embeddings = embed(model, self.data.eval_images, flip=self.config.flip)
        result = evaluate_verification(pair_scores(embeddings, self.data.pairs), self.data.issame)
        return float(result.accuracy), result

    def _prune(self, trial: Any, reason: str, *, quiet: bool = False) -> float:
        trial.set_user_attr(REASON_ATTR, reason)
        if not quiet:
            log.warning("trial %d: %s", trial.number, reason)
        raise optuna.TrialPruned(reason)

    def after_trial(self, study: Any, trial: Any) -> None:
        records = write_outputs(study, self.config.out, self.config.budget_ms)
        summary = write_summary(records, self.config)
        best = best_feasible(records, self.config.budget_ms)
        best_text = f"best {best[0].accuracy:.4f} (trial {best[0].number})" if best else "no feasible trial yet"
        latency = trial.user_attrs.get("latency_ms")
        latency_text = f"{latency:.2f} ms" if latency is not None else "no latency"
        if trial.state.name == "COMPLETE":
            outcome = f"accuracy {trial.values[0]:.4f}"
        else:
            outcome = f"{trial.state.name.lower()}: {trial.user_attrs.get(REASON_ATTR, 'no reason recorded')}"
        finished = summary["trials_finished"]
        log.info(
            "trial %d (%d/%d finished): %s, %s, %s params; %d feasible, %s",
            trial.number, finished, self.config.trials, latency_text, outcome,
            f"{trial.user_attrs.get('params_count', 0):,}", len(best), best_text,
        )
        if self.progress is not None:
            self.progress.update(finished, len(best), best[0] if best else None)


class _SearchProgress:
    """A progress bar over the study's finished trials, shown on a terminal only.

    tqdm shows the time per trial; the postfix adds the feasible count and the best trial.
    Without a terminal the INFO line that `_Objective.after_trial` logs per trial carries
    the same numbers.
    """

    def __init__(self, config: SearchConfig, finished: int) -> None:
        self.bar = None
        if config.progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=config.trials, initial=min(finished, config.trials), desc="search", unit="trial", dynamic_ncols=True)

    def update(self, finished: int, feasible: int, best: TrialRecord | None) -> None:
        if self.bar is None:
            return
        best_text = f"best {best.accuracy:.4f} at {best.latency_ms:.2f} ms" if best else "none feasible"
        self.bar.n = min(finished, self.bar.total)
        self.bar.set_postfix_str(f"{feasible} feasible, {best_text}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _optimize(study: Any, objective: _Objective, config: SearchConfig) -> None:
    """Run one trial at a time until the study reaches ``config.trials`` finished trials.

    A worker starts a trial only while finished plus RUNNING trials stay below the target,
    and otherwise waits for the other workers' trials. Workers that check at the same moment
    can both start one, so the study ends with at most ``workers - 1`` trials more than
    requested. A RUNNING trial of a dead worker keeps the others waiting until it is failed
    and queued again: at once on the same host, after ``config.grace_s`` on another.
    """
    waiting = False
    while True:
        _recover_interrupted(study, objective.worker)
        trials = study.get_trials(deepcopy=False)
        finished = _finished_count(trials)
        if finished >= config.trials:
            return
        running = sum(1 for trial in trials if trial.state == optuna.trial.TrialState.RUNNING)
        if finished + running >= config.trials:
            if not waiting:
                waiting = True
                log.info("%d of %d trials finished; waiting for %d running on other workers", finished, config.trials, running)
            time.sleep(config.poll_s)
            continue
        waiting = False
        study.optimize(objective, n_trials=1, callbacks=[objective.after_trial])


def _recover_interrupted(study: Any, worker: str) -> None:
    """Fail and queue again the RUNNING trials of dead workers: on this host and stale elsewhere."""
    _retry_dead_workers(study, worker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _storage(config: SearchConfig) -> Any:
    from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

    url = _with_installed_driver(config.storage_url)
    display_url = config.redacted_storage_url
    # A worker on another machine that dies stops beating; after the grace period the next
    # worker fails its trial and queues the same parameters again.
    kwargs: dict[str, Any] = {"heartbeat_interval": config.heartbeat_s, "grace_period": config.grace_s}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}

    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_stale_trial_callback=_retry_stale_trial, **kwargs)
        except ImportError as error:
            raise StudyError(
                f"no database driver for storage {display_url}: install it, for PostgreSQL with pip install psycopg2-binary"
            ) from error
        except (IntegrityError, ProgrammingError) as error:
            # PostgreSQL's CREATE TABLE IF NOT EXISTS fails in one of two workers that create
            # Optuna's tables at the same moment. The tables exist once the other commits.
            if attempt == attempts:
                raise StudyError(f"cannot create the study tables in {display_url}: {_first_line(error)}") from error
            log.info("storage tables were being created by another worker; retrying (%d of %d)", attempt, attempts - 1)
            time.sleep(attempt)
        except SQLAlchemyError as error:
            raise StudyError(f"cannot open storage {display_url}: {_first_line(error)}") from error
    raise AssertionError("unreachable")


def _with_installed_driver(url: str) -> str:
    """Name psycopg2 in a plain ``postgresql://`` URL when psycopg 3 is missing but psycopg2 is installed.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3 and 2.0 to psycopg2; either driver
    then works with the URL users write.
    """
    import importlib.util

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername != "postgresql":
        return url
    from sqlalchemy.dialects import postgresql

    default = postgresql.dialect.driver
    if importlib.util.find_spec(default) is not None:
        return url
    for driver in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(driver) is not None:
            return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    return url


def _check_study(study: Any, config: SearchConfig, space: SearchSpace | None) -> None:
    """Raise `StudyError` when a stored study was run with another objective or budget."""
    name = config.study_name
    stored_objective = study.user_attrs.get("objective") or ("accuracy" if len(study.directions) == 1 else "pareto")
    if stored_objective != config.objective:
        raise StudyError(
            f"study {name!r} was run with objective {stored_objective!r}, this run asks for {config.objective!r}; "
            f"pass --objective {stored_objective} to resume it, or start a new study with another --study-name or --out"
        )
    stored_budget = study.user_attrs.get("budget_ms")
    if stored_budget is not None and float(stored_budget) != float(config.budget_ms):
        raise StudyError(
            f"study {name!r} was run with a {stored_budget:g} ms budget, this run asks for {config.budget_ms:g} ms; "
            f"pass --budget-ms {stored_budget:g} to resume it, or start a new study with another --study-name or --out"
        )
    stored_epochs = study.user_attrs.get("epochs")
    if stored_epochs is not None and float(stored_epochs) != float(config.train.epochs):
        log.warning(
            "study %r was run with %g epochs per candidate and this run trains %g; their accuracies do not compare",
            name, stored_epochs, config.train.epochs,
        )
    stored_space = study.user_attrs.get("space")
    if space is not None and stored_space is not None and stored_space != space.name:
        log.warning("study %r was run on search space %r and this run samples %r", name, stored_space, space.name)

    expected = {"objective": config.objective, "budget_ms": float(config.budget_ms), "epochs": float(config.train.epochs)}
    if space is not None:
        expected["space"] = space.name
    # The face folder, alignment, seed and command fill the reproduce commands of the report
    # and the model card.
    stored_data = study.user_attrs.get("data")
    if config.data is not None and stored_data is not None and stored_data != config.data:
        log.warning(
            "study %r was run on the face folder %s and this run uses %s; their accuracies do not compare",
            name, stored_data, config.data,
        )
    if config.data is not None:
        expected["data"] = config.data
        expected["seed"] = config.seed
    if config.align is not None:
        expected["align"] = config.align
    if config.command is not None:
        expected["command"] = config.command
    for key, value in expected.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)


def _pruner(config: SearchConfig) -> Any:
    """Return the pruner; its step is the number of epochs a candidate has trained.

    Successive halving keeps the top third of the candidates at 1, 3, 9, ... epochs, so
    only promising ones train for all epochs. Hyperband runs several such schedules with
    different first rungs. The median rule stops a candidate below the median of earlier
    ones at the same epoch, after five candidates.
    """
    name = config.resolved_pruner
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, math.ceil(config.train.epochs)), reduction_factor=3
        )
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def _sampler(config: SearchConfig) -> Any:
    return _TrialSeededSampler(config.seed, config.n_startup_trials)


class _TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE whose random draws for a trial depend only on the study seed and the trial number.

    A resumed study and a second worker sharing the study therefore never replay another
    trial's draws, while a rerun with the same seed draws the same candidates. A fresh
    multivariate TPE sampler, seeded for the trial, samples each trial; TPE keeps no state
    between trials besides its random generator, because it reads the history from the study.
    Trials of other workers that are still running count as bad results (TPE's constant
    liar), so concurrent workers spread out.
    """

    def __init__(self, seed: int, n_startup_trials: int) -> None:
        self.seed = seed
        self.n_startup_trials = n_startup_trials
        self._sampler = self._make(seed)

    def _make(self, seed: int) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.n_startup_trials, multivariate=True, constant_liar=True
            )

    def before_trial(self, study: Any, trial: Any) -> None:
        seed = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
        self._sampler = self._make(seed)
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Sequence[float] | None) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def _set_latency_constraint(trial: Any, value: float) -> None:
    """Store ``value`` as the trial's Optuna constraint (feasible when <= 0)."""
    if hasattr(trial, "set_constraint"):
        trial.set_constraint("latency", value)
    else:
        # NOTE: Optuna before 5.0 has no Trial.set_constraint; its samplers read this system
        # attribute, which is where their constraints_func results go.
        trial.storage.set_trial_system_attr(trial._trial_id, "constraints", [value])


def _queue_retry(study: Any, number: int, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    """Queue ``params`` again unless this candidate was already retried `MAX_RETRIES` times.

    The queued trial carries only the retry count and the first trial's number, not the dead
    worker's attributes, so that no worker mistakes it for that worker's trial.
    """
    retries = int(user_attrs.get(RETRIES_ATTR, 0))
    if retries >= MAX_RETRIES:
        log.warning("trial %d was interrupted %d times; its parameters are not queued again", number, retries + 1)
        return
    first = user_attrs.get(RETRY_OF_ATTR, number)
    study.enqueue_trial(params, user_attrs={RETRY_OF_ATTR: first, RETRIES_ATTR: retries + 1}, skip_if_exists=False)
    log.warning("trial %d was interrupted; its parameters are queued again", number)


def _retry_stale_trial(study: Any, trial: Any) -> None:
    """Heartbeat callback: queue again a trial that Optuna failed because its worker stopped beating."""
    worker = trial.user_attrs.get(WORKER_ATTR, "an unknown worker")
    log.warning("trial %d of %s missed its heartbeat and was failed", trial.number, worker)
    _queue_retry(study, trial.number, trial.params, trial.user_attrs)


def _retry_dead_workers(study: Any, worker: str | None = None) -> None:
    """Fail the RUNNING trials of dead processes on this host and queue their parameters again.

    ``worker`` is this process's ``host:pid``. A RUNNING trial that names it belongs to an
    earlier process with the same pid, because this one runs no trial while it checks.
    """
    host = socket.gethostname()
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get(WORKER_ATTR, "")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit():
            continue
        if owner != worker and _process_alive(int(pid)):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, f"{INTERRUPTED}: worker {owner} died")
            failed = storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker failed it first and queues it.
            continue
        if failed:
            log.warning("trial %d was running on worker %s, which died", trial.number, owner)
            _queue_retry(study, trial.number, trial.params, trial.user_attrs)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finished_count(trials: Sequence[Any]) -> int:
    """Count trials that ran to an outcome; failures of dead workers are retried, not counted."""
    count = 0
    for trial in trials:
        if trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            count += 1
        elif trial.state == optuna.trial.TrialState.FAIL:
            # A failure without a recorded reason is a stale trial that the heartbeat failed
            # and queued again, or a trial whose worker crashed on an unexpected error.
            reason = trial.user_attrs.get(REASON_ATTR, "")
            count += bool(reason) and not reason.startswith(INTERRUPTED)
    return count


def _release_models() -> None:
    """Drop the Keras graph state of the finished trial, which otherwise grows with every model."""
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        tf.keras.backend.clear_session()


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _atomic_write(path: Path, text: str) -> None:
    write_atomically(path, text.encode("utf-8"))
