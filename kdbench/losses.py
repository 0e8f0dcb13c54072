"""Loss pieces that several distillation methods share, for plugin authors.

Every function takes logits ``(B, C)`` (any float dtype; computed in float32) and returns a float32
tensor. Notation: ``p = softmax(z / T)``, ``KL(p || q) = sum_c p_c (log p_c - log q_c)`` per sample.

- `softened_kl`: Hinton et al.'s temperature-softened ``T^2 KL(p_T || p_S)`` (Hinton, Vinyals & Dean,
  "Distilling the Knowledge in a Neural Network", arXiv:1503.02531, 2015), the distillation term of
  KD, ARD, IAD, AdaAD and the TRADES regulariser (T = 1). The target's logits are *not* detached:
  where a method's target carries gradients (TRADES, IAD's introspection term) they flow; detach
  the target yourself when it must not.
- `reduce_kl`: the reductions the official codes use, from the elementwise terms ``(B, C)``:
  ``"batchmean"`` (sum over classes, mean over the batch: the textbook KL), ``"mean"`` (mean over
  all B x C elements, ``nn.KLDivLoss()``'s default, 1/C of batchmean: ARD, AdaAD on CIFAR-10, RSLAD,
  MTARD), ``"sum"`` and ``"none"`` (per sample, ``(B,)``).
- `kl_log_eps`: RSLAD's and MTARD's official elementwise ``p_T (log(p_T + 1e-5) - log p_S)``
  (Zi et al., ICCV 2021; Zhao et al., ECCV 2022): differs from the exact KL by a term that does not
  depend on the student, so its student gradients are the exact KL's. The target probabilities are
  detached, as in both codes.
- `true_class_probability`: ``p(y | x) = softmax(z)_y``, the confidence weight of GACD and IAD.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KLReduction", "kl_log_eps", "reduce_kl", "softened_kl", "true_class_probability"]

KLReduction = Literal["batchmean", "mean", "sum", "none"]
#: Inside RSLAD's and MTARD's log(p + 1e-5): keeps the log finite where a probability underflows to 0.
LOG_EPS = 1e-5


def reduce_kl(elementwise: Tensor, reduction: KLReduction) -> Tensor:
    """Reduce elementwise KL terms ``(B, C)``: ``batchmean`` / ``mean`` / ``sum`` -> scalar, ``none`` -> ``(B,)``."""
    if reduction == "batchmean":
        return elementwise.sum(dim=1).mean()
    if reduction == "mean":
        return elementwise.mean()
    if reduction == "sum":
        return elementwise.sum()
    if reduction == "none":
        return elementwise.sum(dim=1)
    raise ValueError(f"unknown KL reduction {reduction!r} (choices: batchmean, mean, sum, none)")


def softened_kl(
    student_logits: Tensor,
    target_logits: Tensor,
    temperature: float = 1.0,
    reduction: KLReduction = "batchmean",
) -> Tensor:
    """``T^2 KL(softmax(z_t / T) || softmax(z_s / T))``, reduced by `reduce_kl`.

    ``student_logits, target_logits: (B, C)``. The ``T^2`` factor keeps the gradient scale independent
    of T (Hinton et al. 2015, section 2); at T = 1 it is 1. Gradients reach both arguments unless the
    caller detaches the target.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(target_logits.float() / temperature, dim=1)
    elementwise = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True)
    return reduce_kl(elementwise, reduction) * temperature**2


def kl_log_eps(student_logits: Tensor, target_probs: Tensor, reduction: KLReduction = "mean") -> Tensor:
    """RSLAD / MTARD's official KL: elementwise ``-b * a + b * log(b + 1e-5)``, ``a = log_softmax(z_S)``, ``b = p_T``.

    ``student_logits: (B, C)``, ``target_probs: (B, C)`` (rows sum to 1, detached here), reduced by
    `reduce_kl` (the official codes take ``torch.mean``: ``"mean"``).
    """
    a = F.log_softmax(student_logits.float(), dim=1)
    b = target_probs.detach().float()
    return reduce_kl(-b * a + b * torch.log(b + LOG_EPS), reduction)


def true_class_probability(logits: Tensor, y: Tensor) -> Tensor:
    """``softmax(z)_y`` per sample: ``logits: (B, C)``, ``y: (B,)`` -> ``(B,)`` (autograd kept; detach to weight)."""
    return F.softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
