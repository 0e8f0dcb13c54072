"""What a distilled student learned from its teacher, beyond accuracy.

`linear_cka` (Kornblith et al. 2019) compares representations, `class_correlation_distance` the
class structure of the logits (CRD, Tian et al. 2020), `relative_feature_change` the stability of the
student's features under attack. ``kdbench analyze RUN`` (`kdbench.commands.analyze`) computes them
for a finished run and stores them in its result.json.
"""

from __future__ import annotations

from kdbench.analysis.cka import linear_cka
from kdbench.analysis.correlation import class_correlation_distance, correlation_difference, logit_correlation
from kdbench.analysis.stability import adversarial_inputs, relative_feature_change

__all__ = [
    "adversarial_inputs",
    "class_correlation_distance",
    "correlation_difference",
    "linear_cka",
    "logit_correlation",
    "relative_feature_change",
]
