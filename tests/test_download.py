"""LFW download and cache, against an HTTP server on 127.0.0.1 that the tests start."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from search import download
from search.download import (
    DownloadError,
    RemoteFile,
    UnsafeArchiveError,
    default_cache_dir,
    ensure_lfw,
    extract_tar,
    main,
)

ARCHIVE = "lfw-funneled.tgz"
IMAGE_COUNTS = {"Alice_Example": 3, "Bob_Example": 2, "Carol_Example": 1, "Dan_Example": 2}
PAIR_LISTS = {
    "pairs.txt": "1\t1\nAlice_Example\t1\t3\nCarol_Example\t1\tDan_Example\t2\n",
    "pairsDevTrain.txt": "1\nAlice_Example\t1\t2\nAlice_Example\t3\tBob_Example\t1\n",
    "pairsDevTest.txt": "1\nDan_Example\t1\t2\nCarol_Example\t1\tDan_Example\t2\n",
}


class FileServer:
    """Files served over HTTP by name, with a log of requested paths."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.truncated: set[str] = set()
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture()
def server() -> Iterator[FileServer]:
    state = FileServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
            name = self.path.lstrip("/")
            state.requests.append(name)
            body = state.files.get(name)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name in state.truncated:
                # Announce the whole body, send half of it and close the connection.
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def closed_port() -> int:
    """A loopback port with no listener, so connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(autouse=True)
def offline_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, RemoteFile]:
    """Point every LFW URL at a closed loopback port, and the default cache into tmp_path."""
    port = closed_port()
    table = {
        name: RemoteFile(name, f"http://127.0.0.1:{port}/{name}", "0" * 64)
        for name in (ARCHIVE, *PAIR_LISTS)
    }
    monkeypatch.setattr(download, "LFW_FILES", table)
    monkeypatch.setenv("BINARYFACE_CACHE", str(tmp_path / "default-cache"))
    return table


def tiny_jpeg(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", image)
    assert ok
    return buffer.tobytes()


def make_tgz(entries: list[tarfile.TarInfo], contents: dict[str, bytes]) -> bytes:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w:gz") as tar:
        for info in entries:
            data = contents.get(info.name)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return stream.getvalue()


def lfw_archive() -> bytes:
    entries = [tarfile.TarInfo("lfw_funneled")]
    entries[0].type = tarfile.DIRTYPE
    contents = {}
    for person, count in IMAGE_COUNTS.items():
        folder = tarfile.TarInfo(f"lfw_funneled/{person}")
        folder.type = tarfile.DIRTYPE
        entries.append(folder)
        for number in range(1, count + 1):
            name = f"lfw_funneled/{person}/{person}_{number:04d}.jpg"
            entries.append(tarfile.TarInfo(name))
            contents[name] = tiny_jpeg(len(contents))
    return make_tgz(entries, contents)


def serve(server: FileServer, monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> dict[str, RemoteFile]:
    """Serve ``files`` and point the LFW table at them with their true digests."""
    server.files.update(files)
    table = {
        name: RemoteFile(name, server.url(name), hashlib.sha256(body).hexdigest())
        for name, body in files.items()
    }
    monkeypatch.setattr(download, "LFW_FILES", table)
    return table


@pytest.fixture()
def lfw_served(server: FileServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, RemoteFile]:
    files = {ARCHIVE: lfw_archive(), **{name: text.encode() for name, text in PAIR_LISTS.items()}}
    return serve(server, monkeypatch, files)


def cache_entries(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir())


# ---------------------------------------------------------------------------------------------


def test_default_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BINARYFACE_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"

    monkeypatch.delenv("BINARYFACE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "binaryface"


def test_ensure_lfw_downloads_and_lays_out(
    tmp_path: Path, server: FileServer, lfw_served: dict[str, RemoteFile]
) -> None:
    cache = tmp_path / "cache"

    images = ensure_lfw(cache, progress=False)

    assert images == cache / "lfw" / "lfw_funneled"
    assert sorted(path.name for path in images.iterdir()) == sorted(IMAGE_COUNTS)
    assert len(list((images / "Alice_Example").glob("*.jpg"))) == 3
    for name, text in PAIR_LISTS.items():
        assert (images.parent / name).read_text() == text
    assert (images.parent / "peopleDevTrain.txt").read_text() == "2\nAlice_Example\t3\nBob_Example\t2\n"
    assert (images.parent / ".complete").is_file()
    assert sorted(server.requests) == sorted([ARCHIVE, *PAIR_LISTS])
    assert cache_entries(cache) == [".lfw.lock", "lfw"]


def test_ensure_lfw_second_call_no_request(
    tmp_path: Path, server: FileServer, lfw_served: dict[str, RemoteFile]
) -> None:
    first = ensure_lfw(tmp_path, progress=False)
    count = len(server.requests)

    second = ensure_lfw(tmp_path, progress=False)
    offline = ensure_lfw(tmp_path, download=False)

    assert second == first
    assert offline == first
    assert len(server.requests) == count


def test_ensure_lfw_default_cache_dir(
    tmp_path: Path, server: FileServer, lfw_served: dict[str, RemoteFile]
) -> None:
    images = ensure_lfw(progress=False)

    assert images == tmp_path / "default-cache" / "lfw" / "lfw_funneled"


def test_ensure_lfw_base_urls(
    tmp_path: Path,
    server: FileServer,
    lfw_served: dict[str, RemoteFile],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The table keeps the digests but points at a closed port; base_urls redirects to the server.
    port = closed_port()
    table = {
        name: RemoteFile(name, f"http://127.0.0.1:{port}/{name}", remote.sha256)
        for name, remote in lfw_served.items()
    }
    monkeypatch.setattr(download, "LFW_FILES", table)

    images = ensure_lfw(tmp_path, base_urls={name: server.url(name) for name in table}, progress=False)

    assert images.is_dir()
    assert len(server.requests) == 4


def test_ensure_lfw_unknown_base_url_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"base_urls has unknown file 'lfw.tgz'; expected some of \["):
        ensure_lfw(tmp_path, base_urls={"lfw.tgz": "http://127.0.0.1:1/x"})


def test_ensure_lfw_checksum_mismatch(
    tmp_path: Path, server: FileServer, lfw_served: dict[str, RemoteFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "ab" * 32
    monkeypatch.setitem(download.LFW_FILES, ARCHIVE, RemoteFile(ARCHIVE, server.url(ARCHIVE), wrong))
    actual = hashlib.sha256(server.files[ARCHIVE]).hexdigest()

    with pytest.raises(
        DownloadError,
        match=rf"checksum mismatch for {re.escape(server.url(ARCHIVE))}: expected sha256 {wrong}, got {actual}; "
        r"the file was deleted",
    ):
        ensure_lfw(tmp_path, progress=False)

    assert cache_entries(tmp_path) == [".lfw.lock"]


def test_ensure_lfw_interrupted_then_retry(
    tmp_path: Path, server: FileServer, lfw_served: dict[str, RemoteFile]
) -> None:
    server.truncated.add(ARCHIVE)
    size = len(server.files[ARCHIVE])

    with pytest.raises(
        DownloadError,
        match=rf"download of {re.escape(server.url(ARCHIVE))} was interrupted after {size // 2} of {size} bytes; "
        r"run again to retry",
    ):
        ensure_lfw(tmp_path, progress=False)

    assert cache_entries(tmp_path) == [".lfw.lock"]
    with pytest.raises(DownloadError, match=r"LFW is not in the cache at .* and downloading is off"):
        ensure_lfw(tmp_path, download=False)

    server.truncated.clear()
    images = ensure_lfw(tmp_path, progress=False)

    assert (images.parent / ".complete").is_file()
    assert server.requests.count(ARCHIVE) == 2


def test_ensure_lfw_removes_crash_leftovers(
    tmp_path: Path, server: FileServer, lfw_served: dict[str, RemoteFile]
) -> None:
    # A crash after the rename but before the marker, and a staging folder from another crash.
    (tmp_path / "lfw" / "lfw_funneled" / "Half_Done").mkdir(parents=True)
    (tmp_path / ".lfw-abc123.tmp" / "extracted").mkdir(parents=True)

    images = ensure_lfw(tmp_path, progress=False)

    assert not (images / "Half_Done").exists()
    assert cache_entries(tmp_path) == [".lfw.lock", "lfw"]
    assert len(server.requests) == 4


def test_ensure_lfw_offline_one_line(tmp_path: Path, offline_table: dict[str, RemoteFile]) -> None:
    with pytest.raises(DownloadError) as caught:
        ensure_lfw(tmp_path, progress=False)

    message = str(caught.value)
    assert "\n" not in message
    assert f"cannot reach {offline_table['pairs.txt'].url}: " in message
    assert "pass --data DIR" in message
    assert f"fill the cache at {tmp_path}" in message
    assert "set BINARYFACE_CACHE or --cache-dir" in message
    assert cache_entries(tmp_path) == [".lfw.lock"]


def test_ensure_lfw_http_error(tmp_path: Path, server: FileServer, lfw_served: dict[str, RemoteFile]) -> None:
    del server.files["pairsDevTest.txt"]

    with pytest.raises(
        DownloadError, match=rf"{re.escape(server.url('pairsDevTest.txt'))} returned HTTP 404 Not Found; .*--data DIR"
    ):
        ensure_lfw(tmp_path, progress=False)

    assert cache_entries(tmp_path) == [".lfw.lock"]


def test_download_file_timeout(tmp_path: Path) -> None:
    # The kernel accepts the connection into the backlog, but no response is ever sent.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/pairs.txt"

        with pytest.raises(DownloadError, match=rf"download of {re.escape(url)} timed out after 0.3 s"):
            download.download_file(url, tmp_path / "pairs.txt", sha256="0" * 64, timeout=0.3)

    assert not (tmp_path / "pairs.txt").exists()


def test_ensure_lfw_rejects_malicious_member(
    tmp_path: Path, server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    escape = tarfile.TarInfo("lfw_funneled/../../../escaped.txt")
    archive = make_tgz([escape], {escape.name: b"outside"})
    serve(server, monkeypatch, {ARCHIVE: archive, **{name: text.encode() for name, text in PAIR_LISTS.items()}})
    cache = tmp_path / "cache"

    with pytest.raises(
        UnsafeArchiveError, match=r"rejected member 'lfw_funneled/\.\./\.\./\.\./escaped\.txt' \(path contains '\.\.'\)"
    ):
        ensure_lfw(cache, progress=False)

    assert list(tmp_path.rglob("escaped.txt")) == []
    assert cache_entries(cache) == [".lfw.lock"]


def symlink_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("lfw_funneled/link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return info


def device_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("lfw_funneled/device")
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (tarfile.TarInfo("/tmp/absolute.txt"), "absolute path"),
        (tarfile.TarInfo("C:\\Windows\\absolute.txt"), "absolute path"),
        (tarfile.TarInfo("../parent.txt"), "path contains '..'"),
        (tarfile.TarInfo("a\\..\\..\\parent.txt"), "path contains '..'"),
        (symlink_member(), "not a regular file or folder"),
        (device_member(), "not a regular file or folder"),
    ],
    ids=["absolute", "windows-absolute", "parent", "backslash-parent", "symlink", "device"],
)
def test_extract_tar_rejects_member(tmp_path: Path, member: tarfile.TarInfo, reason: str) -> None:
    safe = tarfile.TarInfo("lfw_funneled/safe.txt")
    archive = tmp_path / "bad.tgz"
    archive.write_bytes(make_tgz([safe, member], {safe.name: b"safe", member.name: b"data"}))
    destination = tmp_path / "out"

    with pytest.raises(UnsafeArchiveError, match=rf"bad\.tgz: rejected member .* \({re.escape(reason)}\); nothing was extracted"):
        extract_tar(archive, destination)

    assert not destination.exists()


def test_extract_tar_not_an_archive(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tgz"
    archive.write_bytes(b"not a tar archive at all")

    with pytest.raises(DownloadError, match=r"broken\.tgz: not a readable tar archive"):
        extract_tar(archive, tmp_path / "out")


def test_main_fetches_into_cache_dir(
    tmp_path: Path, server: FileServer, lfw_served: dict[str, RemoteFile], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--cache-dir", str(tmp_path / "cli"), "--no-progress"])

    assert status == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "lfw" / "lfw_funneled")


def test_main_offline_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--cache-dir", str(tmp_path)])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.startswith("error: cannot reach http://127.0.0.1:")
    assert captured.err.count("\n") == 1
