"""The SSH agent against a real OpenSSH server on 127.0.0.1 (see tests/sshd.py)."""

from __future__ import annotations

import getpass
import json
import logging
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest_sshd import DeviceFactory
from sshd import SSHServer
from targets import BenchmarkTimeout, ModelRejected, TargetUnavailable, TransientTargetError, get_target
from targets.device import load_device
from targets.lock import LockTimeout
from targets.ssh import SSHTarget, parse_board_state, throttle_reason

REPO = Path(__file__).resolve().parents[1]


def work_dir_of(device: Path) -> Path:
    return Path(load_device(device).benchmark.work_dir)


def leftover_files(work_dir: Path) -> list[str]:
    """Everything under the work directory, which must be empty after a measurement."""
    if not work_dir.exists():
        return []
    return sorted(str(path.relative_to(work_dir)) for path in work_dir.rglob("*"))


def slow_template(binary: Path, marker: Path | None = None, sleep_s: float = 0) -> str:
    """A benchmark command template that touches ``marker`` and sleeps before running."""
    steps = []
    if marker is not None:
        steps.append(f"touch {shlex.quote(str(marker))}")
    if sleep_s:
        steps.append(f"sleep {sleep_s}")
    steps.append(
        f"{shlex.quote(str(binary))} --graph={{graph}} --num_threads={{threads}} "
        "--warmup_runs={warmup} --num_runs={runs} --min_secs=0 --warmup_min_secs=0"
    )
    return " && ".join(steps)


def test_end_to_end_binary_mode(
    device_file: DeviceFactory, fake_benchmark_binary: Path, tiny_models: dict[str, Any]
) -> None:
    device = device_file(
        benchmark={"mode": "binary", "command": str(fake_benchmark_binary), "taskset": "0", "use_indirect_bgemm": True}
    )
    with get_target(str(device)) as target:
        latency = target.measure(tiny_models["grouped"], name="grouped")
        assert isinstance(target, SSHTarget)

    assert latency.runs == 5
    assert latency.warmup == 2
    assert latency.median_from == "reported"
    assert 0 < latency.min_ms <= latency.median_ms <= latency.max_ms
    assert latency.options["taskset"] == "0"
    assert latency.options["use_indirect_bgemm"] is True
    assert "--use_indirect_bgemm=true" in latency.options["command"]
    assert "taskset -c 0" in latency.options["command"]
    assert latency.target["host"] == "127.0.0.1"
    assert latency.target["name"] == "loopback"
    assert leftover_files(work_dir_of(device)) == []


def test_grouped_model_rejected_without_indirect_bgemm(
    device_file: DeviceFactory, tiny_models: dict[str, Any]
) -> None:
    device = device_file(benchmark={"use_indirect_bgemm": False})
    with get_target(str(device)) as target:
        with pytest.raises(ModelRejected, match="grouped binary convolutions need benchmark.use_indirect_bgemm"):
            target.measure(tiny_models["grouped"], name="grouped")

        latency = target.measure(tiny_models["binary"], name="ungrouped")
    assert latency.runs == 5
    assert leftover_files(work_dir_of(device)) == []


def test_one_connection_for_many_models(device_file: DeviceFactory, tiny_models: dict[str, Any]) -> None:
    target = get_target(str(device_file()))
    assert isinstance(target, SSHTarget)
    assert target._client is None

    target.measure(tiny_models["binary"], name="first")
    client = target._client
    target.measure(tiny_models["binary"], name="second")
    assert target._client is client

    target.close()
    assert target._client is None


def test_ssh_config_alias(
    device_file: DeviceFactory, sshd_server: SSHServer, user_key: Path, tmp_path: Path, tiny_models: dict[str, Any]
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host board-alias\n  HostName 127.0.0.1\n  Port {sshd_server.port}\n"
        f"  User {getpass.getuser()}\n  IdentityFile {user_key}\n"
    )
    device = device_file(
        connection={"host": "board-alias", "port": None, "user": None, "key_file": None, "ssh_config": str(config)}
    )
    with get_target(str(device)) as target:
        latency = target.measure(tiny_models["binary"], name="alias")
    assert latency.target["port"] == sshd_server.port
    assert latency.target["host"] == "127.0.0.1"


def test_unknown_host_key_rejected(device_file: DeviceFactory, tmp_path: Path, tiny_models: dict[str, Any]) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    device = device_file(connection={"known_hosts": str(empty)})
    with get_target(str(device)) as target:
        with pytest.raises(TargetUnavailable, match=r"is not in .*empty_known_hosts.*host_key_policy: accept-new"):
            target.measure(tiny_models["binary"])
    assert empty.read_text() == ""


def test_changed_host_key_rejected(
    device_file: DeviceFactory, sshd_server: SSHServer, tmp_path: Path, tiny_models: dict[str, Any]
) -> None:
    other = SSHServer(tmp_path / "other", sshd_server.user_key, port=sshd_server.port)
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(other.known_hosts_line())
    device = device_file(connection={"known_hosts": str(wrong), "host_key_policy": "accept-new"})
    with get_target(str(device)) as target:
        with pytest.raises(TargetUnavailable, match=r"host key of \[127.0.0.1\]:\d+ changed.*ssh-keygen -R"):
            target.measure(tiny_models["binary"])


def test_accept_new_records_key(
    device_file: DeviceFactory, sshd_server: SSHServer, tmp_path: Path, tiny_models: dict[str, Any]
) -> None:
    known_hosts = tmp_path / "new" / "known_hosts"
    device = device_file(connection={"known_hosts": str(known_hosts), "host_key_policy": "accept-new"})
    with get_target(str(device)) as target:
        target.measure(tiny_models["binary"])

    assert known_hosts.read_text() == sshd_server.known_hosts_line()


def test_authentication_failure(device_file: DeviceFactory, tmp_path: Path, tiny_models: dict[str, Any]) -> None:
    from sshd import generate_key

    stranger = generate_key(tmp_path / "stranger")
    device = device_file(connection={"key_file": str(stranger)})
    with get_target(str(device)) as target:
        with pytest.raises(TargetUnavailable, match="authentication failed for .*authorized_keys"):
            target.measure(tiny_models["binary"])


def test_missing_key_file(device_file: DeviceFactory, tmp_path: Path, tiny_models: dict[str, Any]) -> None:
    device = device_file(connection={"key_file": str(tmp_path / "no_such_key")})
    with pytest.raises(TargetUnavailable, match="key file not found"):
        get_target(str(device)).measure(tiny_models["binary"])


def test_missing_benchmark_binary(device_file: DeviceFactory, tiny_models: dict[str, Any]) -> None:
    device = device_file(benchmark={"mode": "binary", "command": "/opt/missing/lce_benchmark_model"})
    with get_target(str(device)) as target:
        with pytest.raises(TargetUnavailable, match="'/opt/missing/lce_benchmark_model' not found .*absolute path"):
            target.measure(tiny_models["binary"])


def test_missing_binary_in_template(device_file: DeviceFactory, tiny_models: dict[str, Any]) -> None:
    device = device_file(benchmark={"mode": "binary", "command": "/opt/missing/benchmark --graph={graph}"})
    with get_target(str(device)) as target:
        with pytest.raises(TargetUnavailable, match="exit status 127"):
            target.measure(tiny_models["binary"])
    assert leftover_files(work_dir_of(device)) == []


def test_remote_python_without_lce(device_file: DeviceFactory, tiny_models: dict[str, Any]) -> None:
    device = device_file(benchmark={"python": "/usr/bin/python3"})
    if subprocess.run(["/usr/bin/python3", "-c", "import numpy, larq_compute_engine"], capture_output=True).returncode == 0:
        pytest.skip("/usr/bin/python3 has larq_compute_engine")
    with get_target(str(device)) as target:
        with pytest.raises(TargetUnavailable, match="cannot import numpy and larq_compute_engine"):
            target.measure(tiny_models["binary"])


def test_hanging_benchmark_times_out(
    device_file: DeviceFactory, fake_benchmark_binary: Path, tiny_models: dict[str, Any]
) -> None:
    device = device_file(
        benchmark={"mode": "binary", "command": slow_template(fake_benchmark_binary, sleep_s=300), "command_timeout_s": 1.5}
    )
    begin = time.monotonic()
    with get_target(str(device)) as target:
        with pytest.raises(BenchmarkTimeout, match="stopped after 1.5 s"):
            target.measure(tiny_models["binary"], name="hang")
    assert time.monotonic() - begin < 30
    assert leftover_files(work_dir_of(device)) == []


def test_model_name_with_shell_metacharacters(
    device_file: DeviceFactory, fake_benchmark_binary: Path, tmp_path: Path, tiny_models: dict[str, Any]
) -> None:
    name = "face net; touch PWNED1 $(touch PWNED2) `touch PWNED3` 'q\" & |x/y"
    for mode in ("python", "binary"):
        overrides = {"mode": "binary", "command": str(fake_benchmark_binary)} if mode == "binary" else {}
        device = device_file(name=f"{mode}.yaml", benchmark=overrides)
        with get_target(str(device)) as target:
            latency = target.measure(tiny_models["binary"], name=name)
        assert latency.runs == 5
        assert leftover_files(work_dir_of(device)) == []
    assert not list(tmp_path.rglob("PWNED*"))
    assert not list(Path.home().glob("PWNED*"))


def test_throttled_board_remeasured(
    device_file: DeviceFactory, tmp_path: Path, tiny_models: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    sysfs = tmp_path / "fake root"
    zone = sysfs / "sys/devices/virtual/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("CPU-therm\n")
    (zone / "temp").write_text("91500\n")
    cpufreq = sysfs / "sys/devices/system/cpu/cpu0/cpufreq"
    cpufreq.mkdir(parents=True)
    (cpufreq / "scaling_cur_freq").write_text("1479000\n")
    device = device_file(board={"sysfs_root": str(sysfs), "temperature_limit_c": 80, "max_remeasures": 2})

    with caplog.at_level(logging.WARNING, logger="targets.ssh"), get_target(str(device)) as target:
        latency = target.measure(tiny_models["binary"], name="hot")

    assert latency.remeasures == 2
    assert latency.board_state["after"]["temperature_c"] == {"CPU-therm": 91.5}
    assert latency.board_state["before"]["cpu_khz"] == {"cpu0": 1479000}
    assert "above the limit of 80" in latency.board_state["throttled"]
    assert "re-measuring" in caplog.text
    assert "still looks throttled after 2 re-measures" in caplog.text


def test_clock_drop_remeasured_once(
    device_file: DeviceFactory, fake_benchmark_binary: Path, tmp_path: Path, tiny_models: dict[str, Any]
) -> None:
    sysfs = tmp_path / "fake root"
    cpufreq = sysfs / "sys/devices/system/cpu/cpu0/cpufreq"
    cpufreq.mkdir(parents=True)
    clock = cpufreq / "scaling_cur_freq"
    clock.write_text("1479000\n")
    # The first run lowers the clock as a governor would; the second finds it low already.
    template = f"echo 918000 > {shlex.quote(str(clock))} && " + slow_template(fake_benchmark_binary)
    device = device_file(
        benchmark={"mode": "binary", "command": template},
        board={"sysfs_root": str(sysfs), "temperature_limit_c": None},
    )
    with get_target(str(device)) as target:
        latency = target.measure(tiny_models["binary"], name="governor")

    assert latency.remeasures == 1
    assert latency.board_state["before"]["cpu_khz"] == {"cpu0": 918000}
    assert "throttled" not in latency.board_state


def _kill_when_started(server: SSHServer, marker: Path, restart_after_s: float | None) -> threading.Thread:
    """Kill ``server`` once the benchmark touched ``marker``; start it again after a pause."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()
        marker.unlink()
        if restart_after_s is not None:
            time.sleep(restart_after_s)
            server.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def own_server(tmp_path: Path, user_key: Path, sshd_server: SSHServer) -> Any:
    """A second sshd that a test may kill and restart."""
    server = SSHServer(tmp_path / "own-sshd", user_key)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_server_killed_then_back(
    device_file: DeviceFactory,
    own_server: SSHServer,
    fake_benchmark_binary: Path,
    tmp_path: Path,
    tiny_models: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "benchmark started"
    device = device_file(
        own_server,
        benchmark={"mode": "binary", "command": slow_template(fake_benchmark_binary, marker, sleep_s=1)},
        retry={"retries": 4, "backoff_s": 0.5, "backoff_factor": 2.0, "max_backoff_s": 2.0},
    )
    thread = _kill_when_started(own_server, marker, restart_after_s=1.0)
    with caplog.at_level(logging.WARNING, logger="targets.ssh"), get_target(str(device)) as target:
        latency = target.measure(tiny_models["binary"], name="survivor")
    thread.join(timeout=30)

    assert latency.runs == 5
    assert "reconnecting in" in caplog.text
    # The run directory of the interrupted attempt is removed after reconnecting; the
    # interrupted benchmark process may outlive it for a moment.
    deadline = time.monotonic() + 5
    while leftover_files(work_dir_of(device)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftover_files(work_dir_of(device)) == []


@pytest.mark.slow
def test_server_killed_for_good(
    device_file: DeviceFactory,
    own_server: SSHServer,
    fake_benchmark_binary: Path,
    tmp_path: Path,
    tiny_models: dict[str, Any],
) -> None:
    marker = tmp_path / "benchmark started"
    device = device_file(
        own_server,
        benchmark={"mode": "binary", "command": slow_template(fake_benchmark_binary, marker, sleep_s=1)},
        retry={"retries": 2, "backoff_s": 0.2, "max_backoff_s": 0.5},
    )
    target = get_target(str(device))
    thread = _kill_when_started(own_server, marker, restart_after_s=None)
    with pytest.raises(TransientTargetError, match=r"failed after 3 attempts: cannot connect to .*Unable to connect"):
        target.measure(tiny_models["binary"], name="orphan")
    thread.join(timeout=30)
    assert len(leftover_files(work_dir_of(device))) > 0

    # Once the board is back, the next measurement removes what the failed one left.
    own_server.start()
    latency = target.measure(tiny_models["binary"], name="next")
    target.close()
    assert latency.runs == 5
    assert leftover_files(work_dir_of(device)) == []


WORKER = """
import json, sys, time
sys.path.insert(0, {repo!r})
from targets import get_target
with get_target({device!r}) as target:
    latency = target.measure(open({model!r}, "rb").read(), name=sys.argv[1])
print(json.dumps([latency.started_at, latency.finished_at]))
"""


def _run_workers(devices: list[Path], model: Path) -> list[tuple[float, float]]:
    workers = []
    for index, device in enumerate(devices):
        script = WORKER.format(repo=str(REPO), device=str(device), model=str(model))
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", script, f"worker-{index}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    intervals = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        intervals.append(tuple(json.loads(out.strip().splitlines()[-1])))
    return sorted(intervals)


def _benchmark_log_template(binary: Path, log: Path) -> str:
    quoted = shlex.quote(str(log))
    return (
        f"echo start $(date +%s.%N) >> {quoted} && sleep 0.5 && "
        + slow_template(binary)
        + f" && echo end $(date +%s.%N) >> {quoted}"
    )


def _spans(log: Path) -> list[tuple[float, float]]:
    events = [line.split() for line in log.read_text().splitlines()]
    return [(float(start[1]), float(end[1])) for start, end in zip(events[::2], events[1::2])]


@pytest.mark.slow
def test_two_processes_serialised_by_local_lock(
    device_file: DeviceFactory, fake_benchmark_binary: Path, tmp_path: Path, tiny_models: dict[str, Any]
) -> None:
    log = tmp_path / "benchmark.log"
    device = device_file(
        benchmark={"mode": "binary", "command": _benchmark_log_template(fake_benchmark_binary, log)},
        lock={"remote_lock": False},
    )
    first, second = _run_workers([device, device], tiny_models["binary_path"])

    assert first[1] <= second[0]
    spans = _spans(log)
    assert [kind for kind, *_ in (line.split() for line in log.read_text().splitlines())] == ["start", "end"] * 2
    assert spans[0][1] <= spans[1][0]


@pytest.mark.slow
def test_two_machines_serialised_by_board_lock(
    device_file: DeviceFactory, fake_benchmark_binary: Path, tmp_path: Path, tiny_models: dict[str, Any]
) -> None:
    log = tmp_path / "benchmark.log"
    template = _benchmark_log_template(fake_benchmark_binary, log)
    # Separate local lock folders stand for two machines that share only the board.
    devices = [
        device_file(name=f"machine{index}.yaml", benchmark={"mode": "binary", "command": template},
                    lock={"lock_dir": str(tmp_path / f"locks{index}")})
        for index in range(2)
    ]
    _run_workers(devices, tiny_models["binary_path"])

    kinds = [line.split()[0] for line in log.read_text().splitlines()]
    assert kinds == ["start", "end"] * 2
    spans = _spans(log)
    assert spans[0][1] <= spans[1][0]
    assert leftover_files(work_dir_of(devices[0])) == []


def test_parse_board_state() -> None:
    text = (
        "nvpmodel NV Power Mode: MAXN\nnvpmodel 0\n"
        "freq cpu0 1479000\nfreq cpu1 1479000\n"
        "temp CPU-therm 45500\ntemp thermal_zone5 30000\nnoise line\n"
    )
    state = parse_board_state(text)

    assert state["nvpmodel"] == "NV Power Mode: MAXN / 0"
    assert state["cpu_khz"] == {"cpu0": 1479000, "cpu1": 1479000}
    assert state["temperature_c"] == {"CPU-therm": 45.5, "thermal_zone5": 30.0}


def test_throttle_reason_rules() -> None:
    cool = {"cpu_khz": {"cpu0": 1479000, "cpu1": 1479000}, "temperature_c": {"CPU": 50.0}}
    slow_cpu1 = {"cpu_khz": {"cpu0": 1479000, "cpu1": 918000}, "temperature_c": {"CPU": 50.0}}
    hot = {"cpu_khz": {"cpu0": 1479000}, "temperature_c": {"CPU": 85.0}}
    rules = {"temperature_limit_c": 80.0, "clock_drop_tolerance": 0.05}

    assert throttle_reason(cool, cool, **rules) is None
    assert throttle_reason(cool, slow_cpu1, **rules) == "cpu1 clock fell from 1479000 to 918000 kHz"
    assert throttle_reason(cool, slow_cpu1, cpus=[0], **rules) is None
    assert throttle_reason(cool, hot, **rules) == "CPU at 85.0 °C is above the limit of 80 °C"
    assert throttle_reason(cool, hot, temperature_limit_c=None, clock_drop_tolerance=0.05) is None
    assert throttle_reason({}, {}, **rules) is None


def test_jetson_nano_example_builds_without_connecting() -> None:
    target = get_target("jetson-nano")

    assert isinstance(target, SSHTarget)
    assert target.config.connection.host == "jetson-nano.local"
    assert target.config.benchmark.taskset == "0"
    assert target._client is None
    target.close()


def test_board_lock_timeout_not_retried(device_file: DeviceFactory, tiny_models: dict[str, Any]) -> None:
    device = device_file(lock={"lock_timeout_s": 1.0}, retry={"retries": 3, "backoff_s": 0.1})
    foreign = work_dir_of(device) / ".lock"
    foreign.mkdir(parents=True)
    (foreign / "owner").write_text("other-machine:42:abcd")

    begin = time.monotonic()
    with get_target(str(device)) as target:
        with pytest.raises(LockTimeout, match="board lock .* held by other-machine:42:abcd"):
            target.measure(tiny_models["binary"])
    assert time.monotonic() - begin < 10
    assert (foreign / "owner").read_text() == "other-machine:42:abcd"
