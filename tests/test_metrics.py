"""Metrics: scikit-learn's accuracy/F1, a hand-checked ECE, the confusion matrix, paired differences, temperature."""
import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss

from kdapp.metrics import (ECE_BINS, classification_metrics, fit_temperature, paired_difference, reliability,
                           softmax, trainer_metrics)


def _logits_for(p_positive):
    """Two-class logits whose softmax gives P(positive) = p."""
    p = np.asarray(p_positive, dtype=np.float64)
    return np.stack([np.zeros_like(p), np.log(p / (1 - p))], axis=-1)


def test_accuracy_and_f1_equal_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 2))
    labels = rng.integers(0, 2, size=200)
    labels[:40] = 1  # unbalanced, so weighted F1 differs from accuracy and macro F1
    preds = logits.argmax(-1)
    m = classification_metrics(logits, labels)
    assert m["n"] == 200
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert m["f1_weighted"] == pytest.approx(f1_score(labels, preds, average="weighted"))
    assert m["f1_weighted"] != pytest.approx(f1_score(labels, preds, average="macro"))
    assert m["nll"] == pytest.approx(log_loss(labels, softmax(logits)))
    t = trainer_metrics((logits, labels))
    assert t == pytest.approx({"accuracy": m["accuracy"], "f1_weighted": m["f1_weighted"]})


def test_ece_on_a_hand_made_example():
    # rows 0-1: confidence 0.95 (bin 15), one right, one wrong -> |0.5 - 0.95| * 2/4 = 0.225
    # rows 2-3: confidence 0.70 (bin 11), both right           -> |1.0 - 0.70| * 2/4 = 0.150
    logits = _logits_for([0.95, 0.95, 0.30, 0.70])
    labels = np.array([1, 0, 0, 1])
    m = classification_metrics(logits, labels)
    assert m["ece"] == pytest.approx(0.375, abs=1e-9)
    bins = m["reliability"]
    assert len(bins) == ECE_BINS == 15
    assert bins[0]["lo"] == 0.0 and bins[-1]["hi"] == pytest.approx(1.0)
    assert [b["count"] for b in bins] == [0] * 10 + [2, 0, 0, 0, 2]
    assert bins[14]["accuracy"] == 0.5 and bins[14]["confidence"] == pytest.approx(0.95)
    assert bins[10]["accuracy"] == 1.0 and bins[10]["confidence"] == pytest.approx(0.70)
    assert bins[0]["accuracy"] is None  # empty bins carry no point


def test_perfectly_calibrated_bins_give_zero_ece():
    probs = np.array([[0.2, 0.8]] * 5)
    labels = np.array([1, 1, 1, 1, 0])  # 80 % right at confidence 0.8
    assert reliability(probs, labels)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_confusion_matrix_is_two_by_two_even_with_one_predicted_class():
    logits = _logits_for([0.9, 0.8, 0.7])  # always positive
    m = classification_metrics(logits, np.array([1, 0, 1]))
    assert m["confusion_matrix"] == [[0, 1], [0, 2]]  # rows: true label, columns: prediction


def test_paired_difference():
    a = np.array([1, 1, 0, 1])
    b = np.array([1, 0, 0, 0])
    d = paired_difference(a, b)
    se = math.sqrt(1 / 3) / 2  # std(ddof=1) of [0, 1, 0, 1] over sqrt(4)
    assert d["diff"] == pytest.approx(0.5)
    assert d["ci_low"] == pytest.approx(0.5 - 1.96 * se) and d["ci_high"] == pytest.approx(0.5 + 1.96 * se)
    assert (d["n"], d["a_only"], d["b_only"]) == (4, 2, 0)
    assert paired_difference(b, a)["diff"] == pytest.approx(-0.5)


def test_fit_temperature_lowers_nll_of_overconfident_logits():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=400)
    right = rng.random(400) < 0.75  # 75 % accurate ...
    preds = np.where(right, labels, 1 - labels)
    logits = np.zeros((400, 2))
    logits[np.arange(400), preds] = 8.0  # ... but ~100 % confident
    temperature = fit_temperature(logits, labels)
    assert temperature > 2.0
    before = classification_metrics(logits, labels)
    after = classification_metrics(logits, labels, temperature=temperature)
    assert after["nll"] < before["nll"] - 0.5
    assert after["ece"] < before["ece"]
    assert after["accuracy"] == before["accuracy"]  # scaling never changes the argmax


def test_fit_temperature_sharpens_underconfident_logits():
    labels = np.array([0, 1] * 50)
    logits = _logits_for(np.where(labels == 1, 0.6, 0.4))  # always right, only 60 % sure
    assert fit_temperature(logits, labels) < 1.0
