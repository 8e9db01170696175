"""Very-low-resolution simulation: pixels, augmentation and pair protocols."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from search.vlr import VlrError, degrade, degrade_pairs, random_degrade, tf_random_degrade


def random_faces(n: int = 3, size: int = 112, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_degrade_matches_opencv_area_then_bicubic() -> None:
    image = random_faces(1)[0]
    expected = cv2.resize(cv2.resize(image, (14, 14), interpolation=cv2.INTER_AREA), (112, 112),
                          interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(degrade(image, 14), expected)


def test_degrade_bicubic_downscale_option() -> None:
    image = random_faces(1)[0]
    expected = cv2.resize(cv2.resize(image, (28, 28), interpolation=cv2.INTER_CUBIC), (112, 112),
                          interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(degrade(image, 28, down="bicubic"), expected)


def test_degrade_batch_keeps_shape_and_dtype() -> None:
    images = random_faces(4)
    out = degrade(images, 7)
    assert out.shape == images.shape
    assert out.dtype == np.uint8
    assert np.array_equal(out[2], degrade(images[2], 7))


def test_degrade_removes_fine_detail() -> None:
    checkerboard = (np.indices((112, 112)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.repeat(checkerboard[:, :, None], 3, axis=2)
    out = degrade(image, 7)
    assert image.std() > 100
    assert out.std() < 2
    assert abs(out.mean() - 127.5) < 2


def test_degrade_float_and_single_channel() -> None:
    grey = random_faces(2)[..., :1].astype(np.float32)
    out = degrade(grey, 14)
    assert out.shape == (2, 112, 112, 1)
    assert out.dtype == np.float32


def test_degrade_size_at_height_is_copy() -> None:
    image = random_faces(1)[0]
    out = degrade(image, 112)
    assert np.array_equal(out, image)
    assert out is not image


@pytest.mark.parametrize(
    ("size", "down", "message"),
    [
        (0, "area", "VLR size must be a positive number of pixels, got 0"),
        (True, "area", "VLR size must be a positive number of pixels, got True"),
        (7, "nearest", "unknown downscale method 'nearest'"),
    ],
)
def test_degrade_invalid_arguments(size: int, down: str, message: str) -> None:
    with pytest.raises(VlrError, match=message):
        degrade(random_faces(1), size, down=down)  # type: ignore[arg-type]


def test_degrade_rejects_flat_array() -> None:
    with pytest.raises(VlrError, match=r"got shape \(112,\)"):
        degrade(np.zeros(112, dtype=np.uint8), 7)


def test_random_degrade_probability_zero_and_one() -> None:
    images = random_faces(5)
    assert np.array_equal(random_degrade(images, probability=0.0), images)
    assert np.array_equal(random_degrade(images, (14,), probability=1.0), degrade(images, 14))


def test_random_degrade_seeded_mix() -> None:
    images = random_faces(40, size=32)
    first = random_degrade(images, (7, 14), probability=0.5, rng=np.random.default_rng(3))
    second = random_degrade(images, (7, 14), probability=0.5, rng=np.random.default_rng(3))
    unchanged = np.array([np.array_equal(a, b) for a, b in zip(first, images)])

    assert np.array_equal(first, second)
    assert 0 < unchanged.sum() < len(images)
    for out, image in zip(first, images):
        candidates = [image, degrade(image, 7), degrade(image, 14)]
        assert any(np.array_equal(out, candidate) for candidate in candidates)


def test_random_degrade_single_image() -> None:
    image = random_faces(1)[0]
    assert np.array_equal(random_degrade(image, (28,)), degrade(image, 28))


def test_random_degrade_invalid_probability() -> None:
    with pytest.raises(VlrError, match=r"probability must lie in \[0, 1\], got 1.5"):
        random_degrade(random_faces(1), probability=1.5)


def test_tf_random_degrade_in_dataset() -> None:
    tf = pytest.importorskip("tensorflow")
    images = random_faces(4, size=32)
    dataset = tf.data.Dataset.from_tensor_slices(images).map(tf_random_degrade((7,), seed=0)).batch(4)
    batch = next(iter(dataset))

    assert batch.shape == (4, 32, 32, 3)
    assert batch.dtype == tf.uint8
    assert np.array_equal(batch.numpy(), degrade(images, 7))


def test_degrade_pairs_probe_mode() -> None:
    images = random_faces(3)
    pairs = np.array([[0, 1], [1, 2], [0, 2]])
    out_images, out_pairs = degrade_pairs(images, pairs, 14, mode="probe")

    assert out_images.shape == (5, 112, 112, 3)
    assert np.array_equal(out_images[:3], images)
    assert np.array_equal(out_pairs, [[0, 3], [1, 4], [0, 4]])
    assert np.array_equal(out_images[3], degrade(images[1], 14))
    assert np.array_equal(out_images[4], degrade(images[2], 14))


def test_degrade_pairs_both_mode() -> None:
    images = random_faces(3)
    pairs = np.array([[0, 1], [1, 2]])
    out_images, out_pairs = degrade_pairs(images, pairs, 7, mode="both")

    assert np.array_equal(out_pairs, pairs)
    assert np.array_equal(out_images, degrade(images, 7))


def test_degrade_pairs_unknown_mode() -> None:
    with pytest.raises(VlrError, match=r"unknown VLR mode 'gallery'; expected one of \['probe', 'both'\]"):
        degrade_pairs(random_faces(2), np.array([[0, 1]]), 7, mode="gallery")
