"""Kill a search worker with SIGKILL while it trains, run the same command again, and check
that the study continues without losing or repeating a finished trial."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import sampler_draws

REPO = Path(__file__).resolve().parents[1]


def search_command(faces: Path, space: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "search.run", "--budget-ms", "1000", "--data", str(faces), "--space", str(space),
        "--trials", "2", "--epochs", "2", "--pruner", "none", "--out", str(out), "--align", "none", "--quiet",
    ]


def training_trial(database: Path) -> int | None:
    """Return the number of the newest RUNNING trial whose phase is training, read from the SQLite study."""
    if not database.exists():
        return None
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        row = connection.execute(
            "SELECT MAX(trials.number) FROM trials JOIN trial_user_attributes AS attrs ON attrs.trial_id = trials.trial_id "
            "WHERE trials.state = 'RUNNING' AND attrs.key = 'phase' AND attrs.value_json = '\"training\"'"
        ).fetchone()
    except sqlite3.OperationalError:
        # The first worker has not created the tables yet.
        return None
    finally:
        connection.close()
    return row[0]


def kill_during_training(process: subprocess.Popen[bytes], database: Path, number: int, timeout_s: float = 600) -> None:
    """SIGKILL ``process`` as soon as trial ``number`` trains."""
    deadline = time.monotonic() + timeout_s
    while (training_trial(database) or -1) < number:
        if process.poll() is not None:
            pytest.fail(f"the search exited with status {process.returncode} before trial {number} trained")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"trial {number} did not start training within {timeout_s} s")
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def load(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="binaryfacenet", storage=f"sqlite:///{out / 'study.db'}")


@pytest.mark.slow
def test_killed_worker_resumes(tmp_path: Path, tiny_space: Path, make_face_folder: Any) -> None:
    faces = make_face_folder([4] * 6, size=(112, 112))
    out = tmp_path / "out"
    command = search_command(faces, tiny_space, out)
    environment = {**os.environ, "PYTHONPATH": str(REPO)}

    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=log)
        kill_during_training(first, out / "study.db", number=1)
    before = {trial.number: trial for trial in load(out).trials}
    second = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)

    assert first.returncode == -signal.SIGKILL
    assert before[0].state.name == "COMPLETE"
    assert before[1].state.name == "RUNNING"
    assert second.returncode == 0, second.stderr[-2000:]
    trials = load(out).trials
    assert [trial.state.name for trial in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[0].values == before[0].values
    assert trials[0].datetime_complete == before[0].datetime_complete
    assert trials[1].user_attrs["reason"] == f"interrupted: worker {socket.gethostname()}:{first.pid} died"
    assert trials[2].params == trials[1].params
    assert trials[2].user_attrs["retry_of"] == 1
    assert [trial.params for trial in trials[:2]] == sampler_draws(tiny_space, seed=0, count=2)

    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [record["number"] for record in records] == [0, 1, 2]
    assert [record["state"] for record in records] == ["COMPLETE", "FAIL", "COMPLETE"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials_finished"] == 2
    assert summary["interrupted"] == 1
    assert "(1 interrupted and run again)" in second.stdout
