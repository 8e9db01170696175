"""Very-low-resolution (VLR) face simulation: downscale, then upscale back to the input size.

The BinaryFaceNet thesis (L. S. Luevano Garcia, Tecnologico de Monterrey, 2022) simulates
surveillance-distance faces by downscaling 112x112 crops with area interpolation (OpenCV
``INTER_AREA``) to 7, 14, 28 or 56 pixels and upscaling them back, with bicubic downscaling as
an alternative. The same degradation serves three uses here: a function on uint8 batches, a
random training augmentation (NumPy, or inside ``tf.data`` through ``tf.numpy_function``), and
the evaluation protocols that degrade the probe of each pair or both of its images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from blocks.errors import BinaryFaceError

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "VLR_MODES",
    "VLR_SIZES",
    "VlrError",
    "degrade",
    "degrade_pairs",
    "random_degrade",
    "tf_random_degrade",
]

VLR_SIZES = (7, 14, 28, 56)
VLR_MODES = ("probe", "both")
DOWNSCALE_METHODS = {"area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC}

Downscale = Literal["area", "bicubic"]


class VlrError(BinaryFaceError, ValueError):
    """A VLR size, method, mode or image batch is invalid."""


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise VlrError(f"VLR size must be a positive number of pixels, got {size!r}")
    return int(size)


def _check_method(down: str) -> int:
    if down not in DOWNSCALE_METHODS:
        raise VlrError(f"unknown downscale method {down!r}; expected one of {sorted(DOWNSCALE_METHODS)}")
    return DOWNSCALE_METHODS[down]


def _degrade_one(image: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    height, width = image.shape[:2]
    if size >= height:
        return image.copy()
    small_width = max(1, round(width * size / height))
    small = cv2.resize(image, (small_width, size), interpolation=interpolation)
    restored = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    if restored.ndim < image.ndim:
        restored = restored[..., None]  # OpenCV drops a single channel axis
    return restored


def degrade(images: np.ndarray, size: int, *, down: Downscale = "area") -> np.ndarray:
    """Downscale images to ``size`` pixels high, then upscale them back bicubically.

    Accepts one image (H, W, C) or a batch (N, H, W, C), uint8 or float32, and returns the
    input's shape and dtype (bicubic overshoot is clipped to 0-255 for uint8). The width
    keeps the aspect ratio, so 112x112 crops go through ``size`` x ``size``. A ``size`` at or
    above the image height returns an unchanged copy.
    """
    size = _check_size(size)
    interpolation = _check_method(down)
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise VlrError(f"images must be (H, W, C) or (N, H, W, C), got shape {images.shape}")

    if images.ndim == 3:
        return _degrade_one(images, size, interpolation)
    out = np.empty_like(images)
    for index, image in enumerate(images):
        out[index] = _degrade_one(image, size, interpolation)
    return out


def random_degrade(
    images: np.ndarray,
    sizes: Sequence[int] = VLR_SIZES,
    *,
    probability: float = 1.0,
    down: Downscale = "area",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Degrade each image of a batch to a size drawn uniformly from ``sizes``.

    Each image is degraded with ``probability`` and otherwise left unchanged, so a training
    batch can mix high- and low-resolution faces.
    """
    if not sizes:
        raise VlrError("sizes must name at least one VLR size")
    sizes = [_check_size(size) for size in sizes]
    if not 0.0 <= probability <= 1.0:
        raise VlrError(f"probability must lie in [0, 1], got {probability}")
    interpolation = _check_method(down)
    rng = rng if rng is not None else np.random.default_rng()
    images = np.asarray(images)
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.ndim != 4:
        raise VlrError(f"images must be (H, W, C) or (N, H, W, C), got shape {images.shape}")

    out = batch.copy()
    chosen = rng.choice(sizes, size=len(batch))
    applied = rng.random(len(batch)) < probability
    for index in np.flatnonzero(applied):
        out[index] = _degrade_one(batch[index], int(chosen[index]), interpolation)
    return out[0] if single else out


def tf_random_degrade(
    sizes: Sequence[int] = VLR_SIZES,
    *,
    probability: float = 1.0,
    down: Downscale = "area",
    seed: int | None = None,
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Return a ``tf.data`` map function that applies :func:`random_degrade` to a tensor.

    The function takes one image or a batch, of any dtype OpenCV resizes (uint8, float32), and
    keeps its shape and dtype. It runs OpenCV through ``tf.numpy_function``, so the pixels
    match :func:`degrade` exactly, but the map holds the Python GIL and cannot be serialised
    into a SavedModel.
    """
    sizes = [_check_size(size) for size in sizes]
    _check_method(down)
    rng = np.random.default_rng(seed)

    def apply(images: np.ndarray) -> np.ndarray:
        return random_degrade(images, sizes, probability=probability, down=down, rng=rng)

    def map_function(images: tf.Tensor) -> tf.Tensor:
        import tensorflow as tf

        out = tf.numpy_function(apply, [images], images.dtype, stateful=True)
        out.set_shape(images.shape)
        return out

    return map_function


def degrade_pairs(
    images: np.ndarray,
    pairs: np.ndarray,
    size: int,
    *,
    mode: str = "probe",
    down: Downscale = "area",
) -> tuple[np.ndarray, np.ndarray]:
    """Build the images and pairs of a VLR verification protocol.

    ``mode="probe"`` keeps the first image of each pair at full resolution (the gallery) and
    degrades the second (the probe). ``mode="both"`` degrades both. Returns the images to embed
    and the pair indices into them. In probe mode the result is the original images followed
    by degraded copies of every image used as a probe, so an image that is the gallery in one
    pair and the probe in another appears in both forms.
    """
    if mode not in VLR_MODES:
        raise VlrError(f"unknown VLR mode {mode!r}; expected one of {list(VLR_MODES)}")
    images = np.asarray(images)
    pairs = np.asarray(pairs)
    if images.ndim != 4:
        raise VlrError(f"images must be a batch (N, H, W, C), got shape {images.shape}")
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise VlrError(f"pairs must be a (P, 2) index array, got shape {pairs.shape}")

    if mode == "both":
        return degrade(images, size, down=down), pairs.copy()

    probes, probe_positions = np.unique(pairs[:, 1], return_inverse=True)
    degraded = degrade(images[probes], size, down=down)
    out_pairs = np.stack([pairs[:, 0], len(images) + probe_positions.ravel()], axis=1)
    return np.concatenate([images, degraded]), out_pairs
