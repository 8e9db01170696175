"""Face folders: decoding, bad files, identity split, LFW View 1 and the alignment cache."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.align import ARCFACE_TEMPLATE, MtcnnDetector
from search.data import (
    DataError,
    _SkippedImage,
    decode_image,
    load_face_folder,
    normalize,
    split_gallery_probe,
)
from conftest import face_pattern


def encode(image: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, image_format)
    return buffer.getvalue()


class StubDetector(MtcnnDetector):
    """Landmarks at the ArcFace template scaled to the image, or no face for dark images."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def detect(self, images):  # type: ignore[no-untyped-def]
        self.calls += len(images)
        return [
            None if image.mean() < 20 else ARCFACE_TEMPLATE * (image.shape[0] / 112)
            for image in images
        ]


class FailingDetector(MtcnnDetector):
    def detect(self, images):  # type: ignore[no-untyped-def]
        raise AssertionError("the detector must not run")


def test_normalize_range() -> None:
    out = normalize(np.array([0, 127, 255], dtype=np.uint8))
    assert out.dtype == np.float32
    assert np.allclose(out, [-127.5 / 128, -0.5 / 128, 127.5 / 128])


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "PPM"])
def test_decode_image_rgb_formats(image_format: str) -> None:
    image = face_pattern(1, 0, 40, 30)
    out = decode_image(encode(image, image_format))
    assert out.shape == (40, 30, 3)
    assert out.dtype == np.uint8
    if image_format != "JPEG":
        assert np.array_equal(out, image)


def test_decode_image_greyscale_pgm_to_rgb() -> None:
    grey = face_pattern(2, 0)[..., 0]
    out = decode_image(encode(grey, "PPM"))  # PIL writes mode L as binary PGM (P5)
    assert out.shape == (48, 48, 3)
    assert np.array_equal(out[..., 0], grey)
    assert np.array_equal(out[..., 2], grey)


def test_decode_image_sixteen_bit_pgm() -> None:
    data = b"P5\n4 20\n65535\n" + (np.full((20, 4), 65535, dtype=">u2")).tobytes()
    out = decode_image(data, min_size=4)
    assert out.shape == (20, 4, 3)
    assert np.all(out == 255)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a picture", "unreadable"),
        (encode(face_pattern(0, 0), "JPEG")[:600], "truncated"),
        (encode(face_pattern(0, 0), "PNG")[:1000], "truncated"),
        (encode(face_pattern(0, 0, 10, 40), "PNG"), "too small"),
    ],
)
def test_decode_image_bad_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(_SkippedImage) as caught:
        decode_image(data, min_size=16)
    assert caught.value.reason == reason


def test_identity_split_shapes_and_labels(make_face_folder) -> None:
    root = make_face_folder([4] * 8)
    face_set = load_face_folder(root, align="none", progress=False)

    assert face_set.protocol == "identity-split"
    assert face_set.n_classes == 6
    assert face_set.train_images.shape == (24, 112, 112, 3)
    assert face_set.train_images.dtype == np.uint8
    assert face_set.train_labels.dtype == np.int32
    assert set(face_set.train_labels.tolist()) == set(range(6))
    assert face_set.eval_images.shape == (8, 112, 112, 3)
    assert len(face_set.eval_identities) == 2
    assert not set(face_set.train_identities) & set(face_set.eval_identities)
    assert face_set.skipped == {}


def test_identity_split_pairs_balanced(make_face_folder) -> None:
    root = make_face_folder([5] * 8)
    face_set = load_face_folder(root, align="none", progress=False, eval_fraction=0.5)
    labels = face_set.eval_labels

    # 4 identities of 5 images give 40 genuine pairs, hence 40 impostor pairs.
    assert face_set.pairs.shape == (80, 2)
    assert face_set.issame.sum() == 40
    assert np.array_equal(labels[face_set.pairs[:, 0]] == labels[face_set.pairs[:, 1]], face_set.issame)
    assert len({tuple(pair) for pair in face_set.pairs.tolist()}) == 80
    for block in np.array_split(face_set.issame, 10):
        assert block.sum() == len(block) // 2


def test_identity_split_seeded(make_face_folder) -> None:
    root = make_face_folder([3] * 12)
    first = load_face_folder(root, align="none", progress=False, seed=1)
    second = load_face_folder(root, align="none", progress=False, seed=1)
    other = load_face_folder(root, align="none", progress=False, seed=2)

    assert first.eval_identities == second.eval_identities
    assert np.array_equal(first.pairs, second.pairs)
    assert first.eval_identities != other.eval_identities


def test_bad_files_counted_not_fatal(make_face_folder, caplog: pytest.LogCaptureFixture) -> None:
    root = make_face_folder([3] * 6)
    (root / "id00" / "empty.jpg").write_bytes(b"")
    (root / "id01" / "notes.txt").write_text("not a face")
    (root / "id02" / "junk.png").write_bytes(b"\x00\x01 not a png")
    (root / "id03" / "cut.jpg").write_bytes(encode(face_pattern(3, 9), "JPEG")[:500])
    Image.fromarray(face_pattern(4, 9, 8, 8)).save(root / "id04" / "tiny.png")
    with caplog.at_level(logging.WARNING, logger="search.data"):
        face_set = load_face_folder(root, align="none", progress=False, eval_fraction=0.5)

    assert face_set.skipped == {
        "empty file": 1,
        "not an image": 1,
        "too small": 1,
        "truncated": 1,
        "unreadable": 1,
    }
    assert len(face_set.train_images) + len(face_set.eval_images) == 18
    assert "skipped 5 files" in caplog.text
    assert "1 too small (under 16 px)" in caplog.text


def test_single_image_identity_impostor_only(make_face_folder, caplog: pytest.LogCaptureFixture) -> None:
    root = make_face_folder([1, 3, 3, 1])
    with caplog.at_level(logging.WARNING, logger="search.data"):
        face_set = load_face_folder(root, align="none", progress=False, eval_fraction=1.0)

    single = [index for index, name in enumerate(face_set.eval_identities) if name in ("id00", "id03")]
    genuine_members = set(face_set.eval_labels[face_set.pairs[face_set.issame]].ravel().tolist())
    assert face_set.skipped == {"single image identity": 2}
    assert not genuine_members & set(single)
    assert face_set.issame.sum() == 6
    assert "2 evaluation identities have a single usable image" in caplog.text


def test_eval_fraction_one_loads_no_training(make_face_folder) -> None:
    face_set = load_face_folder(make_face_folder([3] * 4), align="none", progress=False, eval_fraction=1.0)
    assert face_set.train_images.shape == (0, 112, 112, 3)
    assert face_set.n_classes == 0
    assert len(face_set.eval_images) == 12


def test_max_train_identities(make_face_folder) -> None:
    root = make_face_folder([3] * 12)
    face_set = load_face_folder(root, align="none", progress=False, max_train_identities=3)
    assert face_set.n_classes == 3
    assert len(face_set.train_identities) == 3
    assert set(face_set.train_labels.tolist()) == {0, 1, 2}
    assert len(face_set.train_images) == 9
    assert len(face_set.train_paths) == 9


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="face folder not found: .*nowhere"):
        load_face_folder(tmp_path / "nowhere")


def test_one_identity(make_face_folder) -> None:
    with pytest.raises(DataError, match="has 1 identity folder.*at least two are needed"):
        load_face_folder(make_face_folder([5]), align="none")


def test_no_readable_images(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.jpg").write_bytes(b"")
        (tmp_path / name / "1.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"no readable images in .* \(skipped: 3 empty file, 3 unreadable\)"):
        load_face_folder(tmp_path, align="none", progress=False)


def test_too_few_pairs(make_face_folder) -> None:
    with pytest.raises(DataError, match="too few evaluation pairs .*: 1 genuine and 1 impostor"):
        load_face_folder(make_face_folder([2, 1, 1]), align="none", progress=False, eval_fraction=1.0)


def test_two_identities_cannot_split(make_face_folder) -> None:
    with pytest.raises(DataError, match="too few to hold out 25% for evaluation"):
        load_face_folder(make_face_folder([5, 5]), align="none", progress=False)


def test_unknown_align_mode(make_face_folder) -> None:
    with pytest.raises(DataError, match=r"unknown align mode 'dlib'; expected one of \['auto', 'mtcnn', 'none'\]"):
        load_face_folder(make_face_folder([2, 2]), align="dlib")


def write_mini_lfw(tmp_path: Path, missing: str | None = None) -> Path:
    """Write an LFW-like release: images in lfw-deepfunneled/, View 1 lists beside it."""
    images = tmp_path / "lfw" / "lfw-deepfunneled"
    people = {f"Person_{index:02d}": 3 for index in range(14)}
    for identity, (name, count) in enumerate(people.items()):
        (images / name).mkdir(parents=True)
        for number in range(1, count + 1):
            path = images / name / f"{name}_{number:04d}.jpg"
            Image.fromarray(face_pattern(identity, number, 60, 60)).save(path)
    if missing:
        (images / missing).unlink()

    names = list(people)
    test_people = names[:12]
    matched = [f"{name}\t1\t2" for name in test_people[:6]] + [f"{name}\t2\t3" for name in test_people[6:]]
    mismatched = [f"{test_people[i]}\t1\t{test_people[(i + 1) % 12]}\t3" for i in range(12)]
    (tmp_path / "lfw" / "pairsDevTest.txt").write_text("12\n" + "\n".join(matched + mismatched) + "\n")
    (tmp_path / "lfw" / "peopleDevTrain.txt").write_text("2\nPerson_12\t3\nPerson_13\t3\n")
    return images


def test_lfw_view1_protocol(tmp_path: Path) -> None:
    face_set = load_face_folder(write_mini_lfw(tmp_path), align="none", progress=False)

    assert face_set.protocol == "lfw-view1"
    assert face_set.pairs.shape == (24, 2)
    assert face_set.issame.sum() == 12
    assert face_set.train_identities == ["Person_12", "Person_13"]
    assert face_set.train_images.shape == (6, 112, 112, 3)
    assert len(face_set.eval_images) == 36
    assert face_set.skipped == {}
    labels = face_set.eval_labels
    assert np.array_equal(labels[face_set.pairs[:, 0]] == labels[face_set.pairs[:, 1]], face_set.issame)
    # Folds of the 24 pairs alternate blocks of genuine and impostor pairs.
    for block in np.array_split(face_set.issame, 10)[:4]:
        assert 0 < block.sum() < len(block)


def test_lfw_view1_file_order(tmp_path: Path) -> None:
    face_set = load_face_folder(write_mini_lfw(tmp_path), align="none", progress=False, pair_order="file")
    assert face_set.issame.tolist() == [True] * 12 + [False] * 12


def test_unknown_pair_order(make_face_folder) -> None:
    with pytest.raises(DataError, match=r"unknown pair order 'random'; expected one of \['balanced', 'file'\]"):
        load_face_folder(make_face_folder([2, 2]), pair_order="random")


def test_lfw_view1_missing_image_drops_pairs(tmp_path: Path) -> None:
    root = write_mini_lfw(tmp_path, missing="Person_00/Person_00_0001.jpg")
    face_set = load_face_folder(root, align="none", progress=False)

    assert face_set.skipped == {"missing from folder": 1, "pair with an unusable image": 2}
    assert face_set.pairs.shape == (22, 2)


def test_lfw_view1_corrupt_image_drops_pairs(tmp_path: Path) -> None:
    root = write_mini_lfw(tmp_path)
    (root / "Person_03" / "Person_03_0002.jpg").write_bytes(b"<html>404 not found</html>")
    face_set = load_face_folder(root, align="none", progress=False)

    assert face_set.skipped == {"pair with an unusable image": 1, "unreadable": 1}
    assert face_set.issame.sum() == 11


def test_lfw_view1_malformed_pair_line(tmp_path: Path) -> None:
    root = write_mini_lfw(tmp_path)
    with (root.parent / "pairsDevTest.txt").open("a") as handle:
        handle.write("Person_01 1\n")
    with pytest.raises(DataError, match=r"pairsDevTest.txt:26: expected 'name i j' or 'name1 i name2 j'"):
        load_face_folder(root, align="none", progress=False)


def test_protocol_forced(tmp_path: Path, make_face_folder) -> None:
    root = write_mini_lfw(tmp_path)
    face_set = load_face_folder(root, align="none", progress=False, protocol="identity-split")
    assert face_set.protocol == "identity-split"

    with pytest.raises(DataError, match="LFW View 1 needs pairsDevTest.txt and peopleDevTrain.txt"):
        load_face_folder(make_face_folder([3] * 4), align="none", protocol="lfw-view1")


def test_auto_keeps_prealigned_faces(make_face_folder, tmp_path: Path) -> None:
    root = make_face_folder([3] * 4, size=(112, 112))
    face_set = load_face_folder(
        root, align="auto", cache_dir=tmp_path / "cache", detector=FailingDetector(), progress=False, eval_fraction=1.0
    )
    image = np.asarray(Image.open(root / "id00" / "0.png"))
    assert face_set.alignment.n_prealigned == 12
    assert np.array_equal(face_set.eval_images[face_set.eval_paths.index("id00/0.png")], image)


def test_alignment_cache_second_run(make_face_folder, tmp_path: Path) -> None:
    root = make_face_folder([3] * 4, size=(224, 224))
    Image.fromarray(np.zeros((224, 224, 3), dtype=np.uint8)).save(root / "id00" / "dark.png")
    detector = StubDetector()
    first = load_face_folder(root, align="mtcnn", cache_dir=tmp_path / "cache", detector=detector,
                             progress=False, eval_fraction=1.0)

    assert detector.calls == 13
    assert first.alignment.n_aligned == 12
    assert first.alignment.n_no_face == 1
    assert first.alignment.n_cache_hits == 0

    started = time.perf_counter()
    second = load_face_folder(root, align="mtcnn", cache_dir=tmp_path / "cache", detector=detector,
                              progress=False, eval_fraction=1.0)
    assert time.perf_counter() - started < 5
    assert detector.calls == 13
    assert second.alignment.n_cache_hits == 13
    assert second.alignment.n_no_face == 1
    assert np.array_equal(first.eval_images, second.eval_images)


def test_split_gallery_probe_closed_set() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    gallery, probes = split_gallery_probe(labels, seed=0)

    assert sorted(labels[gallery].tolist()) == [0, 1, 2]
    assert len(probes) == 3
    assert not set(gallery.tolist()) & set(probes.tolist())


def test_split_gallery_probe_open_set() -> None:
    labels = np.repeat(np.arange(8), 2)
    gallery, probes = split_gallery_probe(labels, seed=0, unknown_fraction=0.25)
    unknown = set(labels[probes].tolist()) - set(labels[gallery].tolist())

    assert len(gallery) == 6
    assert len(unknown) == 2
    assert len(probes) == 10


def test_shared_lfw_view1_fast(shared_dir: Path) -> None:
    started = time.perf_counter()
    face_set = load_face_folder(shared_dir / "data" / "lfw" / "lfw-deepfunneled", align="none", progress=False)
    elapsed = time.perf_counter() - started

    assert face_set.protocol == "lfw-view1"
    assert face_set.pairs.shape == (1000, 2)
    assert face_set.issame.sum() == 500
    assert len(face_set.eval_images) == 1549
    assert len(face_set.train_images) == 2615
    assert face_set.n_classes == 629
    assert face_set.skipped == {}
    assert elapsed < 60


def test_shared_att_faces(shared_dir: Path) -> None:
    face_set = load_face_folder(shared_dir / "data" / "att_faces", align="none", progress=False)

    assert face_set.protocol == "identity-split"
    assert face_set.n_classes == 30
    assert len(face_set.train_images) + len(face_set.eval_images) == 400
    assert face_set.skipped == {}
    assert face_set.pairs.shape == (900, 2)
