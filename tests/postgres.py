"""A throwaway PostgreSQL server on 127.0.0.1 for the tests of studies shared by several workers.

`PostgresServer` runs ``initdb`` and ``postgres`` from the installed PostgreSQL (Debian keeps
them in ``/usr/lib/postgresql/VERSION/bin``) with a data folder in a fresh temporary directory,
on a free port, listening on 127.0.0.1 only, with password authentication. initdb refuses to
run as root, so under root both run as the ``postgres`` user that Debian's package creates.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

USER = "binaryface"
PASSWORD = "binaryface-test"
SYSTEM_USER = "postgres"
_PR_SET_PDEATHSIG = 1


def postgres_bin_dir() -> Path | None:
    """Return the folder holding ``initdb`` and ``postgres``: from PATH, else Debian's newest version."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.parent.name)],
    )
    return versions[-1].parent if versions else None


def postgres_missing_reason() -> str | None:
    """Return why the tests cannot start PostgreSQL, or None when they can."""
    if postgres_bin_dir() is None:
        return "initdb not found on PATH or in /usr/lib/postgresql; install PostgreSQL (.ci/install-postgres.sh)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root needs the {SYSTEM_USER!r} user for initdb, which refuses root"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 not installed; pip install psycopg2-binary"
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """A PostgreSQL server with a superuser `USER` and password `PASSWORD`, for tests only.

    The server process is a child of the test process. Started from the main thread, it gets
    SIGQUIT (PostgreSQL's immediate shutdown) when the test process dies, so a crashed test
    run leaves no server behind.
    """

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(postgres_missing_reason() or "initdb not found")
        self.bin_dir = bin_dir
        self.port = free_port()
        # Not under pytest's tmp_path: under root that folder is closed to the postgres user.
        self.root = Path(tempfile.mkdtemp(prefix="binaryface-postgres-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._account = pwd.getpwnam(SYSTEM_USER) if os.geteuid() == 0 else None
        if self._account is not None:
            os.chown(self.root, self._account.pw_uid, self._account.pw_gid)

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def _drop_privileges(self, tie: bool) -> None:
        # Runs in the child between fork and exec.
        if self._account is not None:
            os.setgid(self._account.pw_gid)
            os.setgroups([])
            os.setuid(self._account.pw_uid)
        if tie:
            # Set after setuid, which clears it.
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)

    def start(self, timeout_s: float = 60.0) -> None:
        """Create the cluster, start the server and wait until it accepts connections."""
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._account is not None:
            os.chown(password_file, self._account.pw_uid, self._account.pw_gid)
        initdb = subprocess.run(
            [
                str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER, "-E", "UTF8",
                "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={password_file}",
            ],
            capture_output=True, text=True, timeout=300, preexec_fn=lambda: self._drop_privileges(False),
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb exited with status {initdb.returncode}: {initdb.stderr.strip()[-500:]}")

        tie = threading.current_thread() is threading.main_thread()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
                    "-k", str(self.root), "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=50",
                ],
                stdout=log, stderr=log, preexec_fn=lambda: self._drop_privileges(tie),
            )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with status {self.process.returncode}: {self.log.read_text()[-500:]}")
            try:
                psycopg2.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections on port {self.port} within {timeout_s} s") from None
                time.sleep(0.2)

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        import psycopg2

        connection = psycopg2.connect(self.url())
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown, SIGKILL after 30 s) and delete its files."""
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)
