"""How far the student's class correlations are from the teacher's.

CRD (Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020, Fig. 3) shows
that distillation restores the correlations between class logits that cross-entropy training
ignores, by plotting the difference between the correlation matrices of the teacher's and the
student's logits over the test set (CIFAR-100). We compute the same matrices and summarise the
difference by one number:

    C_T[i, j] = corr_x( z_T(x)_i, z_T(x)_j ),   C_S likewise     (Pearson, over the n inputs)
    distance  = (1 / (C (C - 1))) sum_{i != j} |C_T[i, j] - C_S[i, j]|

the mean absolute difference over the off-diagonal entries (the diagonal is 1 in both). 0 means the
student reproduces the teacher's class structure exactly; the maximum is 2. The figure in the paper
shows |C_T - C_S| as an image; the mean is our summary of it (the paper gives no scalar). A class
whose logit is constant over the inputs has no correlation; its row and column are taken as 0 off
the diagonal rather than NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_correlation_distance", "correlation_difference", "logit_correlation"]


def logit_correlation(logits: Tensor) -> Tensor:
    """Pearson correlation between classes over examples: ``(n, C) -> (C, C)`` (float64)."""
    if logits.ndim != 2 or logits.shape[0] < 2:
        raise ValueError(f"logit_correlation takes (n >= 2, C) logits, got shape {tuple(logits.shape)}")
    z = logits.detach().to(torch.float64)
    z = z - z.mean(dim=0, keepdim=True)
    std = z.pow(2).sum(dim=0).sqrt()
    z = z / torch.where(std > 0, std, torch.ones_like(std))
    corr = z.T @ z
    corr.fill_diagonal_(1.0)
    return corr.clamp(-1.0, 1.0)


def correlation_difference(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """``|C_T - C_S|``: ``(n, C), (n, C) -> (C, C)`` (the image of CRD's Fig. 3)."""
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher and student logits differ in shape: {tuple(teacher_logits.shape)} vs "
            f"{tuple(student_logits.shape)} (the classes must be the same)"
        )
    return (logit_correlation(teacher_logits) - logit_correlation(student_logits)).abs()


def class_correlation_distance(teacher_logits: Tensor, student_logits: Tensor) -> float:
    """Mean of ``|C_T - C_S|`` over the off-diagonal entries (see the module docstring)."""
    diff = correlation_difference(teacher_logits, student_logits)
    c = diff.shape[0]
    if c < 2:
        raise ValueError("class correlations need at least 2 classes")
    return float(diff.sum() / (c * (c - 1)))  # the diagonal of diff is 0
