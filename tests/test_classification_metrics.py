"""Classification metrics against hand-computed values."""
import math

import numpy as np
import pytest

from tunelab.metrics.classification import (
    accuracy, classification_metrics, log_loss, macro_f1, majority_probs, map_at_k, pearson, softmax, top_k_indices,
)


def test_map_at_3_hand_computed():
    probs = np.array([
        [0.5, 0.3, 0.1, 0.1],   # true 0 at rank 1 -> 1
        [0.5, 0.3, 0.15, 0.05],  # true 1 at rank 2 -> 1/2
        [0.5, 0.3, 0.15, 0.05],  # true 2 at rank 3 -> 1/3
        [0.5, 0.3, 0.15, 0.05],  # true 3 at rank 4 -> 0 (outside top 3)
    ])
    y = np.array([0, 1, 2, 3])
    assert map_at_k(y, probs, 3) == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)
    assert map_at_k(y, probs, 1) == pytest.approx(0.25)
    assert map_at_k(y, probs, 4) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_top_k_ties_are_stable_and_k_is_capped():
    probs = np.array([[0.25, 0.25, 0.25, 0.25]])
    assert top_k_indices(probs, 3).tolist() == [[0, 1, 2]]
    assert top_k_indices(np.array([[0.2, 0.8]]), 3).tolist() == [[1, 0]]


def test_log_loss_matches_definition():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    y = np.array([0, 1, 2])
    expected = -(math.log(0.7) + math.log(0.6) + math.log(0.6)) / 3
    assert log_loss(y, probs) == pytest.approx(expected)
    # Unnormalised rows are normalised first; classes absent from y still count as columns.
    assert log_loss(np.array([0]), np.array([[2.0, 1.0, 1.0]])) == pytest.approx(-math.log(0.5))


def test_accuracy_macro_f1_and_bundle():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 0, 1, 1])
    assert accuracy(y, probs) == pytest.approx(0.75)
    # class 0: P=2/3 R=1 F1=0.8; class 1: P=1 R=1/2 F1=2/3
    assert macro_f1(y, probs) == pytest.approx((0.8 + 2 / 3) / 2)
    m = classification_metrics(y, probs, k=3)
    assert set(m) == {"accuracy", "macro_f1", "log_loss", "map@3"}
    assert m["map@3"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)


def test_softmax_and_majority_baseline():
    p = softmax(np.array([[0.0, math.log(3.0)]]))
    assert p.tolist()[0] == pytest.approx([0.25, 0.75])
    prior = majority_probs(np.array([2, 2, 2, 1]), 3, n_rows=2)
    assert prior.shape == (2, 3)
    assert top_k_indices(prior, 3)[0].tolist() == [2, 1, 0]


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_temperature_scaling_lowers_the_log_loss_of_overconfident_logits():
    from tunelab.metrics.classification import apply_temperature, fit_temperature

    rng = np.random.default_rng(0)
    n, k = 400, 5
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.5  # informative,
    logits *= 6.0                   # but far too confident
    probs = softmax(logits)
    t = fit_temperature(y, probs)
    assert t > 2.0
    calibrated = apply_temperature(probs, t)
    assert log_loss(y, calibrated) < log_loss(y, probs) - 0.5
    assert (calibrated.argmax(1) == probs.argmax(1)).all()  # the ranking never changes
    np.testing.assert_allclose(calibrated, softmax(logits / t), atol=1e-9)  # = scaling the logits
    np.testing.assert_array_equal(apply_temperature(probs, 1.0), probs)    # T = 1 is a no-op


def test_temperature_is_one_when_scaling_cannot_help():
    from tunelab.metrics.classification import fit_temperature

    y = np.array([0, 1, 0, 1])
    assert fit_temperature(y, np.full((4, 2), 0.5)) == 1.0  # uniform predictions: every T gives ln 2


def test_prediction_spread_flags_constant_predictions():
    from tunelab.metrics.classification import prediction_spread

    constant = np.tile([0.5, 0.3, 0.1, 0.1], (50, 1))
    s = prediction_spread(constant, 3)
    assert s["distinct_top1"] == 1 and s["top_k_mode_share"] == 1.0 and s["prob_std"] < 1e-12
    varied = softmax(np.random.default_rng(1).normal(0, 3, (50, 4)))
    assert prediction_spread(varied, 3)["distinct_top1"] == 4
