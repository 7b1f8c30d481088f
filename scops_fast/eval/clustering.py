"""Clustering agreement scores (NMI, ARI) from contingency tables, with no scikit-learn.

Scores are computed from a contingency table so that a large evaluation (every foreground pixel
of a test set) can be accumulated batch by batch: add the tables, score once.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "contingency_table",
    "nmi_from_table",
    "ari_from_table",
    "normalized_mutual_info",
    "adjusted_rand_index",
    "add_tables",
]


def _labels(a, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a).reshape(-1)
    if a.size and (a.dtype.kind not in "iub" or a.min() < 0):
        raise ValueError(f"{name} must hold non-negative integer labels")
    return a.astype(np.int64)


def contingency_table(labels_a, labels_b, n_a: int | None = None, n_b: int | None = None):
    """(n_a, n_b) int64 counts of label pairs; labels are non-negative integers.

    Pass n_a / n_b to get fixed-size tables that can be summed across batches.
    """
    a, b = _labels(labels_a, "labels_a"), _labels(labels_b, "labels_b")
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in size: {a.size} vs {b.size}")
    n_a = int(a.max()) + 1 if n_a is None and a.size else (n_a or 0)
    n_b = int(b.max()) + 1 if n_b is None and b.size else (n_b or 0)
    if a.size and (a.max() >= n_a or b.max() >= n_b):
        raise ValueError(f"labels exceed the table size ({n_a}, {n_b})")
    flat = np.bincount(a * n_b + b, minlength=n_a * n_b)
    return flat.reshape(n_a, n_b).astype(np.int64)


def _entropy(counts: np.ndarray, n: float) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def nmi_from_table(table) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (scikit-learn's default).

    Conventions follow scikit-learn: both labelings with a single cluster (or empty) give 1.0;
    otherwise a zero denominator gives 0.0.
    """
    t = np.asarray(table, dtype=np.float64)
    rows, cols = t.sum(axis=1), t.sum(axis=0)
    n_rows, n_cols = int((rows > 0).sum()), int((cols > 0).sum())
    if n_rows == n_cols == 1 or n_rows == n_cols == 0:
        return 1.0
    n = t.sum()
    nz = t > 0
    outer = np.outer(rows, cols)
    mi = float((t[nz] / n * (np.log(t[nz] * n) - np.log(outer[nz]))).sum())
    mi = max(mi, 0.0)  # rounding can leave a tiny negative MI for independent labelings
    denom = 0.5 * (_entropy(rows, n) + _entropy(cols, n))
    if denom <= 0:
        return 0.0
    return min(mi / denom, 1.0)


def _pairs(x: np.ndarray) -> float:
    return float((x * (x - 1.0) / 2.0).sum())


def ari_from_table(table) -> float:
    """Adjusted Rand index (Hubert & Arabie). Identical partitions give 1.0, as in scikit-learn."""
    t = np.asarray(table, dtype=np.float64)
    n = t.sum()
    if n < 2:
        return 1.0
    sum_ij = _pairs(t)
    sum_a, sum_b = _pairs(t.sum(axis=1)), _pairs(t.sum(axis=0))
    total = n * (n - 1.0) / 2.0
    expected = sum_a * sum_b / total
    max_index = 0.5 * (sum_a + sum_b)
    if max_index == expected:
        # Both labelings trivial in the same way (one cluster, or all singletons): they agree.
        return 1.0
    return float((sum_ij - expected) / (max_index - expected))


def normalized_mutual_info(labels_a, labels_b) -> float:
    """NMI between two labelings of the same items (arithmetic normalisation)."""
    return nmi_from_table(contingency_table(labels_a, labels_b))


def adjusted_rand_index(labels_a, labels_b) -> float:
    """ARI between two labelings of the same items."""
    return ari_from_table(contingency_table(labels_a, labels_b))


def add_tables(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    """Sum two contingency tables, zero-padding the smaller one (a may be None)."""
    if a is None:
        return b.copy()
    shape = (max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1]))
    out = np.zeros(shape, dtype=np.int64)
    out[: a.shape[0], : a.shape[1]] += a
    out[: b.shape[0], : b.shape[1]] += b
    return out
