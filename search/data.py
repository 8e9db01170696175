"""Face data from identity folders: LFW View 1 or a seeded identity split, aligned to 112x112.

A face folder has one subfolder per identity with JPEG, PNG or PGM/PPM files directly inside
(nested folders are not read). When the folder, or its parent as in the LFW release, contains
LFW's ``pairsDevTest.txt`` and ``peopleDevTrain.txt``, the View 1 protocol applies: training
uses the devtrain people and evaluation the devtest pairs. Otherwise identities are split into
training and evaluation with a seed, and balanced genuine and impostor pairs are drawn from
the evaluation identities.

Every image is read and decoded once. Files that cannot be used are counted by reason in
``FaceSet.skipped`` and logged in one WARNING line; they never stop a run on their own.
"""

from __future__ import annotations

import io
import itertools
import logging
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from blocks.errors import BinaryFaceError
from search.align import (
    ALIGN_MODES,
    ARCFACE_SIZE,
    AlignCache,
    AlignStats,
    MtcnnDetector,
    align_faces,
    content_hash,
)

__all__ = [
    "DataError",
    "FaceSet",
    "IMAGE_SUFFIXES",
    "LFW_PAIRS_FILE",
    "LFW_PEOPLE_FILE",
    "PROTOCOLS",
    "decode_image",
    "load_face_folder",
    "normalize",
    "split_gallery_probe",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pnm"})
LFW_PAIRS_FILE = "pairsDevTest.txt"
LFW_PEOPLE_FILE = "peopleDevTrain.txt"
PROTOCOLS = ("lfw-view1", "identity-split")
PAIR_ORDERS = ("balanced", "file")
N_FOLDS = 10  # verification folds, so pairs are laid out with each contiguous tenth balanced
MIN_PAIRS = N_FOLDS
LOAD_CHUNK = 256  # images decoded and aligned together, which bounds memory for large photos

# Reasons counted in FaceSet.skipped.
NOT_AN_IMAGE = "not an image"
EMPTY = "empty file"
TRUNCATED = "truncated"
UNREADABLE = "unreadable"
TOO_SMALL = "too small"
SINGLE_IMAGE = "single image identity"
MISSING = "missing from folder"
NOT_LISTED = "not in view-1 lists"
PAIR_DROPPED = "pair with an unusable image"


class DataError(BinaryFaceError, ValueError):
    """A face folder or pair list cannot give a usable training or evaluation set."""


class _SkippedImage(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class FaceSet:
    """Aligned training images and evaluation pairs from one face folder.

    Images are uint8 (N, S, S, 3) RGB crops, S = ``image_size`` (112 by default).
    ``train_labels`` lie in [0, ``n_classes``) and name ``train_identities``. ``pairs`` (P, 2)
    index ``eval_images``, whose identities are ``eval_labels`` into ``eval_identities``.
    Pairs are ordered so that each contiguous tenth contains as many genuine as impostor pairs
    (within one), the layout that 10-fold verification with contiguous folds expects.
    With ``pair_order="file"`` they keep the pair list's order instead.
    ``skipped`` counts unusable files and pairs by reason; ``single image identity`` counts
    evaluation identities that could give no genuine pair.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    n_classes: int
    eval_images: np.ndarray
    pairs: np.ndarray
    issame: np.ndarray
    protocol: str
    root: Path
    skipped: dict[str, int] = field(default_factory=dict)
    eval_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    train_identities: list[str] = field(default_factory=list)
    eval_identities: list[str] = field(default_factory=list)
    train_paths: list[str] = field(default_factory=list)
    eval_paths: list[str] = field(default_factory=list)
    alignment: AlignStats = field(default_factory=AlignStats)


def normalize(images: np.ndarray) -> np.ndarray:
    """Map uint8 pixels to float32 as ``(x - 127.5) / 128``, the InsightFace input scaling."""
    return (np.asarray(images, dtype=np.float32) - 127.5) / 128.0


def decode_image(data: bytes, *, min_size: int = 16) -> np.ndarray:
    """Decode JPEG, PNG or PGM/PPM bytes to a uint8 (H, W, 3) RGB array.

    Greyscale becomes RGB, EXIF rotation is applied and 16-bit greyscale is scaled to 8 bits.
    Raises ``_SkippedImage`` with the reason (empty, truncated, unreadable, too small) when
    the bytes cannot give a face image of at least ``min_size`` pixels on the shorter side.
    """
    if not data:
        raise _SkippedImage(EMPTY)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            if image.mode in ("I", "I;16", "I;16B", "I;16L"):
                wide = np.asarray(image, dtype=np.float64)
                scale = 255.0 / 65535.0 if wide.max() > 255 else 1.0
                pixels = np.clip(wide * scale, 0, 255).astype(np.uint8)
                pixels = np.repeat(pixels[:, :, None], 3, axis=2)
            else:
                pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise _SkippedImage(UNREADABLE) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        reason = TRUNCATED if "truncated" in str(error).lower() else UNREADABLE
        raise _SkippedImage(reason) from error

    if min(pixels.shape[:2]) < min_size:
        raise _SkippedImage(TOO_SMALL)
    return pixels


def _scan_identities(root: Path, skipped: Counter[str]) -> dict[str, list[Path]]:
    identities: dict[str, list[Path]] = {}
    for folder in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        files = []
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
            else:
                skipped[NOT_AN_IMAGE] += 1
        if files:
            identities[folder.name] = files
    return identities


def _find_lfw_lists(root: Path) -> tuple[Path, Path] | None:
    for folder in (root, root.parent):
        pairs_path = folder / LFW_PAIRS_FILE
        people_path = folder / LFW_PEOPLE_FILE
        if pairs_path.is_file() and people_path.is_file():
            return pairs_path, people_path
    return None


def _lfw_image_name(name: str, number: str, path: Path, line_number: int) -> str:
    try:
        index = int(number)
    except ValueError as error:
        raise DataError(f"{path}:{line_number}: image number must be an integer, got {number!r}") from error
    return f"{name}/{name}_{index:04d}.jpg"


def _read_lfw_pairs(path: Path) -> list[tuple[str, str, bool]]:
    """Parse an LFW pairs list: ``name i j`` for matched and ``name1 i name2 j`` for mismatched."""
    pairs = []
    lines = path.read_text().splitlines()
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 3:
            name, first, second = fields
            pairs.append((
                _lfw_image_name(name, first, path, line_number),
                _lfw_image_name(name, second, path, line_number),
                True,
            ))
        elif len(fields) == 4:
            pairs.append((
                _lfw_image_name(fields[0], fields[1], path, line_number),
                _lfw_image_name(fields[2], fields[3], path, line_number),
                False,
            ))
        else:
            raise DataError(
                f"{path}:{line_number}: expected 'name i j' or 'name1 i name2 j', got {line.strip()!r}"
            )
    return pairs


def _read_lfw_people(path: Path) -> list[str]:
    """Parse an LFW people list: a count line, then ``name image_count`` lines."""
    names = []
    for line_number, line in enumerate(path.read_text().splitlines()[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}:{line_number}: expected 'name image_count', got {line.strip()!r}")
        names.append(fields[0])
    return names


def _balanced_order(issame: np.ndarray, n_folds: int = N_FOLDS) -> np.ndarray:
    """Return an order of pair indices in which every contiguous tenth mixes both classes evenly."""
    genuine = np.array_split(np.flatnonzero(issame), n_folds)
    impostor = np.array_split(np.flatnonzero(~issame), n_folds)
    return np.concatenate([np.concatenate([g, i]) for g, i in zip(genuine, impostor)]).astype(np.int64)


class _ImageLoader:
    """Read, decode and align files in chunks, counting what is skipped."""

    def __init__(
        self,
        *,
        align: str,
        image_size: int,
        min_image_size: int,
        cache: AlignCache | None,
        detector: MtcnnDetector | None,
        progress: bool,
        skipped: Counter[str],
    ) -> None:
        self.align = align
        self.image_size = image_size
        self.min_image_size = min_image_size
        self.cache = cache
        self.detector = detector
        self.progress = progress
        self.skipped = skipped
        self.stats = AlignStats()

    def load(self, paths: Sequence[Path], description: str) -> tuple[np.ndarray, np.ndarray]:
        """Return crops of the usable files and a boolean mask of which ``paths`` they are."""
        from tqdm import tqdm

        started = time.perf_counter()
        crops = np.empty((len(paths), self.image_size, self.image_size, 3), dtype=np.uint8)
        usable = np.zeros(len(paths), dtype=bool)
        show = self.progress and sys.stderr.isatty() and self.align != "none" and len(paths) > LOAD_CHUNK
        with tqdm(total=len(paths), desc=description, unit="img", disable=not show) as bar:
            for start in range(0, len(paths), LOAD_CHUNK):
                indices = range(start, min(start + LOAD_CHUNK, len(paths)))
                self._load_chunk(paths, indices, crops, usable)
                bar.update(len(indices))
        # Reading and decoding count too, so images/s is that of the whole load.
        self.stats.seconds += time.perf_counter() - started
        return crops[usable], usable

    def _load_chunk(self, paths: Sequence[Path], indices: range, crops: np.ndarray, usable: np.ndarray) -> None:
        images, keys, targets = [], [], []
        cache_hits = AlignStats()
        for index in indices:
            path = paths[index]
            try:
                data = path.read_bytes()
            except OSError as error:
                logger.debug("cannot read %s: %s", path, error)
                self.skipped[UNREADABLE] += 1
                continue
            key = content_hash(data) if data else ""

            # A cached crop proves the same bytes decoded and aligned before, so skip decoding.
            cached = self.cache.load(key) if key and self.cache is not None and self.align != "none" else None
            if cached is not None and cached[0].shape == crops.shape[1:]:
                crops[index], face_found = cached
                usable[index] = True
                cache_hits.n_images += 1
                cache_hits.n_cache_hits += 1
                cache_hits.n_aligned += face_found
                cache_hits.n_no_face += not face_found
                continue

            try:
                image = decode_image(data, min_size=self.min_image_size)
            except _SkippedImage as skip:
                logger.debug("skipping %s: %s", path, skip.reason)
                self.skipped[skip.reason] += 1
                continue
            images.append(image)
            keys.append(key)
            targets.append(index)

        self.stats.add(cache_hits)
        if not images:
            return
        aligned, stats = align_faces(
            images,
            keys=keys,
            align=self.align,
            image_size=self.image_size,
            cache=self.cache,
            detector=self.detector,
            progress=False,
        )
        crops[targets] = aligned
        usable[targets] = True
        stats.seconds = 0.0  # load() times the whole chunk, cache hits and decoding included
        self.stats.add(stats)


def _relative(paths: Sequence[Path], root: Path) -> list[str]:
    return [str(path.relative_to(root)) for path in paths]


def _resolve_cache(cache_dir: str | Path | None, align: str, image_size: int, detector: MtcnnDetector) -> AlignCache | None:
    if align == "none":
        return None
    if cache_dir is None:
        from search.download import default_cache_dir

        cache_dir = default_cache_dir() / "aligned"
    return AlignCache(cache_dir, image_size=image_size, detector=detector)


def load_face_folder(
    root: str | Path,
    *,
    seed: int = 0,
    image_size: int = ARCFACE_SIZE,
    eval_fraction: float = 0.25,
    align: str = "auto",
    cache_dir: str | Path | None = None,
    max_train_identities: int | None = None,
    progress: bool = True,
    protocol: str = "auto",
    load_train: bool = True,
    min_image_size: int = 16,
    n_pairs: int = 6000,
    pair_order: str = "balanced",
    detector: MtcnnDetector | None = None,
) -> FaceSet:
    """Load a folder of identity subfolders as aligned training images and evaluation pairs.

    Args:
        root: folder with one subfolder of images per identity.
        seed: seed of the identity split, the training subset and the generated pairs.
        image_size: side of the square crops, in pixels.
        eval_fraction: share of identities held out for evaluation by the identity split;
            1.0 evaluates on every identity and loads no training images.
        align: ``"auto"`` aligns images that are not already ``image_size`` square with
            MTCNN, ``"mtcnn"`` aligns all, ``"none"`` only centre-crops and resizes.
        cache_dir: folder of the aligned-crop cache; default ``<BINARYFACE_CACHE>/aligned``.
        max_train_identities: keep at most this many training identities, chosen by ``seed``.
        progress: show a progress bar for long alignment runs on a terminal.
        protocol: ``"auto"`` picks ``"lfw-view1"`` when LFW's View 1 lists are in ``root``
            or its parent and ``"identity-split"`` otherwise. Naming one forces it.
        load_train: read training images; evaluation-only callers pass False.
        min_image_size: shorter side in pixels below which an image is skipped as too small.
        n_pairs: maximum number of generated pairs (half genuine, half impostor) for the
            identity split.
        pair_order: ``"balanced"`` lays the pairs out so that each contiguous tenth has as
            many genuine as impostor pairs, as the folds of LFW's View 2 list do. ``"file"``
            keeps the list's order (LFW's ``pairsDevTest.txt`` has its 500 matched pairs
            first), or genuine pairs first for generated pairs.
        detector: MTCNN detector to reuse; a new one by default.

    Raises:
        DataError: the folder is missing, has fewer than two identities or no readable
            image, a pair list is malformed, or fewer than 10 pairs can be formed.
    """
    root = Path(root)
    if align not in ALIGN_MODES:
        raise DataError(f"unknown align mode {align!r}; expected one of {list(ALIGN_MODES)}")
    if protocol not in ("auto", *PROTOCOLS):
        raise DataError(f"unknown protocol {protocol!r}; expected 'auto' or one of {list(PROTOCOLS)}")
    if pair_order not in PAIR_ORDERS:
        raise DataError(f"unknown pair order {pair_order!r}; expected one of {list(PAIR_ORDERS)}")
    if not 0.0 < eval_fraction <= 1.0:
        raise DataError(f"eval_fraction must lie in (0, 1], got {eval_fraction}")
    if not root.is_dir():
        raise DataError(f"face folder not found: {root} (expected a folder with one subfolder per identity)")

    skipped: Counter[str] = Counter()
    identities = _scan_identities(root, skipped)
    if len(identities) < 2:
        raise DataError(
            f"{root} has {len(identities)} identity folder(s) with image files; at least two are needed, "
            f"one subfolder of {', '.join(sorted(IMAGE_SUFFIXES))} files per identity"
        )
    lfw_lists = _find_lfw_lists(root)
    if protocol == "auto":
        protocol = "lfw-view1" if lfw_lists is not None else "identity-split"
    if protocol == "lfw-view1" and lfw_lists is None:
        raise DataError(
            f"LFW View 1 needs {LFW_PAIRS_FILE} and {LFW_PEOPLE_FILE} in {root} or {root.parent}; "
            "use the identity-split protocol for other folders"
        )

    detector = detector or MtcnnDetector()
    loader = _ImageLoader(
        align=align,
        image_size=image_size,
        min_image_size=min_image_size,
        cache=_resolve_cache(cache_dir, align, image_size, detector),
        detector=detector,
        progress=progress,
        skipped=skipped,
    )
    rng = np.random.default_rng(seed)
    if protocol == "lfw-view1":
        assert lfw_lists is not None
        face_set = _load_lfw_view1(root, identities, lfw_lists, loader, load_train=load_train)
    else:
        face_set = _load_identity_split(
            root, identities, loader, rng, eval_fraction=eval_fraction, load_train=load_train, n_pairs=n_pairs
        )

    if pair_order == "balanced":
        order = _balanced_order(face_set.issame)
        face_set.pairs = face_set.pairs[order]
        face_set.issame = face_set.issame[order]
    face_set = _limit_train_identities(face_set, max_train_identities, rng)
    face_set.skipped = {reason: count for reason, count in sorted(skipped.items()) if count}
    face_set.alignment = loader.stats
    _log_summary(face_set, min_image_size)
    return face_set


def _load_lfw_view1(
    root: Path,
    identities: dict[str, list[Path]],
    lfw_lists: tuple[Path, Path],
    loader: _ImageLoader,
    *,
    load_train: bool,
) -> FaceSet:
    pairs_path, people_path = lfw_lists
    listed_pairs = _read_lfw_pairs(pairs_path)
    train_people = [name for name in _read_lfw_people(people_path) if name in identities]

    present = {str(path.relative_to(root)) for files in identities.values() for path in files}
    eval_names = list(dict.fromkeys(name for first, second, _ in listed_pairs for name in (first, second)))
    missing = [name for name in eval_names if name not in present]
    loader.skipped[MISSING] += len(missing)
    eval_names = [name for name in eval_names if name in present]
    train_files = [path for name in train_people for path in identities[name]]
    used = set(eval_names) | set(_relative(train_files, root))
    loader.skipped[NOT_LISTED] += len(present - used)

    eval_paths = [root / name for name in eval_names]
    eval_images, usable = loader.load(eval_paths, "aligning LFW devtest")
    loaded = {name: position for position, name in enumerate(itertools.compress(eval_names, usable))}
    if not loaded:
        raise DataError(f"no readable images among the {len(eval_names)} LFW devtest images in {root}")

    usable_pairs = [
        (loaded[first], loaded[second], same)
        for first, second, same in listed_pairs
        if first in loaded and second in loaded
    ]
    loader.skipped[PAIR_DROPPED] += len(listed_pairs) - len(usable_pairs)
    pairs = np.array([(first, second) for first, second, _ in usable_pairs], dtype=np.int64).reshape(-1, 2)
    issame = np.array([same for _, _, same in usable_pairs], dtype=bool)
    _check_pairs(issame, root)

    eval_people = sorted({name.split("/")[0] for name in loaded})
    person_index = {person: index for index, person in enumerate(eval_people)}
    eval_labels = np.array([person_index[name.split("/")[0]] for name in loaded], dtype=np.int32)

    train_images, train_labels, train_kept, train_paths = _load_train(root, train_people, identities, loader, load_train)
    return FaceSet(
        train_images=train_images,
        train_labels=train_labels,
        n_classes=len(train_kept),
        eval_images=eval_images,
        pairs=pairs,
        issame=issame,
        protocol="lfw-view1",
        root=root,
        eval_labels=eval_labels,
        train_identities=train_kept,
        eval_identities=eval_people,
        train_paths=train_paths,
        eval_paths=list(loaded),
    )


def _load_train(
    root: Path,
    names: Sequence[str],
    identities: dict[str, list[Path]],
    loader: _ImageLoader,
    load_train: bool,
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Return training images, labels, identity names and paths relative to ``root``.

    Identities left without a usable image are dropped and the labels renumbered.
    """
    size = loader.image_size
    if not load_train or not names:
        return np.zeros((0, size, size, 3), dtype=np.uint8), np.zeros(0, dtype=np.int32), [], []

    files = [path for name in names for path in identities[name]]
    owners = np.array([index for index, name in enumerate(names) for _ in identities[name]], dtype=np.int64)
    images, usable = loader.load(files, "aligning training faces")

    present = np.unique(owners[usable])
    relabel = np.full(len(names), -1, dtype=np.int64)
    relabel[present] = np.arange(len(present))
    labels = relabel[owners[usable]].astype(np.int32)
    paths = _relative(list(itertools.compress(files, usable)), root)
    return images, labels, [names[index] for index in present], paths


def _check_pairs(issame: np.ndarray, root: Path) -> None:
    n_genuine = int(issame.sum())
    n_impostor = int(issame.size - n_genuine)
    if issame.size < MIN_PAIRS or n_genuine == 0 or n_impostor == 0:
        raise DataError(
            f"too few evaluation pairs in {root}: {n_genuine} genuine and {n_impostor} impostor, "
            f"need at least {MIN_PAIRS} with both kinds; add identities with two or more readable images"
        )


def _load_identity_split(
    root: Path,
    identities: dict[str, list[Path]],
    loader: _ImageLoader,
    rng: np.random.Generator,
    *,
    eval_fraction: float,
    load_train: bool,
    n_pairs: int,
) -> FaceSet:
    names = sorted(identities)
    order = rng.permutation(len(names))
    n_eval = min(len(names), max(2, round(eval_fraction * len(names))))
    if eval_fraction < 1.0 and n_eval == len(names):
        raise DataError(
            f"{root} has {len(names)} identities, too few to hold out {eval_fraction:.0%} for evaluation "
            "and keep some for training; add identities or pass eval_fraction=1.0 to evaluate only"
        )
    eval_people = sorted(names[index] for index in order[:n_eval])
    train_people = sorted(names[index] for index in order[n_eval:])

    eval_files = [path for name in eval_people for path in identities[name]]
    owners = np.array([index for index, name in enumerate(eval_people) for _ in identities[name]], dtype=np.int64)
    eval_images, usable = loader.load(eval_files, "aligning evaluation faces")
    eval_labels = owners[usable].astype(np.int32)

    train_images, train_labels, train_kept, train_paths = _load_train(root, train_people, identities, loader, load_train)
    if len(eval_images) == 0 and len(train_images) == 0:
        counts = ", ".join(f"{count} {reason}" for reason, count in sorted(loader.skipped.items()))
        raise DataError(f"no readable images in {root} (skipped: {counts or 'none'})")

    per_identity = Counter(eval_labels.tolist())
    loader.skipped[SINGLE_IMAGE] += sum(1 for count in per_identity.values() if count == 1)
    pairs, issame = _generate_pairs(eval_labels, rng, n_pairs)
    _check_pairs(issame, root)

    return FaceSet(
        train_images=train_images,
        train_labels=train_labels,
        n_classes=len(train_kept),
        eval_images=eval_images,
        pairs=pairs,
        issame=issame,
        protocol="identity-split",
        root=root,
        eval_labels=eval_labels,
        train_identities=train_kept,
        eval_identities=eval_people,
        train_paths=train_paths,
        eval_paths=_relative(list(itertools.compress(eval_files, usable)), root),
    )


def _generate_pairs(labels: np.ndarray, rng: np.random.Generator, n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw equal numbers of distinct genuine and impostor pairs, genuine pairs first."""
    members: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels.tolist()):
        members[label].append(index)

    genuine = [pair for indices in members.values() for pair in itertools.combinations(indices, 2)]
    n_total = len(labels) * (len(labels) - 1) // 2
    n_each = min(len(genuine), n_total - len(genuine), n_pairs // 2)
    if n_each == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=bool)

    chosen = rng.choice(len(genuine), size=n_each, replace=False)
    genuine_pairs = [genuine[index] for index in sorted(chosen)]
    impostor_pairs = _draw_impostors(labels, rng, n_each, n_total - len(genuine))

    pairs = np.array(genuine_pairs + impostor_pairs, dtype=np.int64)
    issame = np.array([True] * n_each + [False] * n_each)
    return pairs, issame


def _draw_impostors(labels: np.ndarray, rng: np.random.Generator, count: int, available: int) -> list[tuple[int, int]]:
    # Rejection sampling is fast while the request is a small share of all impostor pairs.
    # Otherwise enumerate them all and sample without replacement.
    if count * 4 > available:
        every = [(i, j) for i, j in itertools.combinations(range(len(labels)), 2) if labels[i] != labels[j]]
        chosen = rng.choice(len(every), size=count, replace=False)
        return [every[index] for index in sorted(chosen)]

    drawn: set[tuple[int, int]] = set()
    while len(drawn) < count:
        first, second = rng.integers(0, len(labels), size=2)
        if labels[first] != labels[second]:
            drawn.add((int(min(first, second)), int(max(first, second))))
    return sorted(drawn)


def _limit_train_identities(face_set: FaceSet, limit: int | None, rng: np.random.Generator) -> FaceSet:
    if limit is None or face_set.n_classes <= limit:
        return face_set
    if limit < 1:
        raise DataError(f"max_train_identities must be at least 1, got {limit}")

    keep = np.sort(rng.choice(face_set.n_classes, size=limit, replace=False))
    relabel = np.full(face_set.n_classes, -1, dtype=np.int64)
    relabel[keep] = np.arange(limit)
    mask = relabel[face_set.train_labels] >= 0
    face_set.train_images = face_set.train_images[mask]
    face_set.train_labels = relabel[face_set.train_labels[mask]].astype(np.int32)
    face_set.train_identities = [face_set.train_identities[index] for index in keep]
    face_set.train_paths = list(itertools.compress(face_set.train_paths, mask)) if face_set.train_paths else []
    face_set.n_classes = limit
    return face_set


def _log_summary(face_set: FaceSet, min_image_size: int) -> None:
    file_reasons = {key: count for key, count in face_set.skipped.items() if key not in (SINGLE_IMAGE, PAIR_DROPPED)}
    if file_reasons:
        details = ", ".join(
            f"{count} {reason}" + (f" (under {min_image_size} px)" if reason == TOO_SMALL else "")
            for reason, count in file_reasons.items()
        )
        logger.warning("skipped %d files in %s: %s", sum(file_reasons.values()), face_set.root, details)
    if face_set.skipped.get(PAIR_DROPPED):
        logger.warning("dropped %d listed pairs whose images are missing or unusable", face_set.skipped[PAIR_DROPPED])
    if face_set.skipped.get(SINGLE_IMAGE):
        logger.warning(
            "%d evaluation identities have a single usable image and appear in impostor pairs only",
            face_set.skipped[SINGLE_IMAGE],
        )
    stats = face_set.alignment
    if stats.n_no_face:
        logger.warning("no face detected in %d images; they were centre-cropped", stats.n_no_face)
    logger.info(
        "%s protocol on %s: %d training images of %d identities, %d evaluation images, %d pairs (%d genuine)",
        face_set.protocol,
        face_set.root,
        len(face_set.train_images),
        face_set.n_classes,
        len(face_set.eval_images),
        len(face_set.pairs),
        int(face_set.issame.sum()),
    )
    if stats.n_aligned or stats.n_no_face:
        logger.info(
            "alignment: %d images in %.1f s (%.1f images/s), %d cache hits, %d through MTCNN at %.1f images/s",
            stats.n_images,
            stats.seconds,
            stats.images_per_second,
            stats.n_cache_hits,
            stats.n_detected,
            stats.detector_images_per_second,
        )


def split_gallery_probe(
    labels: np.ndarray, *, seed: int = 0, unknown_fraction: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Split evaluation images into gallery and probe indices for identification.

    Each identity enrols one randomly chosen image in the gallery and probes with the rest.
    An identity with a single image stays in the gallery as a distractor. With
    ``unknown_fraction`` > 0 that share of identities is not enrolled and all of its images
    become unknown probes, for open-set identification.
    """
    labels = np.asarray(labels)
    if not 0.0 <= unknown_fraction < 1.0:
        raise DataError(f"unknown_fraction must lie in [0, 1), got {unknown_fraction}")
    rng = np.random.default_rng(seed)
    identities = np.unique(labels)
    n_unknown = int(round(unknown_fraction * len(identities)))
    unknown = set(rng.choice(identities, size=n_unknown, replace=False).tolist()) if n_unknown else set()

    gallery, probes = [], []
    for identity in identities:
        indices = np.flatnonzero(labels == identity)
        if identity in unknown:
            probes.extend(indices.tolist())
            continue
        enrolled = int(rng.choice(indices))
        gallery.append(enrolled)
        probes.extend(int(index) for index in indices if index != enrolled)
    return np.array(sorted(gallery), dtype=np.int64), np.array(sorted(probes), dtype=np.int64)
