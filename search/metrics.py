"""Face verification and identification metrics on embeddings.

Verification follows the LFW protocol as InsightFace runs it: cosine similarity of
L2-normalised embeddings, 10 contiguous folds of pairs, and on each fold the threshold that
maximises accuracy on the other nine. ROC, AUC, EER and TAR at a given FAR are computed on all
pairs at once. Identification ranks a gallery for every probe (closed set) and, when some
probe identities are missing from the gallery, also reports the detection and identification
rate at a false positive identification rate (open set, as in NIST FRVT 1:N reports).

Everything here is NumPy only, so training and search code can import it without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from blocks.errors import BinaryFaceError

__all__ = [
    "IdentificationResult",
    "MetricError",
    "RocCurve",
    "VerificationResult",
    "best_threshold",
    "equal_error_rate",
    "evaluate_identification",
    "evaluate_verification",
    "fold_bounds",
    "fuse_flip",
    "kfold_accuracy",
    "l2_normalize",
    "pair_scores",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
]

DEFAULT_FARS = (1e-2, 1e-3)
DEFAULT_RANKS = (1, 5, 20)
DEFAULT_FPIRS = (1e-2, 1e-1)


class MetricError(BinaryFaceError, ValueError):
    """Scores, labels or embeddings cannot be scored: wrong shapes or a class is missing."""


@dataclass(frozen=True)
class RocCurve:
    """ROC points ordered by decreasing threshold; a pair is accepted when ``score >= threshold``.

    The first point is (0, 0) at threshold ``+inf``; the last is (1, 1).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class VerificationResult:
    """Verification scores of one set of pairs.

    ``accuracy`` and ``std`` are the mean and the population standard deviation (as NumPy's
    ``std`` and InsightFace compute it) of the fold accuracies, as fractions in [0, 1].
    ``threshold`` is the mean of the per-fold cosine-similarity thresholds. ``tar_at_far``
    maps each FAR to the highest true accept rate whose false accept rate does not exceed it.
    """

    accuracy: float
    std: float
    threshold: float
    auc: float
    eer: float
    tar_at_far: dict[float, float]
    fold_accuracies: list[float] = field(default_factory=list)
    n_pairs: int = 0
    n_genuine: int = 0


@dataclass(frozen=True)
class IdentificationResult:
    """Identification scores of one gallery/probe split; all rates are fractions in [0, 1].

    ``rank_accuracy[k]`` is the closed-set share of known probes whose first correct gallery
    image is among the ``k`` most similar gallery images. ``mean_average_precision`` averages,
    over known probes, the precision at each correct gallery image of the ranked list.
    ``dir_at_fpir[fpir][k]`` is the open-set detection and identification rate. It is the
    share of known probes whose first correct match is within rank ``k`` and scores at least
    the threshold that accepts a fraction ``fpir`` of unknown probes. It is empty when every
    probe identity is enrolled.
    """

    rank_accuracy: dict[int, float]
    mean_average_precision: float
    n_known: int
    n_unknown: int
    dir_at_fpir: dict[float, dict[int, float]] = field(default_factory=dict)


def l2_normalize(embeddings: np.ndarray, axis: int = -1, eps: float = 1e-10) -> np.ndarray:
    """Scale vectors to unit L2 norm along ``axis``, leaving an all-zero vector at zero."""
    values = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(values, axis=axis, keepdims=True)
    return values / np.maximum(norms, eps)


def fuse_flip(embeddings: np.ndarray, flipped_embeddings: np.ndarray) -> np.ndarray:
    """Sum each embedding with that of its horizontally flipped image, then L2-normalise.

    This is InsightFace's test-time flip augmentation: the raw (unnormalised) embeddings are
    added, so their mean direction is what gets compared.
    """
    embeddings = np.asarray(embeddings)
    flipped_embeddings = np.asarray(flipped_embeddings)
    if embeddings.shape != flipped_embeddings.shape:
        raise MetricError(
            f"flipped embeddings must match the embeddings' shape: got {flipped_embeddings.shape} "
            f"and {embeddings.shape}"
        )
    return l2_normalize(embeddings.astype(np.float64) + flipped_embeddings)


def pair_scores(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Compute the cosine similarity for each row of ``pairs``, a (P, 2) array of indices into ``embeddings``."""
    embeddings = np.asarray(embeddings)
    pairs = np.asarray(pairs)
    if embeddings.ndim != 2:
        raise MetricError(f"embeddings must be a 2-D (N, D) array, got shape {embeddings.shape}")
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise MetricError(f"pairs must be a (P, 2) index array, got shape {pairs.shape}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= len(embeddings)):
        raise MetricError(
            f"pair indices must lie in [0, {len(embeddings)}), got [{pairs.min()}, {pairs.max()}]"
        )

    unit = l2_normalize(embeddings)
    return np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]])


def _check_scores(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    issame = np.asarray(issame).ravel()
    if scores.shape != issame.shape:
        raise MetricError(
            f"scores and issame must have the same length, got {scores.shape[0]} and {issame.shape[0]}"
        )
    if issame.dtype != np.bool_:
        if not np.isin(issame, (0, 1)).all():
            raise MetricError("issame must be boolean or 0/1")
        issame = issame.astype(bool)
    if not np.isfinite(scores).all():
        raise MetricError(f"scores must be finite; {int((~np.isfinite(scores)).sum())} are NaN or inf")
    return scores, issame


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Return the threshold that maximises accuracy on these pairs, and that accuracy.

    A pair is predicted genuine when ``score >= threshold``. Candidates are the midpoints
    between consecutive distinct scores plus ``-inf`` and ``+inf``, so the optimum is exact
    (no grid). Among equally accurate thresholds the lowest wins.
    """
    scores, issame = _check_scores(scores, issame)
    if scores.size == 0:
        raise MetricError("cannot choose a threshold on zero pairs")

    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    sorted_same = issame[order]

    # Cut position i accepts sorted pairs i..n-1: impostors below the cut and genuine pairs
    # above it are correct.
    impostors_below = np.concatenate(([0], np.cumsum(~sorted_same)))
    genuine_above = sorted_same.sum() - np.concatenate(([0], np.cumsum(sorted_same)))
    correct = impostors_below + genuine_above

    # A cut between two equal scores cannot be realised by any threshold.
    valid = np.ones(scores.size + 1, dtype=bool)
    valid[1:-1] = sorted_scores[1:] > sorted_scores[:-1]
    correct = np.where(valid, correct, -1)
    cut = int(np.argmax(correct))

    if cut == 0:
        threshold = -np.inf
    elif cut == scores.size:
        threshold = np.inf
    else:
        threshold = float((sorted_scores[cut - 1] + sorted_scores[cut]) / 2)
    return threshold, float(correct[cut]) / scores.size


def fold_bounds(n_pairs: int, n_folds: int = 10) -> list[tuple[int, int]]:
    """Return [start, stop) of each contiguous fold, sized as scikit-learn's unshuffled KFold."""
    if n_folds < 2:
        raise MetricError(f"n_folds must be at least 2, got {n_folds}")
    if n_pairs < n_folds:
        raise MetricError(f"{n_folds}-fold verification needs at least {n_folds} pairs, got {n_pairs}")

    sizes = np.full(n_folds, n_pairs // n_folds)
    sizes[: n_pairs % n_folds] += 1
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for size, stop in zip(sizes, stops)]


def kfold_accuracy(
    scores: np.ndarray, issame: np.ndarray, n_folds: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Return per-fold test accuracies and thresholds, each threshold fit on the other folds.

    Folds are contiguous blocks of pairs in the given order, as in InsightFace's
    ``calculate_roc``. Order the pairs so that every block mixes genuine and impostor pairs.
    """
    scores, issame = _check_scores(scores, issame)
    bounds = fold_bounds(scores.size, n_folds)

    accuracies = np.empty(n_folds)
    thresholds = np.empty(n_folds)
    for fold, (start, stop) in enumerate(bounds):
        test = np.zeros(scores.size, dtype=bool)
        test[start:stop] = True
        threshold, _ = best_threshold(scores[~test], issame[~test])
        predicted = scores[test] >= threshold
        accuracies[fold] = float(np.mean(predicted == issame[test]))
        thresholds[fold] = threshold
    return accuracies, thresholds


def roc_curve(scores: np.ndarray, issame: np.ndarray) -> RocCurve:
    """Compute the ROC at every distinct score, as ``sklearn.metrics.roc_curve`` with
    ``drop_intermediate=False`` does."""
    scores, issame = _check_scores(scores, issame)
    n_genuine = int(issame.sum())
    n_impostor = int(issame.size - n_genuine)
    if n_genuine == 0 or n_impostor == 0:
        raise MetricError(
            f"ROC needs genuine and impostor pairs, got {n_genuine} genuine and {n_impostor} impostor"
        )

    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_same = issame[order]
    # The last pair of each run of equal scores closes one ROC point.
    last_of_run = np.flatnonzero(np.diff(sorted_scores, append=-np.inf))
    true_accepts = np.cumsum(sorted_same)[last_of_run]
    false_accepts = (last_of_run + 1) - true_accepts

    fpr = np.concatenate(([0.0], false_accepts / n_impostor))
    tpr = np.concatenate(([0.0], true_accepts / n_genuine))
    thresholds = np.concatenate(([np.inf], sorted_scores[last_of_run]))
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds)


def roc_auc(roc: RocCurve) -> float:
    """Area under the ROC curve by the trapezoidal rule (tied scores count half)."""
    return float(np.trapz(roc.tpr, roc.fpr))


def equal_error_rate(roc: RocCurve) -> float:
    """Return the rate where the false accept rate equals the false reject rate.

    The crossing is interpolated linearly between the two ROC points around it.
    """
    gap = (1.0 - roc.tpr) - roc.fpr
    after = int(np.argmax(gap <= 0))
    if after == 0:
        return float(roc.fpr[0])
    before = after - 1
    step = gap[before] / (gap[before] - gap[after])
    return float(roc.fpr[before] + step * (roc.fpr[after] - roc.fpr[before]))


def tar_at_far(roc: RocCurve, far: float) -> float:
    """Return the highest true accept rate at a false accept rate of at most ``far``.

    No interpolation: with ``n`` impostor pairs a FAR below ``1 / n`` allows no false accept.
    """
    if not 0.0 <= far <= 1.0:
        raise MetricError(f"far must lie in [0, 1], got {far}")
    allowed = roc.fpr <= far + 1e-12
    return float(roc.tpr[allowed].max())


def evaluate_verification(
    scores: np.ndarray,
    issame: np.ndarray,
    *,
    n_folds: int = 10,
    fars: Sequence[float] = DEFAULT_FARS,
) -> VerificationResult:
    """Score verification pairs: k-fold accuracy, AUC, EER and TAR at each FAR."""
    scores, issame = _check_scores(scores, issame)
    accuracies, thresholds = kfold_accuracy(scores, issame, n_folds)
    roc = roc_curve(scores, issame)

    return VerificationResult(
        accuracy=float(accuracies.mean()),
        std=float(accuracies.std()),
        threshold=float(thresholds.mean()),
        auc=roc_auc(roc),
        eer=equal_error_rate(roc),
        tar_at_far={float(far): tar_at_far(roc, far) for far in fars},
        fold_accuracies=[float(value) for value in accuracies],
        n_pairs=int(scores.size),
        n_genuine=int(issame.sum()),
    )


def _average_precision(relevant: np.ndarray) -> float:
    hits = np.flatnonzero(relevant)
    precision_at_hits = np.arange(1, hits.size + 1) / (hits + 1)
    return float(precision_at_hits.mean())


def evaluate_identification(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    probes: np.ndarray,
    probe_labels: np.ndarray,
    *,
    ranks: Sequence[int] = DEFAULT_RANKS,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
) -> IdentificationResult:
    """Rank the gallery for every probe by cosine similarity and score the ranking.

    Ranks count gallery images, not identities: with one gallery image per identity the two
    agree. Probes whose label is absent from the gallery are the unknown probes of the open
    set; closed-set figures use the known probes only.
    """
    gallery = np.asarray(gallery)
    probes = np.asarray(probes)
    gallery_labels = np.asarray(gallery_labels).ravel()
    probe_labels = np.asarray(probe_labels).ravel()
    if gallery.ndim != 2 or probes.ndim != 2 or gallery.shape[1] != probes.shape[1]:
        raise MetricError(
            f"gallery and probes must be (N, D) arrays of one width, got {gallery.shape} and {probes.shape}"
        )
    if len(gallery_labels) != len(gallery) or len(probe_labels) != len(probes):
        raise MetricError(
            f"need one label per embedding: gallery {len(gallery)} embeddings, {len(gallery_labels)} labels; "
            f"probes {len(probes)} embeddings, {len(probe_labels)} labels"
        )
    known = np.isin(probe_labels, gallery_labels)
    if not known.any():
        raise MetricError("no probe identity is enrolled in the gallery")
    if any(rank < 1 for rank in ranks):
        raise MetricError(f"ranks must be at least 1, got {list(ranks)}")

    similarity = l2_normalize(probes) @ l2_normalize(gallery).T
    order = np.argsort(-similarity, axis=1, kind="stable")
    matches = gallery_labels[order] == probe_labels[:, None]
    best_scores = similarity.max(axis=1)

    known_matches = matches[known]
    first_match = known_matches.argmax(axis=1)
    first_match_scores = similarity[known][np.arange(known.sum()), order[known, first_match]]
    rank_accuracy = {int(rank): float(np.mean(first_match < rank)) for rank in ranks}
    mean_ap = float(np.mean([_average_precision(row) for row in known_matches]))

    dir_at_fpir: dict[float, dict[int, float]] = {}
    unknown_scores = np.sort(best_scores[~known])[::-1]
    if unknown_scores.size:
        for fpir in fpirs:
            allowed = int(np.floor(fpir * unknown_scores.size))
            if allowed >= unknown_scores.size:
                threshold = -np.inf
            else:
                # Just above the first unknown score that must be rejected; ties are rejected too.
                threshold = np.nextafter(unknown_scores[allowed], np.inf)
            detected = first_match_scores >= threshold
            dir_at_fpir[float(fpir)] = {
                int(rank): float(np.mean(detected & (first_match < rank))) for rank in ranks
            }

    return IdentificationResult(
        rank_accuracy=rank_accuracy,
        mean_average_precision=mean_ap,
        n_known=int(known.sum()),
        n_unknown=int((~known).sum()),
        dir_at_fpir=dir_at_fpir,
    )
