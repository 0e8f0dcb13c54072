"""The conformance suite of every registered method, generated from the registry.

As timm's tests iterate ``list_models()``, this module builds one `kdbench.testing.MethodConformance`
class per name in ``METHODS``: a method installed through an entry point (first-party or not)
cannot skip the suite. Plugins' own test files add option variants and golden values.
"""

from __future__ import annotations

import pytest

from kdbench import METHODS
from kdbench.testing import MethodConformance, conformance_suite

REGISTERED = METHODS.names()

for _name in REGISTERED:
    _suite = conformance_suite(_name)
    globals()[_suite.__name__] = _suite


def test_every_registered_method_has_a_generated_suite():
    suites = [c for c in globals().values() if isinstance(c, type) and issubclass(c, MethodConformance)]
    generated = {c.method for c in suites if c is not MethodConformance}
    assert generated == set(REGISTERED)
    assert {"iad", "adaad", "mtard", "kd", "gacd"} <= generated


def test_a_method_that_runs_its_own_attack_in_loss_fails_the_ball_check():
    """The ball check is never vacuous: an attack loop inside loss (bypassing ctx.x_adv) is caught."""
    from kdbench import Method
    from kdbench.attacks.objectives import cross_entropy
    from kdbench.attacks.pgd import pgd

    class SelfAttacking(Method):
        uses_teacher_logits = False

        def loss(self, ctx):
            with ctx.autocast():
                x_adv = pgd(ctx.student.forward_all, ctx.x, cross_entropy(ctx.y), steps=2)
            return {"ce": ctx.student.forward_all(x_adv).logits.float().logsumexp(1).mean()}

    METHODS.register("self_attacking_test", SelfAttacking)
    try:
        with pytest.raises(AssertionError, match=r"neither x nor|other than x"):
            conformance_suite("self_attacking_test")().test_training_attack_is_the_engines_and_stays_in_ball()
    finally:
        METHODS.unregister("self_attacking_test")
