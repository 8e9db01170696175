"""Readers for the InsightFace data formats, without MXNet.

Two formats are covered:

- Verification ``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``): a pickle of
  ``(bins, issame_list)``, where ``bins`` contains two encoded images per pair and
  ``issame_list`` one bool per pair. InsightFace wrote them with Python 2, so strings load as
  ``bytes`` (``encoding="bytes"``). A restricted unpickler resolves only the few builtins and
  numpy globals such files use, so a crafted file cannot run code.
- MXNet RecordIO training sets (``train.rec`` with its ``train.idx``), the layout of MS1M,
  CASIA-WebFace and Glint360K as InsightFace ships them.

Images come back as uint8 RGB arrays of shape (height, width, 3).
"""

from __future__ import annotations

import codecs
import io
import itertools
import logging
import math
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from blocks.errors import BinaryFaceError

__all__ = [
    "DataNotFoundError",
    "FormatError",
    "IRHeader",
    "RecordReader",
    "load_recordio",
    "read_verification_bin",
    "unpack_record",
]

logger = logging.getLogger(__name__)

RECORDIO_MAGIC = 0xCED7230A
"""First uint32 of every MXNet RecordIO record (little-endian on disk)."""

_RECORD_PREFIX = struct.Struct("<II")
_IRHEADER = struct.Struct("<IfQQ")
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
# Continuation flags of dmlc RecordIO: a payload that contains the magic number at a 4-byte
# aligned offset is split there, and the reader puts the magic back between the parts.
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3

_MAX_SKIP_WARNINGS = 10

ImageSize = int | tuple[int, int]


class FormatError(BinaryFaceError, ValueError):
    """A data file is not in the format its reader expects, or is damaged."""


class DataNotFoundError(BinaryFaceError, FileNotFoundError):
    """A data file that a reader needs does not exist."""


# ---------------------------------------------------------------------------------------------
# Verification .bin files


# (module, name) pairs that a verification pickle may reference. Pickles of lists, tuples,
# bools and byte strings need only the builtins below. Numpy arrays and numpy bools also need
# the numpy reconstruction helpers.
_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bool"): bool,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    # Python 3 writes bytes under protocol 2 as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,
}
# numpy 2 pickles name numpy._core; Python 2 pickles name __builtin__.
_MODULE_ALIASES = {
    "__builtin__": "builtins",
    "numpy._core.multiarray": "numpy.core.multiarray",
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``."""

    def find_class(self, module: str, name: str) -> object:
        key = (_MODULE_ALIASES.get(module, module), name)
        if key not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"pickle references {module}.{name}, which a verification file never needs"
            )
        return _ALLOWED_GLOBALS[key]


def read_verification_bin(path: str | Path, image_size: ImageSize = 112) -> tuple[np.ndarray, np.ndarray]:
    """Read an InsightFace verification ``.bin`` file.

    Args:
        path: the ``.bin`` file, for example ``lfw.bin``.
        image_size: output size in pixels, an int for square images or ``(height, width)``.
            Images of another size are resized (area interpolation when shrinking).

    Returns:
        ``(images, issame)``: uint8 RGB images of shape (2P, height, width, 3), where
        images ``2i`` and ``2i + 1`` form pair ``i``, and a bool array of shape (P,).

    Raises:
        DataNotFoundError: the file does not exist.
        FormatError: the file is truncated, is not such a pickle, references a global that
            the format never needs, or holds an image that does not decode. An undecodable
            image is an error here and not a skip, because dropping a pair would change the
            benchmark's pair count.
    """
    path = Path(path)
    height, width = _parse_image_size(image_size)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: verification file not found")

    bins, issame = _load_verification_pickle(path)
    images = np.empty((len(bins), height, width, 3), dtype=np.uint8)
    for index, encoded in enumerate(bins):
        image = _decode_image(encoded)
        if image is None:
            raise FormatError(
                f"{path}: image {index} (pair {index // 2}) is not a decodable JPEG or PNG image"
            )
        images[index] = _resize(image, height, width)

    logger.info("read %d pairs (%d same) from %s", len(issame), int(issame.sum()), path)
    return images, issame


def _load_verification_pickle(path: Path) -> tuple[list[bytes], np.ndarray]:
    """Unpickle and validate ``(bins, issame_list)``; return bins as bytes and issame as bools."""
    try:
        with path.open("rb") as stream:
            content = _RestrictedUnpickler(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError) as error:
        raise FormatError(
            f"{path}: not a readable InsightFace verification pickle ({error}); download the file again"
        ) from error
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as error:
        # Damaged pickles surface as assorted errors from the opcode loop or from numpy.
        raise FormatError(
            f"{path}: not a readable InsightFace verification pickle "
            f"({type(error).__name__}: {error}); download the file again"
        ) from error

    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise FormatError(
            f"{path}: expected a pickled pair (bins, issame_list), got {_describe(content)}"
        )
    raw_bins, raw_issame = content
    if not isinstance(raw_bins, (list, tuple)):
        raise FormatError(f"{path}: bins must be a list of encoded images, got {_describe(raw_bins)}")

    bins: list[bytes] = []
    for index, item in enumerate(raw_bins):
        encoded = _as_encoded_bytes(item)
        if encoded is None:
            raise FormatError(
                f"{path}: image {index} must be bytes or a uint8 array, got {_describe(item)}"
            )
        bins.append(encoded)

    issame = _as_bool_array(raw_issame)
    if issame is None:
        raise FormatError(f"{path}: issame_list must be a list of bools, got {_describe(raw_issame)}")
    if len(bins) != 2 * len(issame):
        raise FormatError(
            f"{path}: expected 2 images per pair, got {len(bins)} images for {len(issame)} pairs"
        )
    return bins, issame


def _as_encoded_bytes(item: object) -> bytes | None:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    return None


def _as_bool_array(value: object) -> np.ndarray | None:
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind not in "bui":
            return None
        return value.astype(bool)
    if not isinstance(value, (list, tuple)):
        return None
    if not all(isinstance(item, (bool, np.bool_)) for item in value):
        return None
    return np.array(value, dtype=bool).reshape(len(value))


def _describe(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    if isinstance(value, np.ndarray):
        return f"ndarray of dtype {value.dtype} and shape {value.shape}"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# MXNet RecordIO


@dataclass(frozen=True)
class IRHeader:
    """Header of an MXNet image record (``struct IRHeader``: flag, label, id, id2).

    ``flag`` is the number of extra float32 labels that follow the header. When it is
    positive, ``labels`` contains them and ``label`` is the first. Otherwise ``labels`` is
    ``(label,)``.
    """

    flag: int
    label: float
    labels: tuple[float, ...]
    id: int
    id2: int


def unpack_record(payload: bytes) -> tuple[IRHeader, bytes]:
    """Split an image record's payload into its header and the encoded image that follows.

    Raises:
        ValueError: the payload is shorter than its header requires. ``RecordReader`` turns this
            into a ``FormatError`` naming the file and key.
    """
    if len(payload) < _IRHEADER.size:
        raise ValueError(f"record of {len(payload)} bytes is shorter than the {_IRHEADER.size}-byte IRHeader")
    flag, label, record_id, record_id2 = _IRHEADER.unpack_from(payload)
    offset = _IRHEADER.size

    labels: tuple[float, ...] = (label,)
    if flag > 0:
        end = offset + 4 * flag
        if end > len(payload):
            raise ValueError(
                f"IRHeader flag {flag} needs {4 * flag} bytes of labels, but only "
                f"{len(payload) - offset} bytes follow the header"
            )
        labels = tuple(float(value) for value in np.frombuffer(payload, np.float32, flag, offset))
        label = labels[0]
        offset = end

    header = IRHeader(flag=flag, label=float(label), labels=labels, id=record_id, id2=record_id2)
    return header, payload[offset:]


class RecordReader:
    """Random access to an MXNet RecordIO file through its ``.idx`` index.

    The index is a text file of ``key<TAB>offset`` lines, offsets in bytes into the ``.rec``
    file. Use the reader as a context manager, or call ``close()``; one reader must not be
    shared between threads because reads seek a single file handle.

    ``skipped`` counts the records that ``iter_images`` dropped because their image did not
    decode.
    """

    def __init__(self, rec: str | Path, idx: str | Path | None = None) -> None:
        self.rec_path = Path(rec)
        self.idx_path = Path(idx) if idx is not None else self.rec_path.with_suffix(".idx")
        for path in (self.rec_path, self.idx_path):
            if not path.is_file():
                raise DataNotFoundError(f"{path}: RecordIO file not found")

        self._offsets = _read_index(self.idx_path)
        self._size = self.rec_path.stat().st_size
        self._stream: io.BufferedReader = self.rec_path.open("rb")
        self.skipped = 0

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def keys(self) -> list[int]:
        """Keys in the order the index lists them."""
        return list(self._offsets)

    def read(self, key: int) -> bytes:
        """Return the payload of record ``key``, with split parts joined and padding removed.

        Raises:
            KeyError: the index has no such key.
            FormatError: the record is truncated, has a bad magic number or bad continuation
                flags, or its offset lies past the end of the file.
        """
        if key not in self._offsets:
            raise KeyError(f"{self.idx_path}: no record with key {key}")
        offset = self._offsets[key]
        if offset >= self._size:
            raise self._error(key, f"offset {offset} in {self.idx_path.name} is past the end of the file ({self._size} bytes)")

        self._stream.seek(offset)
        parts: list[bytes] = []
        position = offset
        while True:
            prefix = self._stream.read(_RECORD_PREFIX.size)
            if len(prefix) < _RECORD_PREFIX.size:
                raise self._error(key, f"truncated at byte {position}: record header is incomplete")
            magic, lrecord = _RECORD_PREFIX.unpack(prefix)
            if magic != RECORDIO_MAGIC:
                raise self._error(
                    key,
                    f"bad magic 0x{magic:08x} at byte {position}, expected 0x{RECORDIO_MAGIC:08x} "
                    f"(not an MXNet RecordIO file, or {self.idx_path.name} does not belong to it)",
                )
            flag = lrecord >> _LENGTH_BITS
            length = lrecord & _LENGTH_MASK
            expected_flags = (_WHOLE, _FIRST) if not parts else (_MIDDLE, _LAST)
            if flag not in expected_flags:
                raise self._error(key, f"continuation flag {flag} at byte {position}, expected one of {expected_flags}")

            padded = 4 * math.ceil(length / 4)
            body = self._stream.read(padded)
            if len(body) < padded:
                raise self._error(
                    key,
                    f"truncated: the part at byte {position} needs {padded} bytes, only {len(body)} remain",
                )
            parts.append(body[:length])
            position += _RECORD_PREFIX.size + padded
            if flag in (_WHOLE, _LAST):
                break

        return struct.pack("<I", RECORDIO_MAGIC).join(parts)

    def read_header(self, key: int) -> tuple[IRHeader, bytes]:
        """Read record ``key`` and split it into its ``IRHeader`` and the encoded image."""
        payload = self.read(key)
        try:
            return unpack_record(payload)
        except ValueError as error:
            raise self._error(key, str(error)) from error

    def image_keys(self) -> list[int]:
        """Keys of the image records, following InsightFace's convention for record 0.

        In InsightFace sets, record 0 is a header whose ``flag`` is positive and whose labels
        ``(a, b)`` say that keys ``1 .. a-1`` are images and keys ``a .. b-1`` are identity
        records (each listing the key range of one identity's images). Without such a header
        every key in the index is an image record.
        """
        if 0 not in self._offsets:
            return self.keys
        header, _ = self.read_header(0)
        if header.flag <= 0:
            return self.keys

        end = int(header.labels[0])
        keys = list(range(1, end))
        missing = [key for key in keys if key not in self._offsets]
        if missing:
            raise self._error(
                0,
                f"header record says image keys are 1..{end - 1}, but {self.idx_path.name} "
                f"lacks {len(missing)} of them (first: {missing[0]})",
            )
        return keys

    def iter_images(self, image_size: ImageSize | None = None) -> Iterator[tuple[np.ndarray, int]]:
        """Yield ``(image, label)`` for every image record, in the order of ``image_keys()``.

        ``image`` is uint8 RGB, resized to ``image_size`` when given. ``label`` is the
        identity: the record's first label as an int. A record whose image does not decode is
        skipped, counted in ``skipped`` and logged as a warning.
        """
        size = _parse_image_size(image_size) if image_size is not None else None
        skipped_before = self.skipped
        try:
            for key in self.image_keys():
                header, encoded = self.read_header(key)
                image = _decode_image(encoded)
                if image is None:
                    self._skip(key, "image does not decode")
                    continue
                if size is not None:
                    image = _resize(image, *size)
                yield image, int(header.label)
        finally:
            # Also runs when the caller stops early and the generator is closed.
            skipped = self.skipped - skipped_before
            if skipped:
                logger.warning("%s: skipped %d undecodable images", self.rec_path, skipped)

    def _skip(self, key: int, reason: str) -> None:
        self.skipped += 1
        if self.skipped <= _MAX_SKIP_WARNINGS:
            logger.warning("%s record %d: %s; skipped", self.rec_path, key, reason)
        elif self.skipped == _MAX_SKIP_WARNINGS + 1:
            logger.warning("%s: more undecodable images; further skips are counted but not logged", self.rec_path)

    def _error(self, key: int, message: str) -> FormatError:
        return FormatError(f"{self.rec_path} record {key}: {message}")


def _read_index(path: Path) -> dict[int, int]:
    """Parse ``key<TAB>offset`` lines into a dict that keeps the file's order."""
    offsets: dict[int, int] = {}
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as error:
        raise FormatError(f"{path}: not a RecordIO index (non-ASCII bytes at {error.start})") from error

    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError(f"{len(fields)} fields")
            key, offset = int(fields[0]), int(fields[1])
        except ValueError as error:
            raise FormatError(
                f"{path} line {line_number}: expected 'key<TAB>offset', got {line[:60]!r}"
            ) from error
        if key < 0 or offset < 0:
            raise FormatError(f"{path} line {line_number}: key and offset must be non-negative, got {line!r}")
        if key in offsets:
            raise FormatError(f"{path} line {line_number}: duplicate key {key}")
        offsets[key] = offset
    return offsets


def load_recordio(
    root: str | Path, image_size: ImageSize = 112, max_images: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load the images and labels of an InsightFace RecordIO training set into memory.

    Args:
        root: folder holding ``train.rec`` and ``train.idx``.
        image_size: output size in pixels, an int or ``(height, width)``.
        max_images: stop after this many decoded images; ``None`` reads all. A full MS1M
            set does not fit in memory, so cap it. Undecodable images are skipped and logged.

    Returns:
        ``(images, labels)``: uint8 RGB of shape (N, height, width, 3) and int64 of shape (N,).
    """
    root = Path(root)
    height, width = _parse_image_size(image_size)
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images must be >= 0 or None, got {max_images}")

    with RecordReader(root / "train.rec", root / "train.idx") as reader:
        keys = reader.image_keys()
        capacity = len(keys) if max_images is None else min(len(keys), max_images)
        images = np.empty((capacity, height, width, 3), dtype=np.uint8)
        labels = np.empty((capacity,), dtype=np.int64)
        filled = 0
        for image, label in itertools.islice(reader.iter_images((height, width)), capacity):
            images[filled] = image
            labels[filled] = label
            filled += 1

    logger.info(
        "loaded %d images of %d identities from %s", filled, len(np.unique(labels[:filled])), root
    )
    return images[:filled], labels[:filled]


# ---------------------------------------------------------------------------------------------
# Image helpers


def _parse_image_size(image_size: ImageSize) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif (
        isinstance(image_size, tuple)
        and len(image_size) == 2
        and all(isinstance(side, int) and not isinstance(side, bool) for side in image_size)
    ):
        size = image_size
    else:
        raise TypeError(f"image_size must be an int or (height, width), got {image_size!r}")
    if min(size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return size


def _decode_image(encoded: bytes) -> np.ndarray | None:
    """Decode JPEG or PNG bytes to uint8 RGB; return None when OpenCV cannot decode them."""
    if not encoded:
        return None
    buffer = np.frombuffer(encoded, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[0] > height or image.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)
