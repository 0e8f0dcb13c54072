"""``natural``: plain cross-entropy training, for teachers and non-robust baselines.

    loss = CE(S(x), y)

No teacher, no attack. With PGD-AT and TRADES it is one of the teacher-training methods of
METHODS.md.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from kdbench import Method, StepContext

__all__ = ["Natural"]


class Natural(Method):
    """Cross-entropy on clean images: ``loss = CE(S(x), y)``."""

    needs_teacher: ClassVar[bool] = False
    uses_teacher_logits: ClassVar[bool] = False

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(ctx.student_clean.logits.float(), ctx.y)}
