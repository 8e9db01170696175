"""Locks that keep two workers from measuring on one board at the same time.

`DeviceLock` serialises processes on this machine with an ``fcntl`` lock on a file keyed by
``host:port``. The kernel releases it when its holder exits, even after a crash.
`RemoteLock` serialises workers on different machines with an atomic ``mkdir`` of a lock
directory on the board; a crashed holder leaves it behind, so it counts as stale after a
configurable age.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shlex
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from targets.base import TargetError, TransientTargetError

__all__ = ["DeviceLock", "LockTimeout", "RemoteLock", "default_lock_dir", "lock_owner_token"]

logger = logging.getLogger(__name__)

LOCK_DIR_ENV = "BINARYFACE_LOCK_DIR"
_POLL_S = 0.1


class LockTimeout(TransientTargetError):
    """Another worker held the device lock for longer than the lock timeout."""


def default_lock_dir() -> Path:
    """Return ``$BINARYFACE_LOCK_DIR``, else ``$XDG_CACHE_HOME/binaryface/locks`` (``~/.cache`` by default)."""
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "binaryface" / "locks"


def lock_owner_token() -> str:
    """Return a token naming this process uniquely: ``hostname:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class DeviceLock:
    """An exclusive ``fcntl.flock`` on ``LOCK_DIR/<host>_<port>.lock``, held as a context manager.

    Two `DeviceLock` objects for one key exclude each other across processes and across
    threads, because each opens its own file description. The lock is not re-entrant.
    """

    def __init__(self, key: str, lock_dir: str | Path | None = None, timeout_s: float = 1800.0) -> None:
        if not key:
            raise ValueError("lock key must name the device, such as 'jetson-nano.local:22', got ''")
        self.key = key
        self.lock_dir = Path(lock_dir).expanduser() if lock_dir is not None else default_lock_dir()
        self.timeout_s = timeout_s
        self.path = self.lock_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", key) + ".lock")
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Block until the lock is held or ``timeout_s`` passes (`LockTimeout`)."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object; it is not re-entrant")
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout_s
        waiting_logged = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(
                            f"timed out after {self.timeout_s:g} s waiting for the lock on {self.key} "
                            f"({self.path}); another worker is measuring on this device"
                        ) from None
                    if not waiting_logged:
                        logger.info("waiting for the lock on %s held by another worker (%s)", self.key, self.path)
                        waiting_logged = True
                    time.sleep(_POLL_S)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Release the lock; does nothing when it is not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> DeviceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


# Runs a shell command on the board and returns (exit status, stdout, stderr).
RemoteRunner = Callable[[str], tuple[int, str, str]]


class RemoteLock:
    """A lock directory on the board, created with ``mkdir`` (atomic on POSIX file systems).

    The directory contains a file ``owner`` with the holder's token. The same token
    re-acquires it, so a worker that reconnects after a dropped connection carries on. A lock older than ``stale_s`` (by the directory's modification time) is taken
    over with a warning, so a crashed holder blocks others for at most ``stale_s``.
    The age check uses GNU ``stat -c %Y`` on the board.
    """

    def __init__(
        self,
        run: RemoteRunner,
        path: str,
        *,
        token: str,
        stale_s: float = 3600.0,
        timeout_s: float = 1800.0,
        poll_s: float = 1.0,
    ) -> None:
        self.run = run
        self.path = path
        self.token = token
        self.stale_s = stale_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.locked = False

    def _acquire_script(self) -> str:
        lock, token = shlex.quote(self.path), shlex.quote(self.token)
        owner = shlex.quote(self.path + "/owner")
        return (
            f"if mkdir {lock} 2>/dev/null; then printf %s {token} > {owner}; echo acquired; exit 0; fi; "
            f'holder=$(cat {owner} 2>/dev/null); '
            f'if [ "$holder" = {token} ]; then echo acquired; exit 0; fi; '
            f"age=$(( $(date +%s) - $(stat -c %Y {lock} 2>/dev/null || date +%s) )); "
            f'if [ "$age" -gt {int(self.stale_s)} ]; then rm -rf {lock}; '
            f"if mkdir {lock} 2>/dev/null; then printf %s {token} > {owner}; "
            f'echo "stale $holder $age"; exit 0; fi; fi; '
            f'echo "busy $holder $age"'
        )

    def acquire(self) -> None:
        """Create the lock directory, waiting while another worker holds it."""
        deadline = time.monotonic() + self.timeout_s
        waiting_logged = False
        while True:
            status, out, err = self.run(self._acquire_script())
            words = out.split()
            if status != 0 or not words:
                raise TargetError(
                    f"could not take the board lock {self.path} (exit status {status}): {err.strip()[-300:]}"
                )
            if words[0] == "acquired":
                break
            if words[0] == "stale":
                logger.warning(
                    "took over the stale board lock %s from %s (%s s old)", self.path, " ".join(words[1:-1]), words[-1]
                )
                break
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"timed out after {self.timeout_s:g} s waiting for the board lock {self.path} "
                    f"held by {' '.join(words[1:-1]) or 'an unknown worker'}; remove it on the board if that worker is gone"
                )
            if not waiting_logged:
                logger.info("waiting for the board lock %s held by %s", self.path, " ".join(words[1:-1]))
                waiting_logged = True
            time.sleep(self.poll_s)
        self.locked = True

    def release(self) -> None:
        """Remove the lock directory if this token still owns it."""
        if not self.locked:
            return
        lock, token = shlex.quote(self.path), shlex.quote(self.token)
        owner = shlex.quote(self.path + "/owner")
        self.locked = False
        status, _, err = self.run(f'if [ "$(cat {owner} 2>/dev/null)" = {token} ]; then rm -rf {lock}; fi')
        if status != 0:
            logger.warning("could not remove the board lock %s (exit status %s): %s", self.path, status, err.strip())
