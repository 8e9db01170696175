"""Verification and identification metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from search.metrics import (
    MetricError,
    best_threshold,
    equal_error_rate,
    evaluate_identification,
    evaluate_verification,
    fold_bounds,
    fuse_flip,
    kfold_accuracy,
    l2_normalize,
    pair_scores,
    roc_auc,
    roc_curve,
    tar_at_far,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")
sklearn_model_selection = pytest.importorskip("sklearn.model_selection")

# Genuine 0.9, 0.8, 0.3 and impostor 0.7, 0.2, 0.1: at 0.75 FAR 0 and FRR 1/3, at 0.5 both 1/3.
SMALL_SCORES = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
SMALL_SAME = np.array([True, True, True, False, False, False])


def tied_random_scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    scores = np.round(rng.normal(issame * 0.6, 0.5), 1)  # rounding makes many ties
    return scores, issame


def test_l2_normalize_unit_and_zero() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(out[0], [0.6, 0.8])
    assert np.array_equal(out[1], [0.0, 0.0])


def test_fuse_flip_sums_before_normalising() -> None:
    fused = fuse_flip(np.array([[2.0, 0.0]]), np.array([[0.0, 2.0]]))
    assert np.allclose(fused, [[math.sqrt(0.5), math.sqrt(0.5)]])

    # Unnormalised sum: the longer vector dominates the direction.
    fused = fuse_flip(np.array([[3.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert np.allclose(fused, [[3 / math.sqrt(10), 1 / math.sqrt(10)]])


def test_fuse_flip_shape_mismatch() -> None:
    with pytest.raises(MetricError, match="flipped embeddings must match"):
        fuse_flip(np.zeros((2, 4)), np.zeros((3, 4)))


def test_pair_scores_match_sklearn_cosine() -> None:
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(12, 8))
    pairs = rng.integers(0, 12, size=(30, 2))
    expected = sklearn_metrics.pairwise.cosine_similarity(embeddings)[pairs[:, 0], pairs[:, 1]]
    assert np.allclose(pair_scores(embeddings, pairs), expected)


def test_pair_scores_index_out_of_range() -> None:
    with pytest.raises(MetricError, match=r"pair indices must lie in \[0, 3\)"):
        pair_scores(np.ones((3, 2)), np.array([[0, 3]]))


def test_best_threshold_separable() -> None:
    threshold, accuracy = best_threshold(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1]))
    assert threshold == pytest.approx(0.25)
    assert accuracy == 1.0


def test_best_threshold_lowest_of_ties() -> None:
    # Sorted: 0.1 impostor, 0.2 genuine, 0.3 impostor, 0.4 genuine; cuts at 0.15 and 0.35 both get 3 of 4.
    threshold, accuracy = best_threshold(np.array([0.1, 0.4, 0.3, 0.2]), np.array([0, 1, 0, 1]))
    assert threshold == pytest.approx(0.15)
    assert accuracy == 0.75


def test_best_threshold_equal_scores() -> None:
    threshold, accuracy = best_threshold(np.full(4, 0.5), np.array([1, 0, 1, 0]))
    assert threshold == -np.inf
    assert accuracy == 0.5


def test_fold_bounds_match_sklearn_kfold() -> None:
    for n_pairs in (10, 23, 1000, 6000):
        expected = [
            (int(test[0]), int(test[-1]) + 1)
            for _, test in sklearn_model_selection.KFold(n_splits=10, shuffle=False).split(np.zeros(n_pairs))
        ]
        assert fold_bounds(n_pairs, 10) == expected


def test_fold_bounds_too_few_pairs() -> None:
    with pytest.raises(MetricError, match="needs at least 10 pairs, got 9"):
        fold_bounds(9, 10)


def test_kfold_accuracy_one_bad_fold() -> None:
    # 10 folds of one genuine and one impostor pair; fold 3's genuine pair scores below every impostor.
    scores = np.tile([0.9, 0.1], 10)
    issame = np.tile([True, False], 10)
    scores[6] = 0.05
    accuracies, thresholds = kfold_accuracy(scores, issame, 10)

    assert accuracies[3] == 0.5
    assert np.all(np.delete(accuracies, 3) == 1.0)
    assert thresholds[0] == pytest.approx(0.5)
    result = evaluate_verification(scores, issame)
    assert result.accuracy == pytest.approx(0.95)
    assert result.std == pytest.approx(0.15)
    assert result.n_pairs == 20
    assert result.n_genuine == 10


def test_roc_curve_matches_sklearn() -> None:
    scores, issame = tied_random_scores()
    roc = roc_curve(scores, issame)
    fpr, tpr, thresholds = sklearn_metrics.roc_curve(issame, scores, drop_intermediate=False)

    assert np.allclose(roc.fpr, fpr)
    assert np.allclose(roc.tpr, tpr)
    assert np.allclose(roc.thresholds[1:], thresholds[1:])
    assert roc.thresholds[0] == np.inf


def test_roc_auc_matches_sklearn_with_ties() -> None:
    scores, issame = tied_random_scores(seed=2)
    assert roc_auc(roc_curve(scores, issame)) == pytest.approx(sklearn_metrics.roc_auc_score(issame, scores))


def test_roc_needs_both_classes() -> None:
    with pytest.raises(MetricError, match="got 0 genuine and 3 impostor"):
        roc_curve(np.array([0.1, 0.2, 0.3]), np.zeros(3, dtype=bool))


def test_equal_error_rate_hand_case() -> None:
    assert equal_error_rate(roc_curve(SMALL_SCORES, SMALL_SAME)) == pytest.approx(1 / 3)


def test_equal_error_rate_separable_is_zero() -> None:
    assert equal_error_rate(roc_curve(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0]))) == 0.0


def test_equal_error_rate_interpolates() -> None:
    # Genuine 0.9, 0.4; impostor 0.6, 0.1. ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1); FRR = FAR at 0.5.
    roc = roc_curve(np.array([0.9, 0.4, 0.6, 0.1]), np.array([1, 1, 0, 0]))
    assert equal_error_rate(roc) == pytest.approx(0.5)


def test_tar_at_far_hand_case() -> None:
    roc = roc_curve(SMALL_SCORES, SMALL_SAME)
    assert tar_at_far(roc, 0.0) == pytest.approx(2 / 3)
    assert tar_at_far(roc, 0.01) == pytest.approx(2 / 3)
    assert tar_at_far(roc, 1 / 3) == pytest.approx(1.0)


def test_tar_at_far_matches_sklearn() -> None:
    scores, issame = tied_random_scores(seed=3)
    fpr, tpr, _ = sklearn_metrics.roc_curve(issame, scores, drop_intermediate=False)
    roc = roc_curve(scores, issame)
    for far in (0.001, 0.01, 0.1, 0.5):
        assert tar_at_far(roc, far) == pytest.approx(tpr[fpr <= far].max())


def test_evaluate_verification_fields() -> None:
    scores, issame = tied_random_scores(n=200, seed=4)
    result = evaluate_verification(scores, issame, fars=(0.01, 0.001))

    assert set(result.tar_at_far) == {0.01, 0.001}
    assert len(result.fold_accuracies) == 10
    assert result.auc == pytest.approx(sklearn_metrics.roc_auc_score(issame, scores))
    assert 0.0 <= result.eer <= 1.0


def test_evaluate_verification_length_mismatch() -> None:
    with pytest.raises(MetricError, match="same length, got 3 and 2"):
        evaluate_verification(np.zeros(3), np.zeros(2, dtype=bool))


def test_identification_hand_case() -> None:
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gallery_labels = np.array([0, 1, 2])
    probes = np.array([[0.9, 0.1], [0.8, 0.6], [-0.6, -0.8]])
    probe_labels = np.array([0, 1, 2])
    result = evaluate_identification(gallery, gallery_labels, probes, probe_labels, ranks=(1, 2, 5))

    assert result.rank_accuracy == {1: pytest.approx(2 / 3), 2: 1.0, 5: 1.0}
    assert result.mean_average_precision == pytest.approx((1 + 0.5 + 1) / 3)
    assert result.n_known == 3
    assert result.n_unknown == 0
    assert result.dir_at_fpir == {}


def test_identification_open_set_hand_case() -> None:
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    probes = np.array([[0.9, 0.1], [0.8, 0.6], [-0.6, -0.8], [0.6, 0.8]])
    result = evaluate_identification(
        gallery, np.array([0, 1, 2]), probes, np.array([0, 1, 2, 9]), ranks=(1, 5), fpirs=(0.0, 1.0)
    )

    assert result.n_unknown == 1
    # The unknown probe's best score is 0.8; only probe 0 (0.99) beats it.
    assert result.dir_at_fpir[0.0] == {1: pytest.approx(1 / 3), 5: pytest.approx(1 / 3)}
    # FPIR 1 accepts everything, so DIR equals the closed-set rates.
    assert result.dir_at_fpir[1.0] == {1: pytest.approx(2 / 3), 5: 1.0}


def test_identification_map_matches_sklearn() -> None:
    rng = np.random.default_rng(5)
    gallery_labels = np.repeat(np.arange(6), 3)
    gallery = rng.normal(size=(18, 16)) + 2 * np.eye(16)[gallery_labels]
    probe_labels = np.arange(6).repeat(2)
    probes = rng.normal(size=(12, 16)) + 2 * np.eye(16)[probe_labels]
    result = evaluate_identification(gallery, gallery_labels, probes, probe_labels)

    similarity = l2_normalize(probes) @ l2_normalize(gallery).T
    expected = np.mean([
        sklearn_metrics.average_precision_score(gallery_labels == label, row)
        for label, row in zip(probe_labels, similarity)
    ])
    assert result.mean_average_precision == pytest.approx(expected)


def test_identification_no_known_probe() -> None:
    with pytest.raises(MetricError, match="no probe identity is enrolled"):
        evaluate_identification(np.eye(2), np.array([0, 1]), np.eye(2), np.array([5, 6]))
