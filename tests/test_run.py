"""Tests of ``python -m search.run``: one-line errors for bad input, and whole searches through
``main()`` on generated faces and on AT&T faces from the shared data folder."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest

from search.run import main, recorded_command

ERROR_CASES = [
    (
        "missing data folder",
        ["--data", "{tmp}/nowhere"],
        r"face folder not found: .*/nowhere \(expected a folder with one subfolder per identity\)",
    ),
    (
        "one identity",
        ["--data", "{one_identity}"],
        r"has 1 identity folder\(s\) with image files; at least two are needed, one subfolder of .* files per identity",
    ),
    ("zero budget", ["--budget-ms", "0"], r"--budget-ms must be a positive number of milliseconds, got 0 \(run python -m search.run --help"),
    ("negative budget", ["--budget-ms", "-5"], r"--budget-ms must be a positive number of milliseconds, got -5 "),
    ("missing budget", ["--budget-ms"], r"argument --budget-ms: expected one argument"),
    ("zero trials", ["--trials", "0"], r"--trials must be a positive integer, got 0"),
    ("unknown objective", ["--objective", "speed"], r"argument --objective: invalid choice: 'speed'"),
    ("pruner with pareto", ["--objective", "pareto", "--pruner", "halving"], r"--pruner halving needs --objective accuracy"),
    ("unknown target kind", ["--target", "nosuch:thing"], r"invalid --target 'nosuch:thing': no device named 'nosuch:thing'"),
    ("missing space", ["--space", "{tmp}/nowhere.yaml"], r"nowhere\.yaml: cannot read search space: No such file or directory"),
    ("invalid space", ["--space", "{bad_space}"], r"bad_space\.yaml, colour: unknown key; allowed: base_spec, description, name, params"),
    ("invalid spec", ["--space", "{bad_spec_space}"], r"bad_spec\.yaml:6, blocks\[0\]\.filters: must be positive, got -3"),
    ("invalid storage", ["--storage", "not a url"], r"invalid storage URL: expected sqlite:///PATH or postgresql://"),
]


@pytest.fixture
def bad_inputs(tmp_path: Path, tiny_space: Path, make_face_folder: Any) -> dict[str, str]:
    """Paths that the error cases name: a good space and faces, and broken variants."""
    faces = make_face_folder([3] * 6, size=(112, 112))
    one_identity = make_face_folder([3], name="one", size=(112, 112))
    bad_space = tmp_path / "bad_space.yaml"
    bad_space.write_text(tiny_space.read_text() + "colour: red\n")
    bad_spec = tmp_path / "bad_spec.yaml"
    bad_spec.write_text((tiny_space.parent / "tiny.yaml").read_text().replace("filters: 32\n    kernel_size: 3\n    strides: 4", "filters: -3\n    kernel_size: 3\n    strides: 4"))
    bad_spec_space = tmp_path / "bad_spec_space.yaml"
    bad_spec_space.write_text(tiny_space.read_text().replace("base_spec: tiny.yaml", f"base_spec: {bad_spec}"))
    return {
        "tmp": str(tmp_path),
        "faces": str(faces),
        "space": str(tiny_space),
        "one_identity": str(one_identity),
        "bad_space": str(bad_space),
        "bad_spec_space": str(bad_spec_space),
    }


@pytest.mark.parametrize(("case", "arguments", "message"), ERROR_CASES, ids=[case[0] for case in ERROR_CASES])
def test_bad_input_one_line_error(
    tmp_path: Path, bad_inputs: dict[str, str], capsys: pytest.CaptureFixture[str], case: str, arguments: list[str], message: str
) -> None:
    out = tmp_path / "out"
    defaults = {"--budget-ms": "100", "--data": bad_inputs["faces"], "--space": bad_inputs["space"], "--trials": "1"}
    named = {arguments[index] for index in range(0, len(arguments), 2)}
    argv = [item.format(**bad_inputs) for item in arguments]
    for option, value in defaults.items():
        if option not in named:
            argv += [option, value]
    argv += ["--out", str(out), "--align", "none", "--quiet"]

    status = main(argv)

    stderr = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith("error: ")
    assert re.search(message, stderr[0]), stderr[0]
    assert not out.exists()


@pytest.mark.slow
def test_main_searches_generated_faces(tmp_path: Path, tiny_space: Path, make_face_folder: Any, capsys: pytest.CaptureFixture[str]) -> None:
    faces = make_face_folder([4] * 6, size=(112, 112))
    out = tmp_path / "out"

    status = main(
        [
            "--budget-ms", "1000", "--data", str(faces), "--space", str(tiny_space), "--trials", "2",
            "--epochs", "1.5", "--pruner", "halving", "--out", str(out), "--align", "none", "--quiet",
        ]
    )

    stdout = capsys.readouterr().out
    assert status == 0
    assert stdout.startswith("2 trials: ")
    assert "best feasible candidates:" in stdout
    assert "\ntraining: " in stdout
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert summary["trials_finished"] == 2
    assert summary["pruner"] == "halving"
    assert [record["number"] for record in records] == [0, 1]
    assert records[0]["state"] == "COMPLETE"
    assert records[0]["accuracy_by_epoch"].keys() == {"1"}
    assert records[0]["epochs_trained"] == 1.5
    assert summary["epochs_trained"] == sum(record["epochs_trained"] for record in records)
    assert (out / "best.yaml").is_file()
    assert (out / "models" / "tiny_trial0000.weights.h5").is_file()
    attrs = optuna.load_study(study_name="binaryfacenet", storage=f"sqlite:///{out / 'study.db'}").user_attrs
    assert attrs["data"] == str(faces.resolve())
    assert attrs["align"] == "none"
    assert attrs["seed"] == 0
    assert attrs["command"].startswith(f"python -m search.run --budget-ms 1000 --data {faces} ")


def test_main_warns_on_another_face_folder(
    tmp_path: Path, tiny_space: Path, make_face_folder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_face_folder([4] * 6, name="first", size=(112, 112))
    second = make_face_folder([4] * 5, name="second", size=(112, 112))
    common = ["--budget-ms", "1000", "--space", str(tiny_space), "--trials", "1", "--epochs", "0.2",
              "--out", str(tmp_path / "out"), "--align", "none", "--quiet"]
    assert main(["--data", str(first), *common]) == 0

    with caplog.at_level("WARNING", logger="search.study"):
        status = main(["--data", str(second), *common])

    assert status == 0
    assert f"was run on the face folder {first.resolve()} and this run uses {second.resolve()}" in caplog.text


def test_recorded_command_hides_passwords() -> None:
    command = recorded_command(["--budget-ms", "5", "--storage", "postgresql://user:secret@127.0.0.1:5432/db"])

    assert command == "python -m search.run --budget-ms 5 --storage 'postgresql://user:***@127.0.0.1:5432/db'"


@pytest.mark.slow
def test_main_searches_att_faces(tmp_path: Path, shared_dir: Path, tiny_space: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = shared_dir / "data" / "att_faces"
    if not source.is_dir():
        pytest.skip(f"AT&T faces not found at {source}")
    faces = tmp_path / "att"
    for identity in range(1, 9):
        shutil.copytree(source / f"s{identity}", faces / f"s{identity}")
    out = tmp_path / "out"

    status = main(
        [
            "--budget-ms", "1000", "--data", str(faces), "--space", str(tiny_space), "--trials", "2",
            "--epochs", "0.2", "--objective", "pareto", "--out", str(out), "--align", "none", "--quiet",
        ]
    )

    stdout = capsys.readouterr().out
    assert status == 0
    assert "feasible Pareto front" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "pareto"
    assert summary["trials_finished"] == 2
    assert summary["pareto_front"], summary
