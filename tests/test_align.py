"""Face alignment: similarity transform, warp, fallbacks, the crop cache and real MTCNN."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from search.align import (
    ARCFACE_TEMPLATE,
    AlignCache,
    AlignError,
    MtcnnDetector,
    align_faces,
    arcface_template,
    center_crop,
    content_hash,
    similarity_transform,
    to_rgb,
    warp_face,
)


def similarity_matrix(angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[cos, -sin, shift[0]], [sin, cos, shift[1]]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


class StubDetector(MtcnnDetector):
    """Return fixed landmarks for bright images and no face for dark ones, counting calls."""

    def __init__(self, landmarks: np.ndarray) -> None:
        super().__init__()
        self.landmarks = landmarks
        self.calls = 0

    def detect(self, images):  # type: ignore[no-untyped-def]
        self.calls += len(images)
        return [None if image.mean() < 20 else self.landmarks for image in images]


def test_arcface_template_scales() -> None:
    assert np.allclose(arcface_template(112), ARCFACE_TEMPLATE)
    assert np.allclose(arcface_template(224), 2 * ARCFACE_TEMPLATE)


def test_similarity_transform_recovers_known() -> None:
    expected = similarity_matrix(0.3, 1.7, (5.0, -3.0))
    source = ARCFACE_TEMPLATE
    assert np.allclose(similarity_transform(source, apply(expected, source)), expected)


def test_similarity_transform_matches_opencv() -> None:
    source = ARCFACE_TEMPLATE * 2 + 40
    target = apply(similarity_matrix(-0.2, 0.6, (10.0, 4.0)), source)
    opencv, _ = cv2.estimateAffinePartial2D(source, target, method=cv2.LMEDS)
    assert np.allclose(similarity_transform(source, target), opencv, atol=1e-6)


def test_similarity_transform_least_squares_with_noise() -> None:
    rng = np.random.default_rng(0)
    source = ARCFACE_TEMPLATE + rng.normal(0, 2.0, size=(5, 2))
    matrix = similarity_transform(source, ARCFACE_TEMPLATE)
    residual = np.abs(apply(matrix, source) - ARCFACE_TEMPLATE).mean()
    nudged = matrix.copy()
    nudged[:, 2] += 0.5
    assert residual < 3.0
    assert np.square(apply(matrix, source) - ARCFACE_TEMPLATE).sum() < np.square(
        apply(nudged, source) - ARCFACE_TEMPLATE
    ).sum()


def test_similarity_transform_no_reflection() -> None:
    mirrored = ARCFACE_TEMPLATE * np.array([-1.0, 1.0])
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_similarity_transform_equal_points() -> None:
    with pytest.raises(AlignError, match="distinct source points"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_warp_face_identity() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    out = warp_face(image, ARCFACE_TEMPLATE)
    assert np.array_equal(out, image)


def test_warp_face_moves_landmarks_to_template() -> None:
    # Dots at the template mapped into a larger rotated photo must come back to the template.
    to_photo = similarity_matrix(0.25, 1.8, (60.0, 30.0))
    landmarks = apply(to_photo, ARCFACE_TEMPLATE)
    photo = np.zeros((300, 300, 3), dtype=np.uint8)
    for x, y in np.round(landmarks).astype(int):
        photo[y - 2 : y + 3, x - 2 : x + 3] = 255
    out = warp_face(photo, landmarks)

    assert out.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE:
        window = out[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4, 0]
        assert window.max() > 200


def test_center_crop_non_square() -> None:
    image = np.zeros((112, 92, 3), dtype=np.uint8)
    image[:10] = (255, 0, 0)
    image[10:102] = (0, 255, 0)
    image[102:] = (0, 0, 255)
    out = center_crop(image)
    assert out.shape == (112, 112, 3)
    assert np.all(out[..., 1] == 255)


def test_to_rgb_greyscale_and_dtype() -> None:
    assert to_rgb(np.zeros((4, 5), dtype=np.uint8)).shape == (4, 5, 3)
    assert to_rgb(np.zeros((4, 5, 1), dtype=np.uint8)).shape == (4, 5, 3)
    with pytest.raises(AlignError, match="images must be uint8, got float32"):
        to_rgb(np.zeros((4, 5, 3), dtype=np.float32))


def test_content_hash_depends_on_shape() -> None:
    pixels = np.zeros(12, dtype=np.uint8)
    assert content_hash(pixels.reshape(3, 4)) != content_hash(pixels.reshape(4, 3))
    assert content_hash(b"abc") == content_hash(b"abc")


def test_align_faces_modes() -> None:
    prealigned = np.full((112, 112, 3), 90, dtype=np.uint8)
    photo = np.full((200, 160, 3), 90, dtype=np.uint8)
    detector = StubDetector(arcface_template(160) + 20)

    out, stats = align_faces([prealigned, photo], align="auto", detector=detector, progress=False)
    assert out.shape == (2, 112, 112, 3)
    assert stats.n_prealigned == 1
    assert stats.n_aligned == 1
    assert detector.calls == 1

    _, stats = align_faces([prealigned, photo], align="none", detector=detector, progress=False)
    assert stats.n_resized == 2
    assert detector.calls == 1

    _, stats = align_faces([prealigned, photo], align="mtcnn", detector=detector, progress=False)
    assert stats.n_aligned == 2
    assert detector.calls == 3


def test_align_faces_no_face_falls_back() -> None:
    dark = np.zeros((150, 150, 3), dtype=np.uint8)
    out, stats = align_faces([dark], align="mtcnn", detector=StubDetector(ARCFACE_TEMPLATE), progress=False)
    assert stats.n_no_face == 1
    assert stats.n_aligned == 0
    assert np.array_equal(out[0], center_crop(dark))


def test_align_faces_invalid_arguments() -> None:
    with pytest.raises(AlignError, match=r"unknown align mode 'fast'"):
        align_faces([], align="fast")
    with pytest.raises(AlignError, match="need one key per image, got 2 keys for 1 images"):
        align_faces([np.zeros((20, 20, 3), dtype=np.uint8)], keys=["a", "b"])


def test_cache_hit_skips_detector(tmp_path: Path) -> None:
    photo = np.full((160, 160, 3), 120, dtype=np.uint8)
    detector = StubDetector(arcface_template(160))
    cache = AlignCache(tmp_path, detector=detector)
    first, stats = align_faces([photo], align="mtcnn", cache=cache, detector=detector, progress=False)
    second, cached = align_faces([photo], align="mtcnn", cache=cache, detector=detector, progress=False)

    assert stats.n_cache_hits == 0
    assert cached.n_cache_hits == 1
    assert cached.n_aligned == 1
    assert detector.calls == 1
    assert np.array_equal(first, second)
    assert len(list(tmp_path.rglob("*.png"))) == 1


def test_cache_keys_include_settings(tmp_path: Path) -> None:
    assert AlignCache(tmp_path, image_size=112).folder != AlignCache(tmp_path, image_size=96).folder
    assert AlignCache(tmp_path, detector=MtcnnDetector(min_face_size=40)).folder != AlignCache(tmp_path).folder


def test_corrupt_cache_entry_is_a_miss(tmp_path: Path) -> None:
    photo = np.full((160, 160, 3), 120, dtype=np.uint8)
    detector = StubDetector(arcface_template(160))
    cache = AlignCache(tmp_path, detector=detector)
    align_faces([photo], align="mtcnn", cache=cache, detector=detector, progress=False)
    for path in tmp_path.rglob("*.png"):
        path.write_bytes(b"broken")
    _, stats = align_faces([photo], align="mtcnn", cache=cache, detector=detector, progress=False)

    assert stats.n_cache_hits == 0
    assert detector.calls == 2


def test_unwritable_cache_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    photos = [np.full((160, 160, 3), value, dtype=np.uint8) for value in (100, 110, 120)]
    detector = StubDetector(arcface_template(160))
    with caplog.at_level(logging.WARNING, logger="search.align"):
        out, stats = align_faces(photos, align="mtcnn", cache=AlignCache(blocker, detector=detector),
                                 detector=detector, progress=False)

    assert out.shape == (3, 112, 112, 3)
    assert stats.n_aligned == 3
    assert caplog.text.count("cannot write the alignment cache") == 1


@pytest.fixture(scope="module")
def mtcnn() -> MtcnnDetector:
    pytest.importorskip("mtcnn")
    return MtcnnDetector()


def test_mtcnn_blank_image_has_no_face(mtcnn: MtcnnDetector) -> None:
    blank = np.full((120, 120, 3), 128, dtype=np.uint8)
    tiny = np.full((16, 16, 3), 128, dtype=np.uint8)
    assert mtcnn.detect([blank, tiny]) == [None, None]


def test_mtcnn_aligns_lfw_faces(mtcnn: MtcnnDetector, shared_dir: Path) -> None:
    folder = shared_dir / "data" / "lfw" / "lfw-deepfunneled" / "Aaron_Peirsol"
    photos = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("*.jpg"))[:2]]
    crops, stats = align_faces(photos, align="mtcnn", detector=mtcnn, progress=False)

    assert stats.n_aligned == 2
    # Detecting again on the aligned crop finds the landmarks near the template; MTCNN on a
    # crop that the face fills is a few pixels off, so the bound is loose but catches a
    # wrong landmark order or template.
    for landmarks in mtcnn.detect(list(crops)):
        assert landmarks is not None
        assert np.abs(landmarks - ARCFACE_TEMPLATE).mean() < 5.0
