"""Device files: every key validated, errors naming the key path and YAML line."""

from __future__ import annotations

from pathlib import Path

import pytest

from targets.device import (
    DEVICES_DIR,
    DeviceFileError,
    apply_overrides,
    list_devices,
    load_device,
    parse_cpu_list,
)

MINIMAL = "connection:\n  host: board.local\n"


def write(tmp_path: Path, text: str, name: str = "board.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", list_devices())
def test_shipped_device_files_load(name: str) -> None:
    config = load_device(name)

    assert config.name == name
    assert config.source == str(DEVICES_DIR / f"{name}.yaml")
    assert config.connection.host_key_policy == "reject"


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    config = load_device(write(tmp_path, MINIMAL))

    assert config.name == "board"
    assert config.connection.host == "board.local"
    assert config.connection.port is None
    assert config.benchmark.mode == "binary"
    assert config.benchmark.command == "lce_benchmark_model"
    assert config.benchmark.num_threads == 1
    assert config.board.max_remeasures == 2
    assert config.retry.retries == 3
    assert config.lock.remote_lock is True


def test_relative_local_paths_follow_file(tmp_path: Path) -> None:
    text = MINIMAL + "  key_file: keys/id_ed25519\n  known_hosts: ~/kh\nlock:\n  lock_dir: locks\n"
    config = load_device(write(tmp_path, text))

    assert config.connection.key_file == str(tmp_path / "keys/id_ed25519")
    assert config.connection.known_hosts == str(Path("~/kh").expanduser())
    assert config.lock.lock_dir == str(tmp_path / "locks")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("connection:\n  host: a\n  hots: b\n", r"board.yaml:3, connection.hots: unknown key 'hots' in section 'connection'"),
        ("connection:\n  host: a\nbenchmarks: {}\n", r"board.yaml:3, benchmarks: unknown top-level key"),
        ("name: x\n", r"connection: missing section"),
        ("connection:\n  port: 22\n", r"connection.host: missing key"),
        ("connection:\n  host: a\n  port: 70000\n", r"board.yaml:3, connection.port: must be at least 1 and at most 65535, got 70000"),
        ("connection:\n  host: a\n  port: '22'\n", r"connection.port: expected an integer, got str '22'"),
        ("connection:\n  host: a\n  host_key_policy: yes\n", r"connection.host_key_policy: must be one of reject, accept-new, got True"),
        ("connection:\n  host: a\nbenchmark:\n  num_runs: 0\n", r"board.yaml:4, benchmark.num_runs: must be at least 1, got 0"),
        ("connection:\n  host: a\nbenchmark:\n  use_xnnpack: 1\n", r"benchmark.use_xnnpack: expected true or false, got int 1"),
        ("connection:\n  host: a\nbenchmark:\n  taskset: 0-x\n", r"benchmark.taskset: expected a CPU list"),
        ("connection:\n  host: a\nbenchmark:\n  taskset: 3-1\n", r"benchmark.taskset: CPU range '3-1' runs backwards"),
        ("connection:\n  host: a\nbenchmark:\n  command: run {model}\n", r"benchmark.command: unknown placeholders \['model'\]"),
        ("connection:\n  host: a\nbenchmark:\n  command: run {runs}\n", r"benchmark.command: a command template must contain \{graph\}"),
        ("connection:\n  host: a\nbenchmark:\n  mode: python\n  command: x\n", r"benchmark.command: is used only with mode: binary"),
        ("connection:\n  host: a\nbenchmark:\n  python: python3\n", r"benchmark.python: is used only with mode: python"),
        ("connection:\n  host: a\nbenchmark:\n  extra_args: --x\n", r"benchmark.extra_args: expected a list of strings"),
        ("connection:\n  host: a\nboard:\n  temperature_limit_c: 0\n", r"board.temperature_limit_c: must be greater than 0"),
        ("connection:\n  host: a\nretry:\n  backoff_factor: 0.5\n", r"retry.backoff_factor: must be at least 1"),
        ("connection:\n  host: a\nlock: 3\n", r"lock: expected a mapping of settings, got int 3"),
        ("connection:\n  host: a\n  host: b\n", r"board.yaml:3, connection.host: duplicate key \(first on line 2\)"),
        ("connection: [\n", r"board.yaml:\d+: invalid YAML"),
        ("- a\n", r"a device file must be a mapping"),
    ],
)
def test_invalid_files_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DeviceFileError, match=message):
        load_device(write(tmp_path, text))


def test_error_attributes(tmp_path: Path) -> None:
    with pytest.raises(DeviceFileError) as caught:
        load_device(write(tmp_path, "connection:\n  host: a\nboard:\n  max_remeasures: -1\n"))

    assert caught.value.path == "board.max_remeasures"
    assert caught.value.line == 4
    assert caught.value.source == str(tmp_path / "board.yaml")


def test_template_with_literal_braces_accepted(tmp_path: Path) -> None:
    text = MINIMAL + "benchmark:\n  command: 'sh -c \"echo {{x}}\" && bench --graph={graph}'\n"

    assert load_device(write(tmp_path, text)).benchmark.command.endswith("--graph={graph}")


def test_overrides_validated(tmp_path: Path) -> None:
    config = load_device(write(tmp_path, MINIMAL), num_runs=7, host="10.0.0.2", taskset="0-1", name="bench")

    assert config.benchmark.num_runs == 7
    assert config.connection.host == "10.0.0.2"
    assert config.benchmark.taskset == "0-1"
    assert config.name == "bench"
    with pytest.raises(DeviceFileError, match="override num_runs: must be at least 1"):
        apply_overrides(config, {"num_runs": 0})
    with pytest.raises(DeviceFileError, match="override num_run: unknown setting"):
        apply_overrides(config, {"num_run": 3})


def test_override_command_in_python_mode(tmp_path: Path) -> None:
    config = load_device(write(tmp_path, MINIMAL + "benchmark:\n  mode: python\n"))

    with pytest.raises(DeviceFileError, match="override command: is used only with mode: binary"):
        apply_overrides(config, {"command": "bench"})


def test_cpu_list_expansion() -> None:
    assert parse_cpu_list("0") == [0]
    assert parse_cpu_list("0-2,5") == [0, 1, 2, 5]


def test_to_dict_round_trips_sections(tmp_path: Path) -> None:
    record = load_device(write(tmp_path, MINIMAL + "benchmark:\n  extra_args: ['--use_caching=true']\n")).to_dict()

    assert record["benchmark"]["extra_args"] == ["--use_caching=true"]
    assert set(record) >= {"connection", "benchmark", "board", "retry", "lock"}
