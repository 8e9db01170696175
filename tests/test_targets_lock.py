"""Device locks: the fcntl lock across processes and the mkdir lock on a board."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from targets.lock import DeviceLock, LockTimeout, RemoteLock, default_lock_dir

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from targets.lock import DeviceLock
with DeviceLock("board:22", {lock_dir!r}):
    print("locked", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_lock_excludes_other_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(repo=str(REPO), lock_dir=str(tmp_path)), "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockTimeout, match="timed out after 0.3 s waiting for the lock on board:22"):
            DeviceLock("board:22", tmp_path, timeout_s=0.3).acquire()
    finally:
        holder.kill()
        holder.wait()

    # The kernel released the lock of the killed holder.
    with DeviceLock("board:22", tmp_path, timeout_s=5) as lock:
        assert lock.locked
    assert not lock.locked


def test_lock_excludes_second_object_in_process(tmp_path: Path) -> None:
    with DeviceLock("board:22", tmp_path):
        with pytest.raises(LockTimeout):
            DeviceLock("board:22", tmp_path, timeout_s=0.2).acquire()
        with DeviceLock("other:22", tmp_path, timeout_s=0.2) as other:
            assert other.locked


def test_lock_file_name_sanitised(tmp_path: Path) -> None:
    lock = DeviceLock("[fe80::1%eth0]:22", tmp_path)

    assert lock.path.parent == tmp_path
    assert lock.path.name == "_fe80__1_eth0__22.lock"


def test_lock_not_reentrant(tmp_path: Path) -> None:
    lock = DeviceLock("board:22", tmp_path)
    with lock:
        with pytest.raises(RuntimeError, match="not re-entrant"):
            lock.acquire()
    lock.release()


def test_default_lock_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BINARYFACE_LOCK_DIR", str(tmp_path / "env"))
    assert default_lock_dir() == tmp_path / "env"

    monkeypatch.delenv("BINARYFACE_LOCK_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_lock_dir() == tmp_path / "cache" / "binaryface" / "locks"


def run_locally(command: str) -> tuple[int, str, str]:
    """Run a board command in a local shell, standing in for the SSH connection."""
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    return result.returncode, result.stdout, result.stderr


def test_remote_lock_takes_turns(tmp_path: Path) -> None:
    path = str(tmp_path / "board dir" / ".lock")
    (tmp_path / "board dir").mkdir()
    first = RemoteLock(run_locally, path, token="host-a:1:x", timeout_s=0.5, poll_s=0.1)
    second = RemoteLock(run_locally, path, token="host-b:2:y", timeout_s=0.5, poll_s=0.1)

    first.acquire()
    assert (Path(path) / "owner").read_text() == "host-a:1:x"
    with pytest.raises(LockTimeout, match="held by host-a:1:x"):
        second.acquire()
    first.acquire()  # the same token takes its own lock again

    first.release()
    assert not Path(path).exists()
    second.acquire()
    assert (Path(path) / "owner").read_text() == "host-b:2:y"
    second.release()


def test_remote_lock_release_keeps_foreign_lock(tmp_path: Path) -> None:
    path = str(tmp_path / ".lock")
    owner = RemoteLock(run_locally, path, token="a")
    owner.acquire()
    impostor = RemoteLock(run_locally, path, token="b")
    impostor.locked = True

    impostor.release()
    assert (Path(path) / "owner").read_text() == "a"
    owner.release()


def test_remote_lock_takes_over_stale(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / ".lock"
    path.mkdir()
    (path / "owner").write_text("crashed-host:9:z")
    old = time.time() - 120
    os.utime(path, (old, old))
    lock = RemoteLock(run_locally, str(path), token="fresh", stale_s=60, timeout_s=1)

    lock.acquire()
    assert (path / "owner").read_text() == "fresh"
    assert "took over the stale board lock" in caplog.text
    assert "crashed-host:9:z" in caplog.text
    lock.release()
