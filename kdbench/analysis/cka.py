"""Linear centered kernel alignment (CKA) between two representations of the same examples.

Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations Revisited", ICML
2019, eq. (5)/(6) with a linear kernel: for features X (n x d1) and Y (n x d2) of the same n inputs,
columns centred (X_c = X - 1 mean(X)),

    CKA(X, Y) = ||Y_c^T X_c||_F^2 / ( ||X_c^T X_c||_F  ||Y_c^T Y_c||_F )

which equals the Gram-matrix form HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = X_c X_c^T,
L = Y_c Y_c^T (||Y_c^T X_c||_F^2 = tr(K L)). It lies in [0, 1], is 1 for X = Y, and is invariant to
orthogonal transformations and isotropic scaling of either representation (not to arbitrary
invertible linear maps), so features of different widths (teacher and student) can be compared.
Computed in float64, in the cheaper of the two forms (d1 x d2 feature products or n x n Grams).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["linear_cka"]


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of ``x: (n, d1)`` and ``y: (n, d2)`` (rows are the same examples); NaN when either is constant."""
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"linear_cka takes (n, d) matrices, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same examples in both: {x.shape[0]} rows vs {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("linear_cka needs at least 2 examples")
    xc = x.detach().to(torch.float64)
    yc = y.detach().to(torch.float64)
    xc = xc - xc.mean(dim=0, keepdim=True)
    yc = yc - yc.mean(dim=0, keepdim=True)
    n, d1, d2 = xc.shape[0], xc.shape[1], yc.shape[1]
    if d1 * d2 + d1 * d1 + d2 * d2 <= 3 * n * n:
        cross = (yc.T @ xc).pow(2).sum()
        norm_x = torch.linalg.matrix_norm(xc.T @ xc)
        norm_y = torch.linalg.matrix_norm(yc.T @ yc)
    else:  # n < widths: the n x n Gram matrices are the smaller products
        k, l_ = xc @ xc.T, yc @ yc.T
        cross = (k * l_).sum()
        norm_x = torch.linalg.matrix_norm(k)
        norm_y = torch.linalg.matrix_norm(l_)
    denominator = float(norm_x * norm_y)
    if denominator == 0.0 or not math.isfinite(denominator):
        return math.nan
    return float(cross) / denominator
