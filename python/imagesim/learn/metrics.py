"""Multilabel metrics in numpy: F1 (samples, micro, macro), per-class P/R/F1, average precision,
per-class threshold tuning and the label-frequency baseline.

Conventions follow scikit-learn's defaults so numbers compare with the design notebook: a sample or
class whose F1 has a zero denominator counts as 0 (``zero_division=0``); average precision is
``sum((R_n - R_{n-1}) * P_n)`` over distinct score thresholds. Macro F1 and mAP average over the
classes that have at least one positive in the evaluated set (a class absent from validation says
nothing about the model); ``classes_evaluated`` records how many that was.
"""

from __future__ import annotations

import numpy as np

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b > 0)


def f1_scores(y: np.ndarray, pred: np.ndarray) -> dict:
    """F1 samples/micro/macro and per-class precision/recall/F1/support for 0/1 arrays (n, c)."""
    y = y.astype(bool)
    pred = pred.astype(bool)
    tp = (y & pred).sum(0)
    fp = (~y & pred).sum(0)
    fn = (y & ~pred).sum(0)
    support = y.sum(0)
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    per_sample = _div(2 * (y & pred).sum(1), y.sum(1) + pred.sum(1))
    present = support > 0
    return {
        "f1_samples": float(per_sample.mean()) if len(y) else 0.0,
        "f1_micro": float(_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
    }


def average_precision(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class average precision (NaN for a class with no positives)."""
    n, c = y.shape
    ap = np.full(c, np.nan)
    for k in range(c):
        pos = y[:, k].astype(bool)
        if not pos.any():
            continue
        order = np.argsort(-scores[:, k], kind="mergesort")
        s = scores[order, k]
        hits = pos[order]
        last = np.r_[np.flatnonzero(np.diff(s)), n - 1]  # last index of each distinct score
        tps = np.cumsum(hits)[last]
        fps = (last + 1) - tps
        precision = tps / (tps + fps)
        recall = tps / pos.sum()
        ap[k] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return ap


def tune_thresholds(y: np.ndarray, scores: np.ndarray, default: float) -> np.ndarray:
    """Per-class threshold on ``THRESHOLD_GRID`` that maximises that class's F1 (ties: nearest to
    ``default``); classes without positives keep ``default``."""
    y = y.astype(bool)
    c = y.shape[1]
    out = np.full(c, default, dtype=np.float64)
    grid = np.unique(np.r_[THRESHOLD_GRID, default])
    for k in range(c):
        if not y[:, k].any():
            continue
        pred = scores[:, k][None, :] >= grid[:, None]  # (g, n)
        tp = (pred & y[:, k]).sum(1)
        fp = (pred & ~y[:, k]).sum(1)
        fn = (~pred & y[:, k]).sum(1)
        f1 = _div(2 * tp, 2 * tp + fp + fn)
        best = np.flatnonzero(f1 == f1.max())
        out[k] = grid[best[np.argmin(np.abs(grid[best] - default))]]
    return out


def evaluate(y: np.ndarray, scores: np.ndarray, classes: list[str], threshold: float) -> dict:
    """Everything reported per epoch: F1 at ``threshold`` and at tuned per-class thresholds, mAP, per class."""
    fixed = f1_scores(y, scores >= threshold)
    thresholds = tune_thresholds(y, scores, threshold)
    tuned = f1_scores(y, scores >= thresholds[None, :])
    ap = average_precision(y, scores)
    present = ~np.isnan(ap)
    per_class = {
        name: {
            "support": int(tuned["support"][k]),
            "threshold": float(thresholds[k]),
            "precision": float(tuned["precision"][k]),
            "recall": float(tuned["recall"][k]),
            "f1": float(tuned["f1"][k]),
            "f1_at_default": float(fixed["f1"][k]),
            "ap": None if np.isnan(ap[k]) else float(ap[k]),
        }
        for k, name in enumerate(classes)
    }
    return {
        "f1_samples": fixed["f1_samples"],
        "f1_micro": fixed["f1_micro"],
        "f1_macro": fixed["f1_macro"],
        "f1_samples_tuned": tuned["f1_samples"],
        "f1_micro_tuned": tuned["f1_micro"],
        "f1_macro_tuned": tuned["f1_macro"],
        "map": float(ap[present].mean()) if present.any() else 0.0,
        "classes_evaluated": int(present.sum()),
        "thresholds": thresholds.tolist(),
        "per_class": per_class,
    }


def frequency_baseline(y_train: np.ndarray, y_val: np.ndarray) -> dict:
    """The best image-blind predictor: every validation chip gets the classes whose training frequency
    is at least f, with f chosen on validation to maximise micro F1 (an upper bound for any rule that
    ignores the pixels and predicts the same set everywhere)."""
    freq = y_train.astype(np.float64).mean(0)
    best: dict | None = None
    for f in np.unique(freq[freq > 0])[::-1]:
        pred = np.broadcast_to(freq >= f, y_val.shape)
        s = f1_scores(y_val, pred)
        if best is None or s["f1_micro"] > best["f1_micro"]:
            best = {
                "f1_micro": s["f1_micro"],
                "f1_samples": s["f1_samples"],
                "f1_macro": s["f1_macro"],
                "min_frequency": float(f),
                "classes_predicted": int((freq >= f).sum()),
            }
    return best or {"f1_micro": 0.0, "f1_samples": 0.0, "f1_macro": 0.0, "min_frequency": None, "classes_predicted": 0}
