"""InsightFace-style face alignment: MTCNN landmarks and a similarity transform to 112x112.

MTCNN (package ``mtcnn`` 1.0.0, which ships its weights and runs offline) finds the faces of
an RGB photo and five landmarks for each: the eyes, the nose tip and the mouth corners. The
face nearest the image centre is warped by the least-squares similarity transform (Umeyama,
IEEE TPAMI 1991) that maps its landmarks onto the ArcFace template, the standard 112x112 crop
of InsightFace. A photo without a detected face falls back to a centre crop and is counted.

Aligned crops are cached on disk as lossless PNG files keyed by the SHA-256 of the source
file and the alignment settings, so a second run over the same images skips detection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from blocks.errors import BinaryFaceError

__all__ = [
    "ALIGN_MODES",
    "ARCFACE_TEMPLATE",
    "AlignCache",
    "AlignError",
    "AlignStats",
    "MtcnnDetector",
    "align_faces",
    "arcface_template",
    "center_crop",
    "content_hash",
    "similarity_transform",
    "to_rgb",
    "warp_face",
]

logger = logging.getLogger(__name__)

ALIGN_MODES = ("auto", "mtcnn", "none")

# Left eye, right eye, nose tip, left and right mouth corner, in pixels of a 112x112 crop
# (InsightFace's ``arcface_dst``). "Left" is the image's left, as MTCNN reports it.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_SIZE = 112
PROGRESS_CHUNK = 256  # images handed to the detector between progress-bar updates


class AlignError(BinaryFaceError, ValueError):
    """An alignment setting or input image is invalid, or the detector cannot be loaded."""


@dataclass
class AlignStats:
    """Counts and timing of one :func:`align_faces` call.

    ``n_aligned`` faces were warped from MTCNN landmarks and ``n_no_face`` photos were
    centre-cropped because no face was found, whether computed now or read from the cache
    (``n_cache_hits`` of them). ``n_prealigned`` images already had the output size and
    ``n_resized`` were only cropped and resized (``align="none"``). ``detector_seconds``
    covers the MTCNN calls on the ``n_detected`` cache misses.
    """

    n_images: int = 0
    n_aligned: int = 0
    n_no_face: int = 0
    n_prealigned: int = 0
    n_resized: int = 0
    n_cache_hits: int = 0
    n_detected: int = 0
    seconds: float = 0.0
    detector_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Images per second over the whole call, cache reads included."""
        return self.n_images / self.seconds if self.seconds > 0 else 0.0

    @property
    def detector_images_per_second(self) -> float:
        """Images per second through MTCNN and the warp, cache misses only."""
        return self.n_detected / self.detector_seconds if self.detector_seconds > 0 else 0.0

    def add(self, other: AlignStats) -> None:
        """Add the counts and times of ``other`` to these."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def content_hash(data: bytes | np.ndarray) -> str:
    """Return the SHA-256 hex digest of file bytes, or of an array's shape and pixels."""
    digest = hashlib.sha256()
    if isinstance(data, np.ndarray):
        digest.update(f"{data.shape}{data.dtype}".encode())
        data = np.ascontiguousarray(data).tobytes()
    digest.update(data)
    return digest.hexdigest()


def arcface_template(image_size: int = ARCFACE_SIZE) -> np.ndarray:
    """Return the five ArcFace landmarks scaled to a square crop of ``image_size`` pixels."""
    return ARCFACE_TEMPLATE * (image_size / ARCFACE_SIZE)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Return the 2x3 least-squares similarity transform (rotation, uniform scale, shift)
    that maps ``source`` points (K, 2) onto ``target`` points (K, 2), by Umeyama's method."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or len(source) < 2:
        raise AlignError(
            f"similarity transform needs two (K, 2) point arrays with K >= 2, got {source.shape} and {target.shape}"
        )

    source_mean = source.mean(axis=0)
    target_mean = target.mean(axis=0)
    source_centred = source - source_mean
    target_centred = target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)

    # A reflection is never a valid face alignment: flip the weakest axis instead.
    signs = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[-1] = -1.0
    rotation = u @ np.diag(signs) @ vt
    source_variance = (source_centred**2).sum() / len(source)
    if source_variance == 0:
        raise AlignError("similarity transform needs distinct source points, got all points equal")
    scale = float((singular * signs).sum() / source_variance)

    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Return a uint8 (H, W, 3) RGB view of a greyscale (H, W) or (H, W, 1) or RGB image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise AlignError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise AlignError(f"images must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def center_crop(image: np.ndarray, image_size: int = ARCFACE_SIZE) -> np.ndarray:
    """Crop the largest central square and resize it to ``image_size`` pixels.

    Downscaling uses area interpolation and upscaling bicubic interpolation.
    """
    image = to_rgb(image)
    height, width = image.shape[:2]
    side = min(height, width)
    top = (height - side) // 2
    left = (width - side) // 2
    square = image[top : top + side, left : left + side]
    if side == image_size:
        return square.copy()
    interpolation = cv2.INTER_AREA if side > image_size else cv2.INTER_CUBIC
    return cv2.resize(square, (image_size, image_size), interpolation=interpolation)


def warp_face(image: np.ndarray, landmarks: np.ndarray, image_size: int = ARCFACE_SIZE) -> np.ndarray:
    """Warp ``image`` so that its five ``landmarks`` (5, 2) land on the ArcFace template.

    Bilinear sampling with black borders, as InsightFace's ``norm_crop``.
    """
    matrix = similarity_transform(landmarks, arcface_template(image_size))
    return cv2.warpAffine(
        to_rgb(image), matrix, (image_size, image_size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)
    )


class MtcnnDetector:
    """MTCNN face detector that returns, per image, the landmarks of the face nearest the centre.

    The TensorFlow networks load on first use. Images are detected in batches of equal shape:
    ``mtcnn`` 1.0.0 pads a batch of mixed shapes and then shifts the boxes back with the
    padding of the wrong image when an earlier image of the batch has no face.
    """

    def __init__(self, *, min_face_size: int = 20, batch_size: int = 16, device: str = "CPU:0") -> None:
        if min_face_size < 1 or batch_size < 1:
            raise AlignError(
                f"min_face_size and batch_size must be positive, got {min_face_size} and {batch_size}"
            )
        self.min_face_size = min_face_size
        self.batch_size = batch_size
        self.device = device
        self._mtcnn: Any = None

    @property
    def settings(self) -> str:
        """Detector name, version and options, for cache keys."""
        try:
            version = metadata.version("mtcnn")
        except metadata.PackageNotFoundError:
            version = "missing"
        return f"mtcnn=={version} min_face_size={self.min_face_size}"

    def _load(self) -> Any:
        if self._mtcnn is None:
            try:
                from mtcnn import MTCNN
            except ImportError as error:
                raise AlignError(
                    "MTCNN alignment needs the mtcnn package: pip install mtcnn==1.0.0, "
                    "or pass align='none' for pre-aligned faces"
                ) from error
            self._mtcnn = MTCNN(device=self.device)
        return self._mtcnn

    def _detect_batch(self, images: list[np.ndarray]) -> np.ndarray:
        import tensorflow as tf

        try:
            return self._load().detect_faces(
                images, output_type="numpy", box_format="xyxy", min_face_size=self.min_face_size
            )
        except (tf.errors.OpError, ValueError, IndexError) as error:
            if len(images) == 1:
                logger.debug("MTCNN failed on a %s image: %s", images[0].shape, error)
                return np.empty((0, 16))
        rows = []
        for index, image in enumerate(images):
            single = self._detect_batch([image])
            single[:, 0] = index
            rows.append(single)
        return np.concatenate(rows)

    def detect(self, images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """Return, for each RGB image, the (5, 2) landmarks of the face nearest its centre, or
        ``None`` when no face is found."""
        images = [to_rgb(image) for image in images]
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_shape[image.shape].append(index)

        landmarks: list[np.ndarray | None] = [None] * len(images)
        for shape, indices in by_shape.items():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                rows = self._detect_batch([images[index] for index in batch])
                for position, index in enumerate(batch):
                    landmarks[index] = _nearest_centre(rows[rows[:, 0] == position], shape)
        return landmarks


def _nearest_centre(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    # Rows are MTCNN's numpy output: image id, x1, y1, x2, y2, confidence, then the five
    # landmark x coordinates and the five y coordinates.
    if len(rows) == 0:
        return None
    centres = np.stack([(rows[:, 1] + rows[:, 3]) / 2, (rows[:, 2] + rows[:, 4]) / 2], axis=1)
    image_centre = np.array([shape[1] / 2, shape[0] / 2])
    best = int(np.argmin(((centres - image_centre) ** 2).sum(axis=1)))
    return np.stack([rows[best, 6:11], rows[best, 11:16]], axis=1)


class AlignCache:
    """Folder of aligned crops keyed by source content hash and alignment settings.

    Build it with the detector and image size that :func:`align_faces` will use: both are
    part of the key, so changing either starts a fresh set of crops.

    Each crop is one PNG file, ``<root>/<settings digest>/<hash[:2]>/<hash>.png``, or
    ``<hash>.noface.png`` for a centre-cropped photo without a detected face. Writes go
    through a temporary file and a rename, so an interrupted run leaves no partial crop. A
    crop that cannot be read counts as a miss, and a folder that cannot be written disables
    writing with one warning.
    """

    def __init__(
        self, root: str | Path, *, image_size: int = ARCFACE_SIZE, detector: MtcnnDetector | None = None
    ) -> None:
        detector = detector or MtcnnDetector()
        self.root = Path(root)
        self.settings = (
            f"{detector.settings} image_size={image_size} template=arcface border=0 "
            "interpolation=linear fallback=center_crop"
        )
        digest = hashlib.sha256(self.settings.encode()).hexdigest()[:16]
        self.folder = self.root / digest
        self._writable = True

    def _path(self, key: str, face_found: bool) -> Path:
        suffix = ".png" if face_found else ".noface.png"
        return self.folder / key[:2] / f"{key}{suffix}"

    def load(self, key: str) -> tuple[np.ndarray, bool] | None:
        """Return the cached crop (RGB) for ``key`` and whether a face was found, or ``None``."""
        for face_found in (True, False):
            path = self._path(key, face_found)
            if not path.is_file():
                continue
            crop = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
            if crop is None:
                logger.debug("unreadable cached crop %s is ignored", path)
                continue
            return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), face_found
        return None

    def store(self, key: str, crop: np.ndarray, face_found: bool) -> None:
        """Write one crop. The first failed write is logged and turns writing off for this cache."""
        if not self._writable:
            return
        path = self._path(key, face_found)
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        if not ok:
            logger.warning("PNG encoding of an aligned crop failed; it is not cached")
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
                handle.write(encoded.tobytes())
            os.replace(handle.name, path)
        except OSError as error:
            self._writable = False
            logger.warning("cannot write the alignment cache in %s (%s); continuing without it", self.folder, error)


def _progress_enabled(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


def align_faces(
    images: Sequence[np.ndarray],
    *,
    keys: Sequence[str] | None = None,
    align: str = "auto",
    image_size: int = ARCFACE_SIZE,
    cache: AlignCache | None = None,
    detector: MtcnnDetector | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, AlignStats]:
    """Turn RGB or greyscale photos into aligned uint8 (N, S, S, 3) RGB face crops.

    ``align="auto"`` keeps images that already measure ``image_size`` square and aligns the
    others with MTCNN, ``"mtcnn"`` aligns every image, and ``"none"`` only centre-crops and
    resizes. ``keys`` (default: :func:`content_hash` of each image) index the ``cache``. A
    tqdm bar shows detection when ``progress`` is true and stderr is a terminal.
    """
    if align not in ALIGN_MODES:
        raise AlignError(f"unknown align mode {align!r}; expected one of {list(ALIGN_MODES)}")
    if image_size < 8:
        raise AlignError(f"image_size must be at least 8 pixels, got {image_size}")
    if keys is not None and len(keys) != len(images):
        raise AlignError(f"need one key per image, got {len(keys)} keys for {len(images)} images")
    started = time.perf_counter()
    stats = AlignStats(n_images=len(images))
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)

    pending: list[int] = []
    for index, image in enumerate(images):
        image = to_rgb(image)
        if align == "auto" and image.shape[:2] == (image_size, image_size):
            out[index] = image
            stats.n_prealigned += 1
        elif align == "none":
            out[index] = center_crop(image, image_size)
            stats.n_resized += 1
        else:
            pending.append(index)

    pending_keys = {}
    if cache is not None and pending:
        missed = []
        for index in pending:
            key = keys[index] if keys is not None else content_hash(images[index])
            pending_keys[index] = key
            cached = cache.load(key)
            if cached is None or cached[0].shape != out.shape[1:]:
                missed.append(index)
                continue
            out[index], face_found = cached
            stats.n_cache_hits += 1
            stats.n_aligned += face_found
            stats.n_no_face += not face_found
        pending = missed

    if pending:
        detector = detector or MtcnnDetector()
        detect_started = time.perf_counter()
        from tqdm import tqdm

        with tqdm(total=len(pending), desc="aligning faces", unit="img", disable=not _progress_enabled(progress)) as bar:
            for start in range(0, len(pending), PROGRESS_CHUNK):
                chunk = pending[start : start + PROGRESS_CHUNK]
                found = detector.detect([images[index] for index in chunk])
                for index, landmarks in zip(chunk, found):
                    if landmarks is None:
                        out[index] = center_crop(images[index], image_size)
                        stats.n_no_face += 1
                    else:
                        out[index] = warp_face(images[index], landmarks, image_size)
                        stats.n_aligned += 1
                    if cache is not None:
                        cache.store(pending_keys[index], out[index], landmarks is not None)
                bar.update(len(chunk))
        stats.n_detected = len(pending)
        stats.detector_seconds = time.perf_counter() - detect_started

    stats.seconds = time.perf_counter() - started
    return out, stats
