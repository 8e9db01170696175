"""InsightFace verification .bin and MXNet RecordIO readers, on files the tests write."""

from __future__ import annotations

import logging
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from search.insightface import (
    DataNotFoundError,
    FormatError,
    RecordReader,
    load_recordio,
    read_verification_bin,
    unpack_record,
)

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)


# ---------------------------------------------------------------------------------------------
# Writers for the two formats, kept in the tests so the library contains readers only.


def make_image(seed: int, size: int = 112) -> np.ndarray:
    """A smooth RGB image (uint8) that survives PNG exactly and JPEG closely."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return cv2.resize(base, (size, size), interpolation=cv2.INTER_LINEAR)


def encode(image_rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


def python2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """Protocol-2 pickle of ``(bins, issame)`` as Python 2 writes it: str as BINSTRING opcodes."""
    out = bytearray(b"\x80\x02")
    memo = 0

    def put() -> None:
        nonlocal memo
        out.extend(b"q" + bytes([memo]))  # BINPUT
        memo += 1

    out.extend(b"]")  # EMPTY_LIST
    put()
    out.extend(b"(")  # MARK
    for item in bins:
        if len(item) < 256:
            out.extend(b"U" + bytes([len(item)]) + item)  # SHORT_BINSTRING
        else:
            out.extend(b"T" + struct.pack("<i", len(item)) + item)  # BINSTRING
        put()
    out.extend(b"e")  # APPENDS
    out.extend(b"]")
    put()
    out.extend(b"(")
    for flag in issame:
        out.extend(b"\x88" if flag else b"\x89")  # NEWTRUE / NEWFALSE
    out.extend(b"e")
    out.extend(b"\x86")  # TUPLE2
    put()
    out.extend(b".")  # STOP
    return bytes(out)


def write_record(stream: bytearray, payload: bytes) -> int:
    """Append one dmlc RecordIO record, split where the payload contains the magic; return its offset."""
    offset = len(stream)
    start = 0
    aligned_end = len(payload) // 4 * 4
    for position in range(0, aligned_end, 4):
        if payload[position : position + 4] == MAGIC_BYTES:
            flag = 1 if start == 0 else 2
            stream.extend(MAGIC_BYTES + struct.pack("<I", (flag << 29) | (position - start)))
            stream.extend(payload[start:position])
            start = position + 4
    flag = 3 if start else 0
    stream.extend(MAGIC_BYTES + struct.pack("<I", (flag << 29) | (len(payload) - start)))
    stream.extend(payload[start:])
    stream.extend(b"\0" * (-len(payload) % 4))
    return offset


def image_payload(label: float, encoded: bytes, extra_labels: list[float] | None = None) -> bytes:
    if extra_labels:
        header = struct.pack("<IfQQ", len(extra_labels), 0.0, 0, 0)
        return header + np.asarray(extra_labels, np.float32).tobytes() + encoded
    return struct.pack("<IfQQ", 0, label, 0, 0) + encoded


def write_recordio(root: Path, records: dict[int, bytes]) -> tuple[Path, Path]:
    stream = bytearray()
    lines = []
    for key, payload in records.items():
        lines.append(f"{key}\t{write_record(stream, payload)}\n")
    rec, idx = root / "train.rec", root / "train.idx"
    rec.write_bytes(bytes(stream))
    idx.write_text("".join(lines))
    return rec, idx


def insightface_records(labels: list[int], encoded: list[bytes]) -> dict[int, bytes]:
    """Records laid out as InsightFace sets are: header, images, then one record per identity."""
    n_images = len(encoded)
    identities = sorted(set(labels))
    first_identity_key = n_images + 1
    records = {0: image_payload(0, b"", [float(first_identity_key), float(first_identity_key + len(identities))])}
    for key, (label, data) in enumerate(zip(labels, encoded), start=1):
        records[key] = image_payload(float(label), data)
    for offset, identity in enumerate(identities):
        keys = [key for key, label in enumerate(labels, start=1) if label == identity]
        records[first_identity_key + offset] = image_payload(0, b"", [float(keys[0]), float(keys[-1] + 1)])
    return records


# ---------------------------------------------------------------------------------------------
# Verification .bin


@pytest.fixture()
def pairs() -> tuple[list[np.ndarray], list[bool]]:
    images = [make_image(seed) for seed in range(6)]
    return images, [True, False, True]


def test_bin_python2_pickle_round_trip(tmp_path: Path, pairs: tuple[list[np.ndarray], list[bool]]) -> None:
    images, issame = pairs
    path = tmp_path / "lfw.bin"
    path.write_bytes(python2_pickle([encode(image) for image in images], issame))

    loaded, loaded_issame = read_verification_bin(path)

    assert loaded.dtype == np.uint8
    assert loaded.shape == (6, 112, 112, 3)
    np.testing.assert_array_equal(loaded, np.stack(images))
    assert loaded_issame.dtype == bool
    assert loaded_issame.tolist() == issame


def test_bin_python3_bytes_protocol2(tmp_path: Path, pairs: tuple[list[np.ndarray], list[bool]]) -> None:
    images, issame = pairs
    path = tmp_path / "cfp_fp.bin"
    # Python 3 writes bytes under protocol 2 through _codecs.encode.
    path.write_bytes(pickle.dumps(([encode(image) for image in images], issame), protocol=2))

    loaded, loaded_issame = read_verification_bin(path)

    np.testing.assert_array_equal(loaded, np.stack(images))
    assert loaded_issame.tolist() == issame


def test_bin_numpy_entries(tmp_path: Path, pairs: tuple[list[np.ndarray], list[bool]]) -> None:
    images, issame = pairs
    bins = [np.frombuffer(encode(image), dtype=np.uint8) for image in images]
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(pickle.dumps((bins, np.array(issame)), protocol=2))

    loaded, loaded_issame = read_verification_bin(path)

    np.testing.assert_array_equal(loaded, np.stack(images))
    assert loaded_issame.tolist() == issame


def test_bin_resizes_and_reads_jpeg(tmp_path: Path) -> None:
    images = [make_image(seed, size=150) for seed in range(2)]
    path = tmp_path / "lfw.bin"
    path.write_bytes(python2_pickle([encode(image, ".jpg") for image in images], [True]))

    loaded, _ = read_verification_bin(path, image_size=(112, 96))

    assert loaded.shape == (2, 112, 96, 3)
    expected = cv2.resize(images[0], (96, 112), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(loaded[0].astype(int) - expected).mean() < 4


def test_bin_rejects_code_execution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("code ran",))

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([Exploit()], []), protocol=2))

    with pytest.raises(FormatError, match=r"evil\.bin: .*pickle references __builtin__\.print, which"):
        read_verification_bin(path)

    assert "code ran" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", r"not a readable InsightFace verification pickle"),
        (b"this is not a pickle", r"not a readable InsightFace verification pickle"),
        (pickle.dumps({"bins": []}, protocol=2), r"expected a pickled pair"),
        (pickle.dumps(([b"x"], [True]), protocol=2), r"expected 2 images per pair, got 1 images for 1 pairs"),
        (pickle.dumps(([b"x", 3], [True]), protocol=2), r"image 1 must be bytes or a uint8 array, got int"),
        (pickle.dumps(([b"x", b"y"], ["yes"]), protocol=2), r"issame_list must be a list of bools"),
    ],
    ids=["empty", "not-pickle", "dict", "count-mismatch", "int-entry", "string-issame"],
)
def test_bin_bad_content(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(content)

    with pytest.raises(FormatError, match=match) as caught:
        read_verification_bin(path)

    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bin_truncated(tmp_path: Path, pairs: tuple[list[np.ndarray], list[bool]]) -> None:
    images, issame = pairs
    content = python2_pickle([encode(image) for image in images], issame)
    path = tmp_path / "lfw.bin"
    path.write_bytes(content[: len(content) // 2])

    with pytest.raises(FormatError, match=r"lfw\.bin: not a readable InsightFace verification pickle"):
        read_verification_bin(path)


def test_bin_undecodable_image(tmp_path: Path) -> None:
    path = tmp_path / "lfw.bin"
    path.write_bytes(python2_pickle([encode(make_image(0)), b"\xff\xd8 not a jpeg"], [False]))

    with pytest.raises(FormatError, match=r"lfw\.bin: image 1 \(pair 0\) is not a decodable JPEG or PNG image"):
        read_verification_bin(path)


def test_bin_missing(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"missing\.bin: verification file not found"):
        read_verification_bin(tmp_path / "missing.bin")


# ---------------------------------------------------------------------------------------------
# RecordIO


def test_recordio_insightface_round_trip(tmp_path: Path) -> None:
    labels = [0, 0, 1, 2, 2]
    images = [make_image(seed) for seed in range(len(labels))]
    write_recordio(tmp_path, insightface_records(labels, [encode(image) for image in images]))

    with RecordReader(tmp_path / "train.rec", tmp_path / "train.idx") as reader:
        assert len(reader) == 1 + 5 + 3
        assert reader.image_keys() == [1, 2, 3, 4, 5]
        read = list(reader.iter_images())
        identity_header, _ = reader.read_header(7)

    assert [label for _, label in read] == labels
    for (image, _), expected in zip(read, images):
        np.testing.assert_array_equal(image, expected)
    assert identity_header.labels == (3.0, 4.0)


def test_load_recordio(tmp_path: Path) -> None:
    labels = [3, 3, 5, 7]
    images = [make_image(seed, size=128) for seed in range(len(labels))]
    write_recordio(tmp_path, insightface_records(labels, [encode(image) for image in images]))

    loaded, loaded_labels = load_recordio(tmp_path, image_size=112)
    capped, capped_labels = load_recordio(tmp_path, max_images=2)

    assert loaded.shape == (4, 112, 112, 3)
    assert loaded.dtype == np.uint8
    assert loaded_labels.tolist() == labels
    assert capped.shape == (2, 112, 112, 3)
    assert capped_labels.tolist() == [3, 3]


def test_recordio_without_header_record(tmp_path: Path) -> None:
    images = [make_image(seed) for seed in range(3)]
    records = {key: image_payload(float(key * 10), encode(image)) for key, image in enumerate(images)}
    write_recordio(tmp_path, records)

    with RecordReader(tmp_path / "train.rec") as reader:
        assert reader.image_keys() == [0, 1, 2]
        labels = [label for _, label in reader.iter_images()]

    assert labels == [0, 10, 20]


def test_recordio_multi_label_record(tmp_path: Path) -> None:
    write_recordio(tmp_path, {1: image_payload(0, encode(make_image(0)), [4.0, 9.5])})

    with RecordReader(tmp_path / "train.rec") as reader:
        header, encoded = reader.read_header(1)
        labels = [label for _, label in reader.iter_images()]

    assert labels == [4]
    assert header.flag == 2
    assert header.label == 4.0
    assert header.labels == (4.0, 9.5)
    assert encoded == encode(make_image(0))


@pytest.mark.parametrize("payload_length", [5, 8, 13, 24])
def test_recordio_payload_with_magic_is_split(tmp_path: Path, payload_length: int) -> None:
    # The magic at aligned offsets 0 and 8 forces continuation parts on write.
    payload = bytearray(range(payload_length))
    payload[0:4] = MAGIC_BYTES
    if payload_length >= 12:
        payload[8:12] = MAGIC_BYTES
    records = {0: b"first", 1: bytes(payload), 2: b"last record"}
    rec, idx = write_recordio(tmp_path, records)

    with RecordReader(rec, idx) as reader:
        read = {key: reader.read(key) for key in reader.keys}

    assert read == records


def test_recordio_skips_undecodable_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    encoded = [encode(make_image(0)), b"not an image", encode(make_image(2))]
    write_recordio(tmp_path, insightface_records([0, 1, 2], encoded))

    with caplog.at_level(logging.WARNING, logger="search.insightface"):
        images, labels = load_recordio(tmp_path)

    assert labels.tolist() == [0, 2]
    assert images.shape == (2, 112, 112, 3)
    assert "train.rec record 2: image does not decode; skipped" in caplog.text
    assert "skipped 1 undecodable images" in caplog.text


def test_recordio_bad_magic(tmp_path: Path) -> None:
    rec, idx = write_recordio(tmp_path, {0: b"abcd", 1: b"efgh"})
    content = bytearray(rec.read_bytes())
    content[12:16] = b"JUNK"
    rec.write_bytes(bytes(content))

    with RecordReader(rec, idx) as reader:
        assert reader.read(0) == b"abcd"
        with pytest.raises(FormatError, match=r"train\.rec record 1: bad magic 0x4b4e554a at byte 12"):
            reader.read(1)


def test_recordio_not_recordio(tmp_path: Path) -> None:
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    rec.write_bytes(b"PK\x03\x04 this is a zip file, not RecordIO")
    idx.write_text("0\t0\n")

    with RecordReader(rec, idx) as reader, pytest.raises(FormatError, match=r"record 0: bad magic .*not an MXNet RecordIO file"):
        reader.read(0)


def test_recordio_truncated(tmp_path: Path) -> None:
    rec, idx = write_recordio(tmp_path, {0: b"abcd", 1: bytes(100)})
    rec.write_bytes(rec.read_bytes()[:-40])

    with RecordReader(rec, idx) as reader, pytest.raises(
        FormatError, match=r"train\.rec record 1: truncated: the part at byte 12 needs 100 bytes, only 60 remain"
    ):
        reader.read(1)


def test_recordio_truncated_record_header(tmp_path: Path) -> None:
    rec, idx = write_recordio(tmp_path, {0: b"abcd", 1: b"efgh"})
    rec.write_bytes(rec.read_bytes()[:16])

    with RecordReader(rec, idx) as reader, pytest.raises(FormatError, match=r"record 1: truncated at byte 12"):
        reader.read(1)


def test_recordio_index_past_end(tmp_path: Path) -> None:
    rec, idx = write_recordio(tmp_path, {0: b"abcd"})
    idx.write_text("0\t0\n1\t4096\n")

    with RecordReader(rec, idx) as reader, pytest.raises(
        FormatError, match=r"train\.rec record 1: offset 4096 in train\.idx is past the end of the file \(12 bytes\)"
    ):
        reader.read(1)


def test_recordio_header_names_missing_keys(tmp_path: Path) -> None:
    records = insightface_records([0, 1], [encode(make_image(0)), encode(make_image(1))])
    del records[2]
    write_recordio(tmp_path, records)

    with RecordReader(tmp_path / "train.rec") as reader, pytest.raises(
        FormatError, match=r"record 0: header record says image keys are 1\.\.2, but train\.idx lacks 1 of them \(first: 2\)"
    ):
        reader.image_keys()


def test_recordio_short_irheader(tmp_path: Path) -> None:
    write_recordio(tmp_path, {0: b"tiny"})

    with RecordReader(tmp_path / "train.rec") as reader, pytest.raises(
        FormatError, match=r"record 0: record of 4 bytes is shorter than the 24-byte IRHeader"
    ):
        reader.read_header(0)


def test_recordio_bad_index_line(tmp_path: Path) -> None:
    rec, idx = write_recordio(tmp_path, {0: b"abcd"})
    idx.write_text("0\t0\nnot-a-key\t12\n")

    with pytest.raises(FormatError, match=r"train\.idx line 2: expected 'key<TAB>offset', got 'not-a-key\\t12'"):
        RecordReader(rec, idx)


def test_recordio_unknown_key(tmp_path: Path) -> None:
    rec, idx = write_recordio(tmp_path, {0: b"abcd"})

    with RecordReader(rec, idx) as reader, pytest.raises(KeyError, match=r"no record with key 5"):
        reader.read(5)


def test_recordio_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"train\.rec: RecordIO file not found"):
        load_recordio(tmp_path)


def test_unpack_record_labels_past_end() -> None:
    payload = struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 8

    with pytest.raises(ValueError, match=r"IRHeader flag 3 needs 12 bytes of labels, but only 8 bytes"):
        unpack_record(payload)
