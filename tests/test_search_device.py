"""A search run whose latencies come from a board over SSH: the loopback sshd in python-runner mode."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from search.run import main as search_main

# 112x112 input as the face data; a float stem, a searched binary conv and a 32-d embedding,
# so that each trial converts in seconds.
TINY_SPEC = """\
name: tiny_face
input_shape: [112, 112, 3]
blocks:
  - block: conv_unit
    name: stem
    filters: 32
    kernel_size: 3
    strides: 4
    bits: 32
  - block: conv_unit
    name: body
    filters: 32
    kernel_size: 3
    strides: 2
    bits: 1
  - block: embedding
    name: embedding
    filters: 32
    kernel_size: 2
    strides: 2
    bits: 32
  - block: output_head
    name: output
    units: 32
"""
TINY_SPACE = """\
name: tiny_face
base_spec: tiny_face.yaml
params:
  body.filters: [32, 64]
  body.kernel_size: [1, 3]
"""


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    folder = tmp_path / "space"
    folder.mkdir()
    (folder / "tiny_face.yaml").write_text(TINY_SPEC)
    path = folder / "tiny_face_space.yaml"
    path.write_text(TINY_SPACE)
    return path


@pytest.mark.slow
def test_search_measures_over_ssh(
    tmp_path: Path,
    tiny_space: Path,
    make_face_folder: Callable[..., Path],
    device_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    faces = make_face_folder([4] * 6, size=(112, 112))
    device = device_file()
    out = tmp_path / "search"

    status = search_main(
        [
            "--budget-ms", "1000", "--data", str(faces), "--space", str(tiny_space), "--target", str(device),
            "--trials", "2", "--epochs", "0.2", "--align", "none", "--out", str(out), "--quiet",
        ]
    )
    captured = capsys.readouterr()
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]

    assert status == 0, captured.err
    assert len(records) == 2
    for record in records:
        latency = record["latency"]
        assert record["latency_ms"] > 0
        assert latency["median_ms"] == record["latency_ms"]
        assert latency["target"]["kind"] == "ssh"
        assert latency["target"]["name"] == "loopback"
        assert latency["target"]["host"] == "127.0.0.1"
        assert latency["target"]["device_file"] == str(device)
        assert latency["options"]["mode"] == "python"
        assert latency["runs"] == 5
        assert latency["warmup"] == 2
    with capsys.disabled():
        for record in records:
            print(
                f"\ntrial {record['number']} over SSH ({record['latency']['target']['user']}@127.0.0.1:"
                f"{record['latency']['target']['port']}): {record['latency_ms']:.3f} ms, {record['state']}, "
                f"params {record['params']}"
            )
