"""Two search workers sharing one study through a real PostgreSQL server on 127.0.0.1.

The server comes from the installed PostgreSQL (``.ci/install-postgres.sh``); the tests skip
when initdb or psycopg2 is missing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import sampler_draws
from postgres import PASSWORD, PostgresServer, postgres_missing_reason
from search.run import main
from search.study import _finished_count, _with_installed_driver

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
TRIALS = 3


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this module's tests; skips when PostgreSQL is not installed."""
    reason = postgres_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def worker_command(faces: Path, space: Path, out: Path, storage: str) -> list[str]:
    return [
        sys.executable, "-m", "search.run", "--budget-ms", "1000", "--data", str(faces), "--space", str(space),
        "--trials", str(TRIALS), "--epochs", "0.2", "--storage", storage, "--out", str(out), "--align", "none", "--quiet",
    ]


@pytest.mark.slow
def test_two_workers_share_study(tmp_path: Path, tiny_space: Path, make_face_folder: Any, postgres_server: PostgresServer) -> None:
    faces = make_face_folder([4] * 6, size=(112, 112))
    storage = postgres_server.create_database("two_workers")
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    outs = [tmp_path / f"worker{index}" for index in range(WORKERS)]

    processes, logs = [], []
    for out in outs:
        logs.append(open(tmp_path / f"{out.name}.log", "w+"))
        command = worker_command(faces, tiny_space, out, storage)
        processes.append(subprocess.Popen(command, cwd=REPO, env=environment, stdout=logs[-1], stderr=subprocess.STDOUT, text=True))
    try:
        statuses = [process.wait(timeout=900) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()

    assert statuses == [0] * WORKERS, outputs
    study = optuna.load_study(study_name="binaryfacenet", storage=_with_installed_driver(storage))
    trials = study.trials
    finished = _finished_count(trials)
    # Workers that check the count at the same moment can each start one more trial.
    assert TRIALS <= finished <= TRIALS + WORKERS - 1
    assert [trial.number for trial in trials] == list(range(len(trials)))
    assert all(trial.state.name in ("COMPLETE", "PRUNED") for trial in trials)
    expected_workers = {f"{socket.gethostname()}:{process.pid}" for process in processes}
    assert {trial.user_attrs["worker"] for trial in trials} == expected_workers
    # Each trial has its own random draw, so the workers never sample the same sequence.
    assert [trial.params for trial in trials] == sampler_draws(tiny_space, seed=0, count=len(trials))
    for out, output in zip(outs, outputs):
        summary = json.loads((out / "summary.json").read_text())
        records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
        assert summary["trials_finished"] == finished
        assert set(summary["workers"]) == expected_workers
        assert [record["number"] for record in records] == [trial.number for trial in trials]
        assert f"\n{finished} trials: " in "\n" + output


def test_wrong_password_one_line(
    tmp_path: Path, tiny_space: Path, make_face_folder: Any, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    faces = make_face_folder([3] * 6, size=(112, 112))
    storage = postgres_server.url().replace(PASSWORD, "wrong-secret")
    out = tmp_path / "out"

    status = main(
        [
            "--budget-ms", "100", "--data", str(faces), "--space", str(tiny_space), "--storage", storage,
            "--out", str(out), "--align", "none", "--quiet",
        ]
    )

    stderr = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith(f"error: cannot open storage postgresql://binaryface:***@127.0.0.1:{postgres_server.port}/postgres: ")
    assert "password authentication failed" in stderr[0]
    assert "wrong-secret" not in stderr[0]
    assert not out.exists()
