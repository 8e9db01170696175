"""A throwaway OpenSSH server on 127.0.0.1 for the SSH target's tests.

`SSHServer` writes host and user keys (``ssh-keygen``), an ``sshd_config`` that allows only
that user key, and runs ``/usr/sbin/sshd -D`` as the current user on a free port. It can be
killed (with every process it started) and started again on the same port.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")


def sshd_missing_reason() -> str | None:
    """Return why the tests cannot start sshd, or None when they can."""
    if not SSHD.is_file():
        return f"{SSHD} not found; install openssh-server (.ci/install-sshd.sh)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not found; install openssh-client"
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        try:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
        except OSError as error:
            return f"sshd running as root needs {PRIVSEP_DIR}: {error}"
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def generate_key(path: Path) -> Path:
    """Write an ed25519 key pair without passphrase to ``path`` and ``path.pub``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "binaryface-test", "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when the thread that started it ends."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _descendants(root_pid: int) -> list[int]:
    """Return the process ids below ``root_pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name sits in parentheses and may contain spaces: split after it.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root_pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


class SSHServer:
    """An sshd on 127.0.0.1 that accepts ``user_key`` for the current user.

    ``root`` must not contain spaces, because sshd_config splits its values on them.
    """

    def __init__(self, root: Path, user_key: Path, port: int | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.user_key = user_key
        self.port = port or free_port()
        self.host_key = generate_key(root / "ssh_host_ed25519_key")
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{user_key}.pub").read_text())
        self.config = root / "sshd_config"
        self.log = root / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding no",
                    "X11Forwarding no",
                    "MaxStartups 64",
                    "MaxSessions 64",
                    "Subsystem sftp internal-sftp",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )

    @property
    def host_public_key(self) -> str:
        """The host key as ``TYPE BASE64``."""
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def known_hosts_line(self) -> str:
        """A known_hosts line for this server."""
        return f"[127.0.0.1]:{self.port} {self.host_public_key}\n"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start sshd and wait until it sends its banner."""
        check = subprocess.run([str(SSHD), "-t", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejects {self.config}: {check.stderr.strip()}")
        # Tied to the main thread, so that a crashed test run leaves no sshd behind. A server
        # started from a helper thread would die with that thread, so it is not tied.
        tie = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)], stderr=log, preexec_fn=tie
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with status {self.process.returncode}: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                    if connection.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not answer on port {self.port} within {timeout_s} s")

    def kill(self) -> None:
        """Kill sshd and every process it started (sessions and the commands they run)."""
        if self.process is None:
            return
        pids = [self.process.pid, *_descendants(self.process.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """Stop sshd; sessions still open are killed too."""
        self.kill()
