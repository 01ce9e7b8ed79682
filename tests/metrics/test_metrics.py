import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from pare.metrics import (
    bootstrap_cis,
    bootstrap_deltas,
    classification_details,
    classification_metrics,
    majority_accuracy,
    mean_reciprocal_rank,
    perplexity,
    recall_at_k,
)
from pare.metrics.bootstrap import resampled_metric


def probs(pred, k, confidence=0.9):
    p = np.full((len(pred), k), (1 - confidence) / (k - 1))
    p[np.arange(len(pred)), pred] = confidence
    return p


def test_binary_metrics_on_a_hand_checked_case():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 1, 0, 1])
    m = classification_metrics(y, probs(pred, 2))
    # tp=4, fp=1, fn=1 for class 1
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(4 / 5)
    assert 0 <= m["roc_auc"] <= 1 and m["log_loss"] > 0


def test_multiclass_metrics_and_details():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    proba = rng.dirichlet(np.ones(4), 200)
    m = classification_metrics(y, proba)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, proba.argmax(1)))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    d = classification_details(y, proba, ["a", "b", "c", "d"])
    assert np.array(d["confusion_matrix"]).sum() == 200
    assert sum(c["support"] for c in d["per_class"].values()) == 200


def test_roc_auc_left_out_when_a_class_is_missing():
    y = np.array([0, 1, 0, 1])
    assert "roc_auc" not in classification_metrics(y, np.full((4, 3), 1 / 3))


@pytest.mark.parametrize("k", [2, 5])
def test_vectorised_bootstrap_metrics_equal_sklearn(k):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 300)
    pool = rng.dirichlet(np.ones(k), 12)  # few distinct rows: many ties, which AUC must average
    proba = pool[rng.integers(0, 12, 300)]
    idx = np.vstack([np.arange(300), rng.integers(0, 300, 300)])
    pred = proba.argmax(1)
    for row in idx:
        yr, pr = y[row], proba[row]
        auc = roc_auc_score(yr, pr[:, 1]) if k == 2 else roc_auc_score(yr, pr, multi_class="ovr")
        expected = {
            "accuracy": accuracy_score(yr, pred[row]),
            "f1_macro": f1_score(yr, pred[row], average="macro"),
            "roc_auc": auc,
        }
        for name, value in expected.items():
            got = resampled_metric(name, y, proba, row[None])[0]
            assert got == pytest.approx(value, abs=1e-12), name


def test_bootstrap_interval_contains_estimate_and_narrows_with_data():
    rng = np.random.default_rng(0)

    def width(n):
        y = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.8, y, 1 - y)
        ci = bootstrap_cis(y, probs(pred, 2), n_boot=500)["accuracy_ci95"]
        acc = (pred == y).mean()
        assert ci[0] <= acc <= ci[1]
        return ci[1] - ci[0]

    assert width(2000) < width(100) / 2.5


def test_paired_deltas():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 500)
    p = probs(np.where(rng.random(500) < 0.9, y, (y + 1) % 3), 3)
    same = bootstrap_deltas(y, p, p, n_boot=200)
    assert same["accuracy_ci95"] == [0.0, 0.0]
    worse = probs(np.where(rng.random(500) < 0.6, y, (y + 1) % 3), 3)
    ci = bootstrap_deltas(y, worse, p, n_boot=300)["accuracy_ci95"]
    assert ci[1] < 0  # clearly worse: the whole interval below zero


def test_majority_accuracy():
    assert majority_accuracy(np.array([1, 1, 0]), np.array([1, 0, 1, 1])) == 0.75


def test_recall_at_k_and_mrr():
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.2, 0.5], [0.1, 0.2, 0.3]])
    relevant = np.array([0, 2, 0])  # ranks: 1, 2, 3
    assert recall_at_k(scores, relevant, ks=(1, 2, 3)) == {
        "recall_at_1": 1 / 3,
        "recall_at_2": 2 / 3,
        "recall_at_3": 1.0,
    }
    assert mean_reciprocal_rank(scores, relevant) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_perplexity_of_uniform_model_is_vocabulary_size():
    vocab, tokens = 50, 1000
    assert perplexity(tokens * math.log(vocab), tokens) == pytest.approx(vocab)
    with pytest.raises(ValueError):
        perplexity(1.0, 0)
