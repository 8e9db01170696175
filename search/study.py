"""The Optuna study: sample a spec, convert, measure, train and evaluate it under a latency budget.

One trial follows one candidate through the whole pipeline::

    params -> spec (validated) -> Keras model -> LCE flatbuffer + audit -> Target.measure
           -> over budget: pruned before training
           -> else ArcFace training -> verification accuracy on the evaluation pairs

The study maximises verification accuracy subject to latency <= budget. Its storage is SQLite
under the output folder by default, so running the same command again resumes it; trials of a
worker that died are marked failed and their parameters retried.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blocks.errors import BinaryFaceError, ConversionError, SpecError
from blocks.spec import DeploymentWarning
from search.space import SearchSpace
from search.train import TrainConfig

__all__ = ["SearchConfig", "TrialRecord", "run_search", "study_records", "write_outputs"]

log = logging.getLogger(__name__)

WORKER_ATTR = "worker"
REASON_ATTR = "reason"
PRUNED_OVER_BUDGET = "over budget"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search run."""

    budget_ms: float
    out: Path
    trials: int = 20
    study_name: str = "binaryfacenet"
    storage: str | None = None
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    flip: bool = True
    progress: bool = True

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"


@dataclass
class TrialRecord:
    """One finished trial as ``trials.jsonl`` stores it."""

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

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


def run_search(config: SearchConfig, space: SearchSpace, data: Any, target: Any) -> Any:
    """Run trials until ``config.trials`` of them have finished; return the Optuna study.

    ``data`` is a ``search.data.FaceSet``; ``target`` a ``targets.Target``. Errors of a single
    candidate (invalid spec, failed conversion, rejected by the target, diverged training)
    are recorded in its trial; an unreachable target stops the run.
    """
    import optuna

    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "specs").mkdir(exist_ok=True)
    storage = _storage(config)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(
        study_name=config.study_name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=_sampler(config, storage),
    )
    _retry_dead_workers(study)
    objective = _Objective(config, space, data, target)

    while (done := _finished_count(study)) < config.trials:
        log.debug("%d of %d trials finished", done, config.trials)
        study.optimize(objective, n_trials=1, callbacks=[objective.after_trial])
    write_outputs(study, config.out)
    return study


def study_records(study: Any) -> list[TrialRecord]:
    """Return a record for every finished trial of ``study``, in trial order."""
    import optuna

    records = []
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    for trial in study.get_trials(deepcopy=False, states=finished):
        attrs = trial.user_attrs
        records.append(
            TrialRecord(
                number=trial.number,
                state=trial.state.name,
                params=dict(trial.params),
                latency_ms=attrs.get("latency_ms"),
                accuracy=trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None,
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
            )
        )
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


def write_outputs(study: Any, out: Path, budget_ms: float | None = None) -> list[TrialRecord]:
    """Rewrite ``trials.jsonl`` and ``best.yaml`` from the study, atomically.

    Both files are derived from the study's storage, so an interrupted run never leaves a
    trial in them twice or drops one the storage has.
    """
    records = study_records(study)
    _atomic_write(out / "trials.jsonl", "".join(record.to_json() + "\n" for record in records))

    best = best_feasible(records, budget_ms)
    best_path = out / "best.yaml"
    if best and best[0].spec and Path(best[0].spec).is_file():
        _atomic_write(best_path, Path(best[0].spec).read_text(encoding="utf-8"))
    elif best_path.exists() and not best:
        best_path.unlink()
    return records


class _Objective:
    def __init__(self, config: SearchConfig, space: SearchSpace, data: Any, target: Any) -> None:
        self.config = config
        self.space = space
        self.data = data
        self.target = target
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial: Any) -> float:
        from targets import TargetUnavailable

        trial.set_user_attr(WORKER_ATTR, self.worker)
        try:
            return self._run(trial)
        except TargetUnavailable:
            raise
        except (BinaryFaceError, FloatingPointError, MemoryError) as error:
            # A failed candidate is not a failed search: record why and go on. Optuna marks
            # a trial whose objective returns NaN as failed.
            reason = f"{type(error).__name__}: {error}"
            trial.set_user_attr(REASON_ATTR, reason)
            log.warning("trial %d failed: %s", trial.number, reason)
            return float("nan")

    def _run(self, trial: Any) -> float:
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
        spec_path = self.config.out / "specs" / f"{name}.yaml"
        spec_path.write_text(spec.to_yaml(), encoding="utf-8")
        trial.set_user_attr("spec", str(spec_path))

        model, flatbuffer = self._build_and_convert(trial, spec)
        latency = self._measure(trial, flatbuffer, name)
        if latency > self.config.budget_ms:
            log.info(
                "trial %d: %.2f ms is over the %.1f ms budget; pruned before training",
                trial.number, latency, self.config.budget_ms,
            )
            return self._prune(trial, f"{PRUNED_OVER_BUDGET}: {latency:.2f} ms > {self.config.budget_ms:g} ms", quiet=True)

        accuracy = self._train_and_evaluate(trial, spec, model)
        models = self.config.out / "models"
        models.mkdir(exist_ok=True)
        model.save_weights(str(models / f"{name}.weights.h5"))
        trial.set_user_attr("weights", str(models / f"{name}.weights.h5"))
        return accuracy

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
        import optuna

        from blocks.build import build_model
        from blocks.primitives import split_groups
        from search.train import train_arcface

        data = self.data
        started = time.monotonic()
        with split_groups():
            training_model = build_model(spec, seed=self.config.seed)
        training_model.set_weights(model.get_weights())

        def report(epoch: int, loss: float) -> None:
            trial.set_user_attr("train_loss", loss)
            if self.config.train.epochs > 1 and epoch + 1 < self.config.train.epochs:
                accuracy = self._evaluate(training_model)[0]
                trial.report(accuracy, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} at accuracy {accuracy:.4f}")

        train_arcface(
            training_model, data.train_images, data.train_labels, data.n_classes, self.config.train,
            on_epoch_end=report, progress=self.config.progress,
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
        import optuna

        trial.set_user_attr(REASON_ATTR, reason)
        if not quiet:
            log.warning("trial %d: %s", trial.number, reason)
        raise optuna.TrialPruned(reason)

    def after_trial(self, study: Any, trial: Any) -> None:
        records = write_outputs(study, self.config.out, self.config.budget_ms)
        best = best_feasible(records, self.config.budget_ms)
        best_text = f"best {best[0].accuracy:.4f} (trial {best[0].number})" if best else "no feasible trial yet"
        latency = trial.user_attrs.get("latency_ms")
        latency_text = f"{latency:.2f} ms" if latency is not None else "no latency"
        if trial.state.name == "COMPLETE":
            outcome = f"accuracy {trial.value:.4f}"
        else:
            outcome = f"{trial.state.name.lower()}: {trial.user_attrs.get(REASON_ATTR, 'no reason recorded')}"
        log.info(
            "trial %d: %s, %s, %s params; %s",
            trial.number, latency_text, outcome, f"{trial.user_attrs.get('params_count', 0):,}", best_text,
        )


def _storage(config: SearchConfig) -> Any:
    import optuna

    url = config.storage_url
    # A worker on another machine that dies stops beating; after the grace period the next
    # worker fails its trial and the callback queues the same parameters again.
    kwargs: dict[str, Any] = {"heartbeat_interval": 60, "grace_period": 180}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
        return optuna.storages.RDBStorage(url, heartbeat_stale_trial_callback=retry, **kwargs)


def _sampler(config: SearchConfig, storage: Any) -> Any:
    import optuna

    # A resumed study must not replay the first run's random start, so the seed moves on
    # with the number of trials already stored.
    try:
        existing = len(optuna.load_study(study_name=config.study_name, storage=storage).trials)
    except KeyError:
        existing = 0
    return optuna.samplers.TPESampler(seed=config.seed + existing, n_startup_trials=5, multivariate=True)


def _retry_dead_workers(study: Any) -> None:
    """Fail the RUNNING trials of dead processes on this host and enqueue their parameters again."""
    import optuna

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR, "")
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _process_alive(int(pid)):
            continue
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, f"{INTERRUPTED}: worker {worker} died")
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        log.warning("trial %d was interrupted (worker %s died); its parameters are queued again", trial.number, worker)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finished_count(study: Any) -> int:
    """Count trials that ran to an outcome; failures of dead workers are retried, not counted."""
    import optuna

    count = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            count += 1
        elif trial.state == optuna.trial.TrialState.FAIL:
            # Failures without a recorded reason are stale trials that Optuna's heartbeat
            # failed; RetryFailedTrialCallback has queued them again.
            reason = trial.user_attrs.get(REASON_ATTR, "")
            count += bool(reason) and not reason.startswith(INTERRUPTED)
    return count


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
