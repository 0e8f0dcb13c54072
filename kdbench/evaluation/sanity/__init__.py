"""Sanity checks of a robustness evaluation; each returns flag strings (empty when all is well).

They catch the usual ways a robust accuracy is wrong (Carlini et al., "On Evaluating Adversarial
Robustness", 2019; Croce & Hein 2020): an attack that does not move the prediction at eps = 0 the way
it should, a model that outputs probabilities (softmax saturation gives vanishing gradients), a
multi-step attack weaker than a single step (gradient masking), AutoAttack weaker than PGD, more
PGD steps or a larger eps helping the model by more than noise, and a robust accuracy above the clean
one (impossible by construction here, so it means a bug).

Noise. Two randomised attacks on the same samples disagree on some of them. When the later, stronger
attack (more steps, larger eps) leaves ``g`` samples robust that the earlier one broke and breaks ``l``
that it left robust, its accuracy is higher by ``(g - l) / n``. Were both attacks equally strong, every
one of the ``d = g + l`` disagreements would go either way with probability 1/2, so ``g - l`` would have
mean 0 and standard deviation ``sqrt(d)``. `paired_noise_tolerance` allows two of those standard
deviations, and never less than `ATTACK_TOLERANCE`: ``max(0.01, 2 * sqrt(d) / n)``. A stronger attack
should only ever shift the balance the other way, so a flag is rare unless something is wrong.
This is McNemar's test on the paired per-sample outcomes (McNemar 1947) at about two standard errors;
the same tolerance decides every "attack A beats attack B" comparison below.

Severity. Every flag is a `Flag`: the message (a str, so flags stay plain strings in result.json)
plus ``check``, ``severity`` and the numbers behind it. ``serious`` means the headline robust
accuracy cannot be trusted (gradient masking, a randomised or non-deterministic model, an attack
bug); the leaderboard marks such a row unreliable, as RobustBench does. ``warning`` means a number
is probably overstated but the stronger attack that shows it is there to trust (e.g. PGD-20 above
AutoAttack by more than noise), or an observation that does not invalidate the run.

The masking and weak-attack checks (Carlini et al. 2019's checklist; Athalye et al. 2018):

* `check_deterministic`: two clean passes must give the same logits (else: a randomised model, whose
  evaluation needs EOT);
* `check_input_gradients`: the share of points whose input gradient of the cross-entropy is exactly
  zero, or non-finite (shattered or saturated gradients: quantised inputs, logits scaled by 1e4);
* `check_black_box`: a gradient-free attack (Square, Andriushchenko et al. 2020) must not beat PGD-20;
* `check_below_reference`: AutoAttack or CW more than noise below PGD-20 (say which one to trust);
* `check_unbounded`: at an eps that allows any image, PGD (step scaled to eps) must reach ~0 accuracy.
"""

from __future__ import annotations

from kdbench.evaluation.sanity.basic import (
    check_autoattack_vs_pgd,
    check_eps_zero,
    check_gradient_masking,
    check_logits,
    check_robust_le_clean,
)
from kdbench.evaluation.sanity.flags import SERIOUS, WARNING, Flag, Severity, as_flag, flag_details
from kdbench.evaluation.sanity.masking import (
    check_below_reference,
    check_black_box,
    check_class_coverage,
    check_deterministic,
    check_input_gradients,
    check_unbounded,
    unbounded_eps,
)
from kdbench.evaluation.sanity.monotone import check_eps_monotone, check_steps_monotone, paired_noise_tolerance

__all__ = [
    "SERIOUS",
    "WARNING",
    "Flag",
    "Severity",
    "as_flag",
    "check_autoattack_vs_pgd",
    "check_below_reference",
    "check_black_box",
    "check_class_coverage",
    "check_deterministic",
    "check_eps_monotone",
    "check_eps_zero",
    "check_gradient_masking",
    "check_input_gradients",
    "check_logits",
    "check_robust_le_clean",
    "check_steps_monotone",
    "check_unbounded",
    "flag_details",
    "paired_noise_tolerance",
    "unbounded_eps",
]
