"""Tests of the study: sampler seeding, pruning, retries of interrupted trials, stopping at
the requested number of trials, the summary, and whole searches on tiny generated faces.

The searches replace LCE conversion and the latency target with stand-ins, so a trial takes
seconds; conversion and the local target run in ``test_run.py``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pytest

from conftest import write_tiny_space
from search.space import load_space
from search.study import (
    INTERRUPTED,
    MAX_RETRIES,
    REASON_ATTR,
    RETRY_OF_ATTR,
    WORKER_ATTR,
    SearchConfig,
    StudyError,
    TrialRecord,
    _finished_count,
    _Objective,
    _optimize,
    _pruner,
    _recover_interrupted,
    _retry_dead_workers,
    _TrialSeededSampler,
    open_study,
    pareto_front,
    run_search,
    search_summary,
    study_records,
)
from search.train import TrainConfig
from targets import Latency, Target


def write_noise_faces(root: Path, identities: int = 6, images: int = 4) -> Path:
    """Write ``identities`` folders of ``images`` random 112x112 PNGs; return ``root``."""
    from PIL import Image

    for identity in range(identities):
        folder = root / f"id{identity}"
        folder.mkdir(parents=True)
        for index in range(images):
            pixels = np.random.default_rng(100 * identity + index).integers(0, 256, (112, 112, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


class ParamsTarget(Target):
    """A target whose latency in ms is the model's parameter count / 1000, sent as the flatbuffer."""

    kind = "params"

    def measure(self, flatbuffer: bytes, *, name: str = "model") -> Latency:
        latency_ms = int(flatbuffer.decode()) / 1000
        return Latency.from_samples([latency_ms] * 3, warmup=0)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "cpu": "none", "options": {}}


def skip_conversion(self: _Objective, trial: Any, spec: Any) -> tuple[Any, bytes]:
    """Build the model and stand in for LCE conversion with its parameter count."""
    from blocks.build import build_model

    model = build_model(spec, seed=self.config.seed)
    trial.set_user_attr("params_count", int(model.count_params()))
    return model, str(model.count_params()).encode()


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from search.data import load_face_folder

    root = write_noise_faces(tmp_path_factory.mktemp("faces") / "faces")
    return load_face_folder(root, align="none", progress=False)


def make_config(out: Path, **overrides: Any) -> SearchConfig:
    settings: dict[str, Any] = dict(budget_ms=1000.0, out=out, trials=2, progress=False, poll_s=0.05)
    settings.update(overrides)
    return SearchConfig(**settings)


def dead_pid() -> int:
    """Return the pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# Sampler ----------------------------------------------------------------------------------


def draw(study: optuna.Study, n_trials: int) -> None:
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("lfe.filters", [32, 64, 96])
        return trial.suggest_float("x", 0.0, 1.0)

    study.optimize(objective, n_trials=n_trials)


def params_by_number(study: optuna.Study) -> dict[int, dict[str, Any]]:
    return {trial.number: trial.params for trial in study.trials}


def test_sampler_draws_depend_on_trial_number(tmp_path: Path) -> None:
    single = optuna.create_study(direction="maximize", sampler=_TrialSeededSampler(7, n_startup_trials=10))
    draw(single, 4)

    url = f"sqlite:///{tmp_path / 'resumed.db'}"
    first = optuna.create_study(storage=url, study_name="s", direction="maximize", sampler=_TrialSeededSampler(7, 10))
    draw(first, 2)
    resumed = optuna.load_study(storage=url, study_name="s", sampler=_TrialSeededSampler(7, 10))
    draw(resumed, 2)

    assert params_by_number(resumed) == params_by_number(single)
    values = [trial.params["x"] for trial in resumed.trials]
    assert len(set(values)) == len(values), "a resumed study replayed a random draw"


def test_sampler_alternating_workers_draw_distinct(tmp_path: Path) -> None:
    single = optuna.create_study(direction="maximize", sampler=_TrialSeededSampler(7, 10))
    draw(single, 4)

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(storage=url, study_name="s", direction="maximize")
    workers = [optuna.load_study(storage=url, study_name="s", sampler=_TrialSeededSampler(7, 10)) for _ in range(2)]
    for turn in range(4):
        draw(workers[turn % 2], 1)

    shared = optuna.load_study(storage=url, study_name="s")
    assert params_by_number(shared) == params_by_number(single)


def test_sampler_seed_changes_draws() -> None:
    studies = []
    for seed in (1, 2):
        study = optuna.create_study(direction="maximize", sampler=_TrialSeededSampler(seed, 10))
        draw(study, 2)
        studies.append(params_by_number(study))

    assert studies[0] != studies[1]


# Pruner and configuration -------------------------------------------------------------------


def test_halving_prunes_worse_second_trial(tmp_path: Path) -> None:
    config = make_config(tmp_path, train=TrainConfig(epochs=9))
    study = optuna.create_study(direction="maximize", pruner=_pruner(config))

    first = study.ask()
    first.report(0.8, 1)
    assert not first.should_prune()
    study.tell(first, 0.9)
    second = study.ask()
    second.report(0.6, 1)

    assert second.should_prune()


def test_hyperband_max_resource_is_epochs(tmp_path: Path) -> None:
    pruner = _pruner(make_config(tmp_path, train=TrainConfig(epochs=7.5), pruner="hyperband"))

    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert pruner._max_resource == 8


@pytest.mark.parametrize("pruner", ["halving", "hyperband", "median"])
def test_pruners_work_with_sampler(tmp_path: Path, pruner: str) -> None:
    config = make_config(tmp_path, pruner=pruner, train=TrainConfig(epochs=9))
    study = optuna.create_study(direction="maximize", sampler=_TrialSeededSampler(0, 3), pruner=_pruner(config))

    def objective(trial: optuna.Trial) -> float:
        quality = trial.suggest_float("x", 0.0, 1.0)
        for epoch in range(1, 9):
            trial.report(quality * epoch / 9, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return quality

    study.optimize(objective, n_trials=20)

    states = [trial.state.name for trial in study.trials]
    assert states.count("PRUNED") > 0
    assert states.count("COMPLETE") > 0


@pytest.mark.parametrize(
    ("objective", "pruner", "epochs", "prunes"),
    [
        ("accuracy", None, 3, True),
        ("accuracy", "median", 3, True),
        ("accuracy", "none", 3, False),
        ("accuracy", None, 1, False),
        ("pareto", None, 3, False),
    ],
)
def test_config_prunes_only_single_objective(tmp_path: Path, objective: str, pruner: str | None, epochs: float, prunes: bool) -> None:
    config = make_config(tmp_path, objective=objective, pruner=pruner, train=TrainConfig(epochs=epochs))

    assert config.prunes is prunes


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"budget_ms": 0.0}, r"latency budget must be a positive number of milliseconds, got 0\.0"),
        ({"budget_ms": float("nan")}, r"latency budget must be a positive number"),
        ({"trials": 0}, r"number of trials must be a positive integer, got 0"),
        ({"objective": "speed"}, r"unknown objective 'speed'; expected one of accuracy, pareto"),
        ({"pruner": "asha"}, r"unknown pruner 'asha'; expected one of halving, hyperband, median, none"),
        ({"objective": "pareto", "pruner": "halving"}, r"pruner 'halving' needs the accuracy objective"),
        ({"storage": "not a url"}, r"^invalid storage URL: expected sqlite:///PATH"),
        ({"heartbeat_s": 60, "grace_s": 30}, r"0 < heartbeat_s < grace_s, got 60 and 30"),
    ],
)
def test_config_rejects_invalid_settings(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(StudyError, match=message):
        make_config(tmp_path, **overrides)


def test_redacted_url_hides_password(tmp_path: Path) -> None:
    config = make_config(tmp_path, storage="postgresql://user:secret@db.example:5432/study")

    assert "secret" not in config.redacted_storage_url
    assert config.redacted_storage_url.startswith("postgresql://user:***@db.example:5432/study")


def test_resume_rejects_other_budget(tmp_path: Path) -> None:
    open_study(make_config(tmp_path))

    with pytest.raises(StudyError, match=r"was run with a 1000 ms budget, this run asks for 50 ms; pass --budget-ms 1000"):
        open_study(make_config(tmp_path, budget_ms=50.0))


def test_resume_rejects_other_objective(tmp_path: Path) -> None:
    open_study(make_config(tmp_path))

    with pytest.raises(StudyError, match=r"was run with objective 'accuracy', this run asks for 'pareto'"):
        open_study(make_config(tmp_path, objective="pareto"))


# Interrupted trials -------------------------------------------------------------------------


def start_running_trial(study: optuna.Study, worker: str) -> optuna.Trial:
    """Start a trial as ``worker`` would, outside ``optimize``, and leave it RUNNING."""
    with warnings.catch_warnings():
        # Optuna warns that a storage with a heartbeat expects Study.optimize.
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()
    trial.suggest_categorical("lfe.filters", [32, 64, 96])
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr(WORKER_ATTR, worker)
    return trial


def test_dead_worker_trial_is_queued_again(tmp_path: Path) -> None:
    study = open_study(make_config(tmp_path))
    worker = f"{socket.gethostname()}:{dead_pid()}"
    trial = start_running_trial(study, worker)

    _retry_dead_workers(study, worker=f"{socket.gethostname()}:{os.getpid()}")
    _retry_dead_workers(study, worker=f"{socket.gethostname()}:{os.getpid()}")

    failed, queued = study.get_trials(deepcopy=False)[0], study.get_trials(deepcopy=False)[1:]
    assert failed.state == optuna.trial.TrialState.FAIL
    assert failed.user_attrs[REASON_ATTR] == f"{INTERRUPTED}: worker {worker} died"
    assert len(queued) == 1
    assert queued[0].state == optuna.trial.TrialState.WAITING
    assert queued[0].system_attrs["fixed_params"] == trial.params
    assert queued[0].user_attrs[RETRY_OF_ATTR] == failed.number
    assert WORKER_ATTR not in queued[0].user_attrs
    assert _finished_count(study.get_trials(deepcopy=False)) == 0


def test_live_worker_trial_is_left_running(tmp_path: Path) -> None:
    study = open_study(make_config(tmp_path))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start_running_trial(study, f"{socket.gethostname()}:{sleeper.pid}")
        _retry_dead_workers(study, worker=f"{socket.gethostname()}:{os.getpid()}")
    finally:
        sleeper.kill()
        sleeper.wait()

    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.RUNNING]


def test_own_pid_trial_counts_as_dead(tmp_path: Path) -> None:
    study = open_study(make_config(tmp_path))
    worker = f"{socket.gethostname()}:{os.getpid()}"
    start_running_trial(study, worker)

    _retry_dead_workers(study, worker=worker)

    assert [trial.state.name for trial in study.trials] == ["FAIL", "WAITING"]


def test_stale_trial_of_other_host_is_queued(tmp_path: Path) -> None:
    study = open_study(make_config(tmp_path, heartbeat_s=1, grace_s=2))
    trial = start_running_trial(study, "other-host:1234")
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)

    _recover_interrupted(study, f"{socket.gethostname()}:{os.getpid()}")

    states = [trial.state.name for trial in study.trials]
    assert states == ["FAIL", "WAITING"]
    assert study.trials[1].user_attrs[RETRY_OF_ATTR] == 0
    assert study.trials[1].system_attrs["fixed_params"] == trial.params


def test_retries_stop_after_max(tmp_path: Path) -> None:
    study = open_study(make_config(tmp_path))
    this_worker = f"{socket.gethostname()}:{os.getpid()}"
    for attempt in range(MAX_RETRIES + 1):
        start_running_trial(study, f"{socket.gethostname()}:{dead_pid()}")
        _retry_dead_workers(study, worker=this_worker)

    states = [trial.state.name for trial in study.trials]
    assert states.count("WAITING") == 0
    assert states.count("FAIL") == MAX_RETRIES + 1
    assert study.trials[-1].user_attrs[RETRY_OF_ATTR] == 0


def test_keyboard_interrupt_queues_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path)
    space = load_space(write_tiny_space(tmp_path / "space"))
    study = open_study(config, space)
    objective = _Objective(config, space, data=None, target=None)

    def interrupted_run(self: _Objective, trial: optuna.Trial) -> float:
        trial.suggest_categorical("lfe.filters", [32, 64])
        raise KeyboardInterrupt

    monkeypatch.setattr(_Objective, "_run", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)

    failed, queued = study.trials
    assert failed.state.name == "FAIL"
    assert failed.user_attrs[REASON_ATTR].startswith(f"{INTERRUPTED}: worker ")
    assert queued.state.name == "WAITING"
    assert queued.system_attrs["fixed_params"] == failed.params


# Stopping at the requested number of trials ---------------------------------------------


class CountingObjective:
    """An objective of a named worker that sleeps 50 ms and returns accuracy 0.5."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.trials = 0

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, self.worker)
        trial.suggest_float("x", 0.0, 1.0)
        time.sleep(0.05)
        self.trials += 1
        return 0.5

    def after_trial(self, study: optuna.Study, trial: Any) -> None:
        pass


def test_optimize_waits_for_other_workers(tmp_path: Path) -> None:
    config = make_config(tmp_path, trials=3)
    study = open_study(config)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = start_running_trial(study, f"{socket.gethostname()}:{sleeper.pid}")
        timer = threading.Timer(2.0, lambda: study.tell(other, 0.7))
        timer.start()
        _optimize(study, CountingObjective("this-host:worker"), config)
        timer.join()
    finally:
        sleeper.kill()
        sleeper.wait()

    states = [trial.state.name for trial in study.trials]
    assert states == ["COMPLETE"] * 3


def test_racing_workers_overshoot_at_most_one(tmp_path: Path) -> None:
    config = make_config(tmp_path, trials=12)
    open_study(config)
    objectives = [CountingObjective(f"this-host:thread{index}") for index in range(2)]

    def work(objective: CountingObjective) -> None:
        study = open_study(config)
        _optimize(study, objective, config)

    threads = [threading.Thread(target=work, args=(objective,)) for objective in objectives]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    trials = open_study(config).trials
    assert config.trials <= len(trials) <= config.trials + len(objectives) - 1
    assert all(trial.state.name == "COMPLETE" for trial in trials)
    assert all(objective.trials > 0 for objective in objectives)


# Records and summary --------------------------------------------------------------------


def record(number: int, state: str, **fields: Any) -> TrialRecord:
    return TrialRecord(number=number, state=state, params={}, **fields)


def test_pareto_front_drops_dominated_and_infeasible() -> None:
    records = [
        record(0, "COMPLETE", accuracy=0.90, latency_ms=50.0, constraint=-50.0, feasible=True),
        record(1, "COMPLETE", accuracy=0.80, latency_ms=20.0, constraint=-80.0, feasible=True),
        record(2, "COMPLETE", accuracy=0.85, latency_ms=60.0, constraint=-40.0, feasible=True),
        record(3, "COMPLETE", accuracy=0.95, latency_ms=150.0, constraint=50.0, feasible=False),
        record(4, "PRUNED", latency_ms=5.0, constraint=-95.0, feasible=True),
        record(5, "COMPLETE", accuracy=0.80, latency_ms=20.0, constraint=-80.0, feasible=True),
    ]

    front = pareto_front(records, budget_ms=100.0)

    assert [item.number for item in front] == [1, 5, 0]


def test_summary_counts_savings(tmp_path: Path) -> None:
    config = make_config(tmp_path, train=TrainConfig(epochs=9), trials=5)
    records = [
        record(0, "COMPLETE", accuracy=0.9, latency_ms=50.0, epochs_trained=9.0, train_seconds=90.0, worker="a:1"),
        record(1, "PRUNED", latency_ms=150.0, epochs_trained=0.0, reason="over budget: 150.00 ms > 100 ms", worker="a:1"),
        record(2, "PRUNED", latency_ms=40.0, epochs_trained=1.0, train_seconds=10.0, reason="pruned after epoch 1", worker="b:2"),
        record(3, "FAIL", latency_ms=40.0, epochs_trained=3.0, train_seconds=30.0, reason="interrupted: worker b:2 died", worker="b:2"),
        record(4, "FAIL", reason="SpecError: invalid", worker="b:2"),
        record(5, "COMPLETE", accuracy=0.8, latency_ms=40.0, epochs_trained=9.0, train_seconds=90.0, worker="b:2"),
    ]

    summary = search_summary(records, config)

    assert summary["trials_finished"] == 5
    assert summary["interrupted"] == 1
    assert summary["over_budget"] == 1
    assert summary["pruned_in_training"] == 1
    assert summary["failed"] == 1
    assert summary["candidates_measured"] == 4
    assert summary["epochs_if_all_trained_fully"] == 36.0
    assert summary["epochs_trained"] == 19.0
    assert summary["epochs_lost_to_interruptions"] == 3.0
    assert summary["epochs_saved_by_budget_screening"] == 9.0
    assert summary["epochs_saved_by_pruning"] == 8.0
    assert summary["epochs_saved"] == 17.0
    assert summary["seconds_per_epoch"] == 10.0
    assert summary["estimated_seconds_saved"] == 170.0
    assert summary["workers"] == {"a:1": 2, "b:2": 3}


# Whole searches -------------------------------------------------------------------------


@pytest.mark.slow
def test_pareto_search_never_trains_over_budget(tmp_path: Path, tiny_faces: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Objective, "_build_and_convert", skip_conversion)
    # lfe.filters 32 gives about 71 k parameters (71 ms), 64 about 97 k (97 ms).
    config = make_config(tmp_path / "out", objective="pareto", budget_ms=85.0, train=TrainConfig(epochs=0.5))
    space = load_space(write_tiny_space(tmp_path / "space"))
    study = open_study(config, space)
    study.enqueue_trial({"lfe.filters": 64, "lfe.kernel_size": 3, "embedding.filters": 32})
    study.enqueue_trial({"lfe.filters": 32, "lfe.kernel_size": 3, "embedding.filters": 32})

    study = run_search(config, space, tiny_faces, ParamsTarget())

    slow, fast = study.trials
    assert slow.state.name == "PRUNED"
    assert re.fullmatch(r"over budget: \d+\.\d\d ms > 85 ms", slow.user_attrs["reason"])
    assert slow.user_attrs["constraint"] > 0
    assert slow.constraints == {"latency": slow.user_attrs["constraint"]}
    assert slow.user_attrs["epochs_trained"] == 0.0
    assert "train_seconds" not in slow.user_attrs
    assert fast.state.name == "COMPLETE"
    assert fast.values[1] == pytest.approx(fast.user_attrs["latency_ms"])
    assert [trial.number for trial in study.best_trials] == [fast.number]
    records = study_records(study)
    assert [item.number for item in pareto_front(records, config.budget_ms)] == [fast.number]
    assert [item.pareto_optimal for item in records] == [False, True]
    summary = json.loads((config.out / "summary.json").read_text())
    assert summary["over_budget"] == 1
    assert summary["epochs_saved_by_budget_screening"] == 0.5
    assert summary["pareto_front"][0]["number"] == fast.number
    lines = (config.out / "trials.jsonl").read_text().splitlines()
    assert [json.loads(line)["number"] for line in lines] == [0, 1]
    assert (config.out / "best.yaml").read_text() == fast.user_attrs["spec_yaml"]


@pytest.mark.slow
def test_halving_stops_worse_candidate_early(tmp_path: Path, tiny_faces: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Objective, "_build_and_convert", skip_conversion)
    # Trial 0 scores 0.9 and trial 1 scores 0.6 after every epoch.
    scores = {"tiny_trial0000": 0.9, "tiny_trial0001": 0.6}
    monkeypatch.setattr(
        _Objective, "_evaluate", lambda self, model: (scores[model.name], SimpleNamespace(std=0.0, auc=0.5))
    )
    config = make_config(tmp_path / "out", train=TrainConfig(epochs=3), trials=2)
    space = load_space(write_tiny_space(tmp_path / "space"))

    study = run_search(config, space, tiny_faces, ParamsTarget())

    first, second = study.trials
    assert first.state.name == "COMPLETE"
    assert first.user_attrs["epochs_trained"] == 3.0
    assert first.user_attrs["accuracy_by_epoch"] == {"1": 0.9, "2": 0.9}
    assert second.state.name == "PRUNED"
    assert second.user_attrs["reason"] == "pruned after epoch 1 of 3 at accuracy 0.6000"
    assert second.user_attrs["epochs_trained"] == 1.0
    summary = json.loads((config.out / "summary.json").read_text())
    assert summary["epochs_saved_by_pruning"] == 2.0
    assert summary["epochs_trained"] == 4.0
