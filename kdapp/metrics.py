"""Accuracy, weighted F1 and confusion matrix (scikit-learn), ECE and reliability bins, temperature scaling.

Arrays in, plain floats/lists out, so results serialise straight to JSON.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Expected calibration error over `n_bins` equal-width bins of the top-class probability, and the bins."""
    conf = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        count = int(in_bin.sum())
        if count:
            acc, avg_conf = float(correct[in_bin].mean()), float(conf[in_bin].mean())
            ece += count / len(conf) * abs(acc - avg_conf)
        else:
            acc, avg_conf = None, None
        bins.append({"lo": float(lo), "hi": float(hi), "count": count, "accuracy": acc, "confidence": avg_conf})
    return {"ece": float(ece), "bins": bins}


def classification_metrics(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict:
    """Everything kdapp reports about predictions: accuracy, weighted F1, NLL, confusion matrix, ECE, reliability."""
    labels = np.asarray(labels)
    probs = softmax(logits, temperature)
    preds = probs.argmax(axis=-1)
    rel = reliability(probs, labels)
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, preds)),
        "f1_weighted": float(f1_score(labels, preds, average="weighted")),
        "nll": float(log_loss(labels, probs, labels=list(range(probs.shape[-1])))),
        "ece": rel["ece"],
        "confusion_matrix": confusion_matrix(labels, preds, labels=list(range(probs.shape[-1]))).tolist(),
        "reliability": rel["bins"],
    }


def trainer_metrics(eval_pred) -> dict:
    """compute_metrics for the Trainer's periodic evaluation (the live curves): accuracy and weighted F1."""
    logits, labels = eval_pred
    preds = np.asarray(logits).argmax(axis=-1)
    return {"accuracy": float(accuracy_score(labels, preds)),
            "f1_weighted": float(f1_score(labels, preds, average="weighted"))}


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 that minimises validation NLL, fitted with L-BFGS on log T."""
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().item())


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, z: float = 1.96) -> dict:
    """Accuracy difference a - b on the same rows with a 95 % normal interval on the paired per-row differences."""
    d = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"diff": mean, "ci_low": mean - z * se, "ci_high": mean + z * se, "n": int(len(d)),
            "a_only": int((d > 0).sum()), "b_only": int((d < 0).sum())}
