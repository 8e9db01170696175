"""Latency on a board reached over SSH (paramiko), such as a Jetson Nano.

For each model the agent takes the device lock and uploads the flatbuffer with SFTP into a
fresh directory under the board's work directory. It runs ``lce_benchmark_model`` (or the
uploaded `targets.runner`) under ``timeout`` and optionally ``taskset``, parses its output,
reads clocks and temperatures before and after, and removes its files. The connection is
opened on first use and reused until `SSHTarget.close`.
"""

from __future__ import annotations

import base64
import dataclasses
import getpass
import hashlib
import io
import logging
import shlex
import signal
import socket
import string
import time
from pathlib import Path
from typing import Any

import paramiko

from targets import runner as runner_module
from targets.base import (
    BenchmarkTimeout,
    Latency,
    ModelRejected,
    Target,
    TargetError,
    TargetUnavailable,
    TransientTargetError,
    is_tflite_flatbuffer,
)
from targets.device import DeviceConfig, load_device, parse_cpu_list
from targets.lock import DeviceLock, LockTimeout, RemoteLock, lock_owner_token

__all__ = ["CommandResult", "SSHTarget", "parse_board_state", "throttle_reason"]

logger = logging.getLogger(__name__)

RUNNER_PATH = Path(runner_module.__file__).resolve()
DEFAULT_SSH_CONFIG = Path("~/.ssh/config").expanduser()
# Seconds granted past command_timeout_s: `timeout -k 5` needs 5 to kill, plus transfer time.
_KILL_GRACE_S = 5
_DEADLINE_MARGIN_S = 10.0
_POLL_S = 0.02
# Lines that separate the benchmark's output from the board state printed after it.
_BOARD_BEFORE = "==binaryface-board-before=="
_BOARD_AFTER = "==binaryface-board-after=="
_KEEPALIVE_S = 10
# GNU timeout exits 124 when it stopped the command, 137 when it had to SIGKILL it.
_TIMEOUT_STATUSES = (124, 137)
# A shell reports a child killed by signal N as status 128 + N. These signals mean the
# benchmark crashed on the model (LCE does not verify flatbuffers before reading them).
_CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE)


@dataclasses.dataclass
class CommandResult:
    """Exit status and decoded output of one remote command."""

    command: str
    status: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 8) -> str:
        """Return the last ``lines`` non-empty lines of stderr (else stdout), joined with ' | '."""
        text = self.stderr if self.stderr.strip() else self.stdout
        nonempty = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(nonempty[-lines:])


class _CommandTimeout(Exception):
    """A remote command passed its local deadline."""


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"host key of {hostname} is unknown")
        self.hostname = hostname
        self.key = key


def fingerprint(key: paramiko.PKey) -> str:
    """Return the key's OpenSSH-style fingerprint, ``SHA256:<base64>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _RejectUnknownPolicy(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Accept a key for a host that has none yet and append it to the known_hosts file.

    A changed key is still rejected: paramiko raises `BadHostKeyException` before it
    consults the policy.
    """

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        existing = self.known_hosts.read_bytes() if self.known_hosts.is_file() else b""
        separator = "\n" if existing and not existing.endswith(b"\n") else ""
        with open(self.known_hosts, "a", encoding="utf-8") as known_hosts:
            known_hosts.write(f"{separator}{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        logger.warning(
            "accepted the new %s host key %s of %s and added it to %s (host_key_policy: accept-new)",
            key.get_name(),
            fingerprint(key),
            hostname,
            self.known_hosts,
        )


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    """Connection address and credentials after applying the ssh config file."""

    alias: str
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    known_hosts: Path

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def parse_board_state(text: str) -> dict[str, Any]:
    """Parse the output of the board-state script into clocks (kHz), temperatures (°C) and nvpmodel."""
    state: dict[str, Any] = {"cpu_khz": {}, "temperature_c": {}}
    nvpmodel: list[str] = []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "nvpmodel":
            nvpmodel.append(rest.strip())
            continue
        name, _, value = rest.rpartition(" ")
        try:
            number = float(value)
        except ValueError:
            continue
        if kind == "freq" and name:
            state["cpu_khz"][name] = int(number)
        elif kind == "temp" and name:
            state["temperature_c"][name] = number / 1000.0
    if nvpmodel:
        state["nvpmodel"] = " / ".join(line for line in nvpmodel if line)
    return state


def throttle_reason(
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    temperature_limit_c: float | None,
    clock_drop_tolerance: float,
    cpus: list[int] | None = None,
) -> str | None:
    """Return why a measurement looks throttled, or None.

    Throttled means a temperature after the run above ``temperature_limit_c``, or a CPU
    clock (of ``cpus``, all when None) that fell by more than ``clock_drop_tolerance``
    (a fraction) between the readings before and after. A clock that dropped and
    recovered within the run is not visible here.
    """
    reasons = []
    temperatures = after.get("temperature_c", {})
    if temperature_limit_c is not None and temperatures:
        zone, hottest = max(temperatures.items(), key=lambda item: item[1])
        if hottest > temperature_limit_c:
            reasons.append(f"{zone} at {hottest:.1f} °C is above the limit of {temperature_limit_c:g} °C")
    checked = None if cpus is None else {f"cpu{cpu}" for cpu in cpus}
    for cpu, clock_before in before.get("cpu_khz", {}).items():
        clock_after = after.get("cpu_khz", {}).get(cpu)
        if clock_after is None or (checked is not None and cpu not in checked):
            continue
        if clock_after < clock_before * (1.0 - clock_drop_tolerance):
            reasons.append(f"{cpu} clock fell from {clock_before} to {clock_after} kHz")
    return "; ".join(reasons) or None


def _is_template(command: str) -> bool:
    return any(field is not None for _, field, _, _ in string.Formatter().parse(command))


def _safe_file_name(name: str) -> str:
    # Only "/" and NUL cannot appear in a file name; every other character is quoted later.
    cleaned = name.replace("/", "_").replace("\0", "_").strip() or "model"
    if cleaned in (".", ".."):
        cleaned = "model"
    return cleaned[:120] + ".tflite"


class SSHTarget(Target):
    """A board reached over SSH, described by a device file (see ``targets/devices/README.md``).

    Build it with `SSHTarget.from_device` (``get_target("jetson-nano")``). Nothing connects
    until the first `measure` or `describe`.
    """

    kind = "ssh"

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._endpoint_cache: _Endpoint | None = None
        self._remote_info: dict[str, Any] | None = None
        self._has_timeout = True
        # Run directories left behind when a connection dropped; removed after reconnecting.
        self._stale_dirs: list[str] = []
        self._token = lock_owner_token()

    @classmethod
    def from_device(cls, spec: str | Path, **overrides: Any) -> SSHTarget:
        """Load the device file that ``spec`` names (a name or a path) and apply ``overrides``."""
        return cls(load_device(spec, **overrides))

    # ------------------------------------------------------------ connection

    def _endpoint(self) -> _Endpoint:
        if self._endpoint_cache is not None:
            return self._endpoint_cache
        connection = self.config.connection
        options: dict[str, Any] = {}
        if connection.ssh_config is not None:
            path = Path(connection.ssh_config).expanduser()
            if path.is_file():
                options = dict(paramiko.SSHConfig.from_path(str(path)).lookup(connection.host))
            elif path != DEFAULT_SSH_CONFIG:
                raise TargetUnavailable(
                    f"ssh config file not found: {path}; fix connection.ssh_config in {self.config.source or 'the device file'}"
                )
        if "proxycommand" in options or "proxyjump" in options:
            logger.warning(
                "%s: ProxyCommand and ProxyJump in the ssh config are not supported; connecting directly",
                connection.host,
            )

        key_files: tuple[str, ...] = ()
        if connection.key_file is not None:
            if not Path(connection.key_file).is_file():
                raise TargetUnavailable(
                    f"key file not found: {connection.key_file}; fix connection.key_file or remove it to use the SSH agent"
                )
            key_files = (connection.key_file,)
        elif options.get("identityfile"):
            key_files = tuple(
                str(Path(item).expanduser())
                for item in options["identityfile"]
                if Path(item).expanduser().is_file()
            )

        if connection.known_hosts is not None:
            known_hosts = Path(connection.known_hosts)
        elif options.get("userknownhostsfile"):
            known_hosts = Path(options["userknownhostsfile"].split()[0]).expanduser()
        else:
            known_hosts = Path("~/.ssh/known_hosts").expanduser()

        self._endpoint_cache = _Endpoint(
            alias=connection.host,
            hostname=options.get("hostname", connection.host),
            port=connection.port or int(options.get("port", 22)),
            user=connection.user or options.get("user") or getpass.getuser(),
            key_files=key_files,
            known_hosts=known_hosts,
        )
        return self._endpoint_cache

    @property
    def address(self) -> str:
        """``user@host:port`` after the ssh config is applied."""
        endpoint = self._endpoint()
        return f"{endpoint.user}@{endpoint.hostname}:{endpoint.port}"

    def _connect(self) -> paramiko.SSHClient:
        endpoint = self._endpoint()
        connection = self.config.connection
        client = paramiko.SSHClient()
        if endpoint.known_hosts.is_file():
            client.load_host_keys(str(endpoint.known_hosts))
        if connection.host_key_policy == "accept-new":
            client.set_missing_host_key_policy(_AcceptNewPolicy(endpoint.known_hosts))
        else:
            client.set_missing_host_key_policy(_RejectUnknownPolicy())

        timeout = connection.connect_timeout_s
        logger.debug("connecting to %s", self.address)
        try:
            client.connect(
                endpoint.hostname,
                port=endpoint.port,
                username=endpoint.user,
                key_filename=list(endpoint.key_files) or None,
                allow_agent=connection.use_agent,
                look_for_keys=not endpoint.key_files,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=self.config.benchmark.io_timeout_s,
            )
        except _UnknownHostKey as error:
            client.close()
            raise TargetUnavailable(
                f"host key {fingerprint(error.key)} of {error.hostname} is not in {endpoint.known_hosts}; "
                f"check it against the board's /etc/ssh/ssh_host_*_key.pub, then add it with "
                f"`ssh-keyscan -p {endpoint.port} {endpoint.hostname} >> {endpoint.known_hosts}`, "
                "or set connection.host_key_policy: accept-new"
            ) from error
        except paramiko.BadHostKeyException as error:
            client.close()
            raise TargetUnavailable(
                f"host key of {endpoint.known_hosts_name} changed: the server sent {fingerprint(error.key)} but "
                f"{endpoint.known_hosts} expects {fingerprint(error.expected_key)}; if the board was reinstalled, "
                f"run `ssh-keygen -R '{endpoint.known_hosts_name}' -f {endpoint.known_hosts}` and add the new key"
            ) from error
        except paramiko.AuthenticationException as error:
            client.close()
            keys = ", ".join(endpoint.key_files) or "the SSH agent and ~/.ssh/id_*"
            raise TargetUnavailable(
                f"authentication failed for {self.address} with {keys}: {error}; "
                "add the public key to the board's ~/.ssh/authorized_keys or fix connection.key_file and connection.user"
            ) from error
        except socket.gaierror as error:
            client.close()
            raise TargetUnavailable(
                f"cannot resolve host {endpoint.hostname!r}: {error}; fix connection.host in "
                f"{self.config.source or 'the device file'}"
            ) from error
        except (paramiko.SSHException, OSError, EOFError) as error:
            client.close()
            raise TransientTargetError(f"cannot connect to {self.address}: {error or type(error).__name__}") from error

        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(_KEEPALIVE_S)
        logger.info("connected to %s (%s)", self.config.name, self.address)
        return client

    def _ensure_connected(self) -> paramiko.SSHClient:
        if self._client is not None and self._connected():
            return self._client
        self._drop_connection()
        self._client = self._connect()
        try:
            self._probe()
        except BaseException:
            self._drop_connection()
            raise
        self._remove_stale_dirs()
        return self._client

    def _drop_connection(self) -> None:
        sftp, client = self._sftp, self._client
        self._sftp = None
        self._client = None
        for closable in (sftp, client):
            if closable is None:
                continue
            try:
                closable.close()
            except (paramiko.SSHException, OSError, EOFError) as error:
                logger.debug("closing the connection to %s raised %s", self.config.name, error)

    def close(self) -> None:
        """Close the SFTP session and the SSH connection; safe to call repeatedly."""
        if self._client is not None:
            logger.debug("closing the connection to %s", self.address)
        self._drop_connection()

    # ------------------------------------------------------------ remote commands

    def _connected(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def _exec(self, command: str, timeout_s: float, *, reconnect: bool = True) -> CommandResult:
        """Run ``command`` through the board's shell, reading all output before the exit status.

        Reading the exit status first can hang paramiko once the output fills the channel
        window, so output is drained until the status is there. Raises
        `TransientTargetError` when the connection fails (or is down and ``reconnect`` is
        false) and `_CommandTimeout` after ``timeout_s`` seconds.
        """
        if reconnect:
            self._ensure_connected()
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            raise TransientTargetError(f"the connection to {self.address} is closed")
        try:
            channel = transport.open_session(timeout=self.config.benchmark.io_timeout_s)
            channel.exec_command(command)
            channel.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise TransientTargetError(f"cannot start a command on {self.address}: {error}") from error

        stdout, stderr = bytearray(), bytearray()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                received = False
                while channel.recv_ready():
                    stdout += channel.recv(65536)
                    received = True
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(65536)
                    received = True
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if not transport.is_active():
                    raise TransientTargetError(f"the connection to {self.address} was lost while running {command!r}")
                if time.monotonic() > deadline:
                    raise _CommandTimeout(command)
                if not received:
                    time.sleep(_POLL_S)
            status = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise TransientTargetError(f"the connection to {self.address} failed while running {command!r}: {error}") from error
        finally:
            channel.close()
        if status == -1 and not transport.is_active():
            raise TransientTargetError(f"the connection to {self.address} was lost while running {command!r}")
        return CommandResult(command, status, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))

    def _run(self, command: str, *, reconnect: bool = True) -> CommandResult:
        """Run a short housekeeping command with the I/O timeout; a timeout counts as transient."""
        try:
            return self._exec(command, self.config.benchmark.io_timeout_s, reconnect=reconnect)
        except _CommandTimeout as error:
            raise TransientTargetError(
                f"{command!r} on {self.address} timed out after {self.config.benchmark.io_timeout_s:g} s"
            ) from error

    def _run_checked(self, command: str) -> CommandResult:
        result = self._run(command)
        if result.status != 0:
            raise TargetError(f"{command!r} on {self.address} exited with status {result.status}: {result.tail()}")
        return result

    def _probe(self) -> None:
        """Read the board's CPU and check the tools a measurement needs."""
        benchmark = self.config.benchmark
        checks = [
            "echo \"cpu $(grep -m1 -E '^(model name|Hardware|Model)[[:space:]]*:' /proc/cpuinfo | cut -d: -f2-)\"",
            'echo "machine $(uname -m)"',
            'echo "cpus $(nproc 2>/dev/null)"',
            "command -v timeout >/dev/null 2>&1 && echo 'has timeout'",
            "command -v taskset >/dev/null 2>&1 && echo 'has taskset'",
            f"mkdir -p {shlex.quote(benchmark.work_dir)} && echo 'has work_dir'",
        ]
        if benchmark.mode == "python":
            finder = "import importlib.util, sys, numpy; sys.exit(importlib.util.find_spec('larq_compute_engine') is None)"
            checks.append(f"{shlex.quote(benchmark.python)} -c {shlex.quote(finder)} >/dev/null 2>&1 && echo 'has python'")
        elif not _is_template(benchmark.command):
            program = shlex.split(benchmark.command)[0]
            checks.append(f"command -v {shlex.quote(program)} >/dev/null 2>&1 && echo 'has benchmark'")
        result = self._run("; ".join(checks), reconnect=False)

        found = set()
        info: dict[str, Any] = {}
        for line in result.stdout.splitlines():
            key, _, value = line.partition(" ")
            if key == "has":
                found.add(value.strip())
            elif key in ("cpu", "machine", "cpus"):
                info[key] = value.strip()
        where = self.config.source or "the device file"
        if "work_dir" not in found:
            raise TargetUnavailable(
                f"cannot create the work directory {benchmark.work_dir} on {self.address}: {result.tail()}; "
                f"fix benchmark.work_dir in {where}"
            )
        if benchmark.mode == "python" and "python" not in found:
            raise TargetUnavailable(
                f"{benchmark.python} on {self.address} cannot import numpy and larq_compute_engine; install them "
                f"there or set benchmark.python in {where} (LCE has no Python wheel for Linux on ARM: use mode: binary)"
            )
        if benchmark.mode == "binary" and not _is_template(benchmark.command) and "benchmark" not in found:
            raise TargetUnavailable(
                f"benchmark binary {shlex.split(benchmark.command)[0]!r} not found on {self.address}; "
                f"build lce_benchmark_model for the board and set benchmark.command in {where} to its absolute path"
            )
        if benchmark.taskset is not None and "taskset" not in found:
            raise TargetUnavailable(
                f"taskset not found on {self.address}; install util-linux there or remove benchmark.taskset from {where}"
            )
        self._has_timeout = "timeout" in found
        if not self._has_timeout:
            logger.warning(
                "%s has no `timeout` command (GNU coreutils): a hanging benchmark is abandoned but keeps running there",
                self.address,
            )
        self._remote_info = info

    # ------------------------------------------------------------ files

    def _sftp_client(self) -> paramiko.SFTPClient:
        client = self._ensure_connected()
        if self._sftp is None:
            try:
                self._sftp = client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as error:
                raise TransientTargetError(f"cannot open an SFTP session on {self.address}: {error}") from error
            channel = self._sftp.get_channel()
            if channel is not None:
                channel.settimeout(self.config.benchmark.io_timeout_s)
        return self._sftp

    def _upload(self, data: bytes, remote_path: str) -> None:
        sftp = self._sftp_client()
        try:
            sftp.putfo(io.BytesIO(data), remote_path)
        except (paramiko.SSHException, OSError, EOFError) as error:
            if isinstance(error, PermissionError):
                raise TargetUnavailable(f"cannot write {remote_path} on {self.address}: {error}") from error
            raise TransientTargetError(f"uploading {remote_path} to {self.address} failed: {error}") from error

    def _make_run_dir(self) -> str:
        work_dir = self.config.benchmark.work_dir
        command = f"mkdir -p {shlex.quote(work_dir)} && mktemp -d {shlex.quote(work_dir.rstrip('/') + '/run.XXXXXXXX')}"
        result = self._run_checked(command)
        run_dir = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        if not run_dir:
            raise TargetError(f"{command!r} on {self.address} printed no directory")
        return run_dir

    def _remove_run_dir(self, run_dir: str) -> None:
        # Never reconnects: cleanup runs in `finally` blocks, often because the connection dropped.
        try:
            result = self._run(f"rm -rf -- {shlex.quote(run_dir)}", reconnect=False)
        except TargetError as error:
            logger.warning("could not remove %s on %s (%s); removing it after reconnecting", run_dir, self.address, error)
            self._stale_dirs.append(run_dir)
            return
        if result.status != 0:
            logger.warning("could not remove %s on %s: %s", run_dir, self.address, result.tail())

    def _remove_stale_dirs(self) -> None:
        stale, self._stale_dirs = self._stale_dirs, []
        for run_dir in stale:
            logger.info("removing %s left on %s by a dropped connection", run_dir, self.address)
            self._remove_run_dir(run_dir)

    # ------------------------------------------------------------ measuring

    def _benchmark_command(self, model_path: str, runner_path: str | None) -> str:
        benchmark = self.config.benchmark
        if benchmark.mode == "binary" and _is_template(benchmark.command):
            inner = benchmark.command.format(
                graph=shlex.quote(model_path),
                threads=benchmark.num_threads,
                warmup=benchmark.warmup_runs,
                runs=benchmark.num_runs,
            )
        else:
            if benchmark.mode == "python":
                assert runner_path is not None
                program = [benchmark.python, runner_path]
            else:
                program = shlex.split(benchmark.command)
            # min_secs=0 and warmup_min_secs=0 make the run counts exact; by default
            # benchmark_model keeps running until 1 s (0.5 s for warm-up) has passed.
            flags = [
                f"--graph={model_path}",
                f"--num_threads={benchmark.num_threads}",
                f"--warmup_runs={benchmark.warmup_runs}",
                f"--num_runs={benchmark.num_runs}",
                "--warmup_min_secs=0",
                "--min_secs=0",
            ]
            for option in ("use_xnnpack", "use_indirect_bgemm", "use_reference_bconv"):
                value = getattr(benchmark, option)
                if value is not None:
                    flags.append(f"--{option}={str(value).lower()}")
            inner = " ".join(shlex.quote(word) for word in [*program, *flags, *benchmark.extra_args])

        command = f"sh -c {shlex.quote(inner)}"
        if benchmark.taskset is not None:
            command = f"taskset -c {shlex.quote(benchmark.taskset)} {command}"
        if self._has_timeout:
            command = f"timeout -k {_KILL_GRACE_S} {benchmark.command_timeout_s:g} {command}"
        return command

    def _board_state_command(self) -> str:
        root = shlex.quote(self.config.board.sysfs_root.rstrip("/") or "/")
        return (
            "if command -v nvpmodel >/dev/null 2>&1; then nvpmodel -q 2>/dev/null | sed 's/^/nvpmodel /'; fi; "
            f"for f in {root}/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq; do "
            '[ -r "$f" ] && echo "freq $(basename "$(dirname "$(dirname "$f")")") $(cat "$f")"; done; '
            f"for z in {root}/sys/devices/virtual/thermal/thermal_zone*; do "
            '[ -r "$z/temp" ] && echo "temp $(cat "$z/type" 2>/dev/null || basename "$z") $(cat "$z/temp")"; done; '
            "true"
        )

    def _measurement_command(self, run_dir: str, benchmark_command: str) -> str:
        """Wrap the benchmark so that one remote command also reads the board state around it."""
        directory = shlex.quote(run_dir)
        if not self.config.board.read_state:
            return f"cd {directory} || exit 1; {benchmark_command}"
        state = self._board_state_command()
        before, after = shlex.quote(f"{run_dir}/board-before.txt"), shlex.quote(f"{run_dir}/board-after.txt")
        return (
            f"cd {directory} || exit 1; {{ {state}; }} > {before} 2>/dev/null; "
            f"{benchmark_command}; status=$?; {{ {state}; }} > {after} 2>/dev/null; "
            f"echo {_BOARD_BEFORE}; cat {before}; echo {_BOARD_AFTER}; cat {after}; exit $status"
        )

    def _run_benchmark(self, command: str, name: str) -> CommandResult:
        benchmark = self.config.benchmark
        begin = time.monotonic()
        try:
            result = self._exec(command, benchmark.command_timeout_s + _DEADLINE_MARGIN_S)
        except _CommandTimeout as error:
            raise BenchmarkTimeout(
                f"{name}: the benchmark on {self.address} did not finish within "
                f"{benchmark.command_timeout_s:g} s (benchmark.command_timeout_s): {command}"
            ) from error
        elapsed = time.monotonic() - begin
        if result.status in _TIMEOUT_STATUSES and self._has_timeout and elapsed >= benchmark.command_timeout_s:
            raise BenchmarkTimeout(
                f"{name}: the benchmark on {self.address} was stopped after {benchmark.command_timeout_s:g} s "
                f"(benchmark.command_timeout_s), exit status {result.status}: {command}"
            )
        if result.status in (126, 127):
            raise TargetUnavailable(
                f"benchmark command not found or not executable on {self.address} (exit status {result.status}: "
                f"{result.tail(3)}); set benchmark.command in {self.config.source or 'the device file'} "
                "to the absolute path of lce_benchmark_model"
            )
        if benchmark.mode == "python" and result.status == runner_module.EXIT_NO_INTERPRETER:
            raise TargetUnavailable(
                f"{benchmark.python} on {self.address} cannot load larq_compute_engine: {result.tail(3)}"
            )
        crash = {128 + number: number.name for number in _CRASH_SIGNALS}.get(result.status)
        if crash is not None or result.status == 128 + signal.SIGKILL:
            cause = f"crashed with {crash}" if crash else "was killed (SIGKILL), perhaps by the out-of-memory killer"
            raise ModelRejected(
                f"{name}: the benchmark on {self.address} {cause} (exit status {result.status}): {result.tail(3)}"
            )
        if result.status != 0:
            output = result.stdout + "\n" + result.stderr
            if "Benchmarking failed" in output:
                errors = [
                    line.strip().removeprefix("ERROR: ")
                    for line in output.splitlines()
                    if "ERROR" in line and "Benchmarking failed" not in line
                ]
                hint = ""
                if "Grouped binary convolutions are not supported" in output:
                    hint = "; grouped binary convolutions need benchmark.use_indirect_bgemm: true"
                raise ModelRejected(
                    f"{name}: the benchmark on {self.address} could not run the model: "
                    f"{' | '.join(errors[-4:]) or result.tail()}{hint}"
                )
            raise TargetError(
                f"{name}: benchmark exited with status {result.status} on {self.address}: {command}: {result.tail()}"
            )
        return result

    def _latency_from_output(self, result: CommandResult, name: str) -> Latency:
        parsed = runner_module.parse_benchmark_output(result.stdout + "\n" + result.stderr)
        stats = parsed.inference
        if stats is None or stats.count == 0:
            raise TargetError(
                f"{name}: the benchmark output on {self.address} has no timing line (count=...): "
                f"{result.command}: {result.tail()}"
            )
        if stats.median is not None:
            median_us, median_from = stats.median, "reported"
        else:
            median_us, median_from = stats.avg, "avg"
        warmup = parsed.warmup.count if parsed.warmup is not None else self.config.benchmark.warmup_runs
        if parsed.warmup is not None and parsed.warmup.count > 0 and parsed.first_inference_us is not None:
            first_us: float | None = parsed.first_inference_us
        elif parsed.warmup is not None and parsed.warmup.count > 0:
            first_us = parsed.warmup.first
        else:
            first_us = stats.first
        return Latency(
            median_ms=median_us / 1000.0,
            mean_ms=stats.avg / 1000.0,
            std_ms=stats.std / 1000.0,
            min_ms=stats.min / 1000.0,
            max_ms=stats.max / 1000.0,
            runs=stats.count,
            warmup=warmup,
            first_ms=first_us / 1000.0 if first_us is not None else None,
            init_ms=parsed.init_us / 1000.0 if parsed.init_us is not None else None,
            median_from=median_from,
        )

    def _options(self, command: str) -> dict[str, Any]:
        benchmark = self.config.benchmark
        return {
            "mode": benchmark.mode,
            "command": command,
            "num_threads": benchmark.num_threads,
            "warmup_runs": benchmark.warmup_runs,
            "num_runs": benchmark.num_runs,
            "taskset": benchmark.taskset,
            "use_xnnpack": benchmark.use_xnnpack,
            "use_indirect_bgemm": benchmark.use_indirect_bgemm,
            "use_reference_bconv": benchmark.use_reference_bconv,
            "extra_args": list(benchmark.extra_args),
        }

    def _target_info(self) -> dict[str, Any]:
        endpoint = self._endpoint()
        info = dict(self._remote_info or {})
        return {
            "kind": self.kind,
            "name": self.config.name,
            "host": endpoint.hostname,
            "port": endpoint.port,
            "user": endpoint.user,
            "cpu": info.get("cpu", "unknown"),
            "machine": info.get("machine", "unknown"),
            "cpu_count": info.get("cpus", "unknown"),
            "device_file": self.config.source,
        }

    def _measure_once(self, flatbuffer: bytes, name: str) -> Latency:
        self._ensure_connected()
        config = self.config
        remote_lock = None
        if config.lock.remote_lock:
            remote_lock = RemoteLock(
                lambda command: dataclasses.astuple(self._run(command, reconnect=False))[1:],
                config.benchmark.work_dir.rstrip("/") + "/.lock",
                token=self._token,
                stale_s=config.lock.remote_lock_stale_s,
                timeout_s=config.lock.lock_timeout_s,
            )
            remote_lock.acquire()
        run_dir = None
        try:
            run_dir = self._make_run_dir()
            model_path = f"{run_dir}/{_safe_file_name(name)}"
            self._upload(flatbuffer, model_path)
            runner_path = None
            if config.benchmark.mode == "python":
                runner_path = f"{run_dir}/runner.py"
                self._upload(RUNNER_PATH.read_bytes(), runner_path)
            benchmark_command = self._benchmark_command(model_path, runner_path)
            return self._measure_with_board_checks(self._measurement_command(run_dir, benchmark_command), benchmark_command, name)
        finally:
            if run_dir is not None:
                self._remove_run_dir(run_dir)
            if remote_lock is not None:
                try:
                    remote_lock.release()
                except TargetError as error:
                    logger.warning("could not release the board lock on %s: %s", self.address, error)

    def _measure_with_board_checks(self, command: str, benchmark_command: str, name: str) -> Latency:
        board = self.config.board
        cpus = parse_cpu_list(self.config.benchmark.taskset) if self.config.benchmark.taskset else None
        remeasures = 0
        while True:
            logger.debug("%s: running %s", name, command)
            result = self._run_benchmark(command, name)
            output, _, board_text = result.stdout.partition(_BOARD_BEFORE + "\n")
            before_text, _, after_text = board_text.partition(_BOARD_AFTER + "\n")
            before, after = parse_board_state(before_text), parse_board_state(after_text)
            if not board.read_state:
                before, after = {}, {}
            latency = self._latency_from_output(dataclasses.replace(result, stdout=output), name)
            reason = None
            if board.read_state:
                reason = throttle_reason(
                    before,
                    after,
                    temperature_limit_c=board.temperature_limit_c,
                    clock_drop_tolerance=board.clock_drop_tolerance,
                    cpus=cpus,
                )
            latency.board_state = {"before": before, "after": after}
            if reason is None:
                break
            if remeasures >= board.max_remeasures:
                latency.board_state["throttled"] = reason
                logger.warning(
                    "%s: the board still looks throttled after %d re-measures (%s); keeping the last result",
                    name,
                    remeasures,
                    reason,
                )
                break
            remeasures += 1
            logger.warning(
                "%s: %s; re-measuring in %g s (%d of %d)", name, reason, board.cooldown_s, remeasures, board.max_remeasures
            )
            time.sleep(board.cooldown_s)
        latency.remeasures = remeasures
        latency.options = self._options(benchmark_command)
        latency.target = self._target_info()
        return latency

    def measure(self, flatbuffer: bytes, *, name: str = "model") -> Latency:
        """Upload ``flatbuffer``, benchmark it on the board and return its latency.

        Holds the device lock for the whole measurement. Transient failures are retried
        with exponential backoff, reconnecting each time, ``retry.retries`` times.
        """
        if not isinstance(flatbuffer, (bytes, bytearray, memoryview)):
            raise TypeError(f"flatbuffer must be bytes, got {type(flatbuffer).__name__}")
        flatbuffer = bytes(flatbuffer)
        if not is_tflite_flatbuffer(flatbuffer):
            raise ModelRejected(
                f"{name}: not a TFLite flatbuffer ({len(flatbuffer)} bytes without the TFL3 identifier); "
                "pass the bytes that larq_compute_engine.convert_keras_model returns"
            )
        endpoint = self._endpoint()
        retry = self.config.retry
        lock = DeviceLock(
            f"{endpoint.hostname}:{endpoint.port}", self.config.lock.lock_dir, self.config.lock.lock_timeout_s
        )
        with lock:
            started_at = time.time()
            attempt = 0
            while True:
                try:
                    latency = self._measure_once(flatbuffer, name)
                    break
                except LockTimeout:
                    # Waiting lock_timeout_s again would only repeat the same wait.
                    raise
                except TransientTargetError as error:
                    if attempt >= retry.retries:
                        raise TransientTargetError(
                            f"{name}: measuring on {self.config.name} failed after {attempt + 1} attempts: {error}"
                        ) from error
                    delay = min(retry.max_backoff_s, retry.backoff_s * retry.backoff_factor**attempt)
                    attempt += 1
                    logger.warning(
                        "%s: %s; reconnecting in %.1f s (retry %d of %d)", name, error, delay, attempt, retry.retries
                    )
                    self._drop_connection()
                    time.sleep(delay)
            latency.started_at = started_at
            latency.finished_at = time.time()
        logger.debug("%s: %.4f ms on %s", name, latency.median_ms, self.config.name)
        return latency

    def describe(self) -> dict[str, Any]:
        """Return the kind, board address, CPU model and benchmark settings; connects if needed."""
        if self._remote_info is None:
            self._ensure_connected()
        info = self._target_info()
        info["options"] = self._options(self.config.benchmark.command)
        return info
