import torch
import torch.nn.functional as F

from kdbench.testing import MethodConformance, make_context


class TestPGDATConformance(MethodConformance):
    method = "pgd_at"


def test_pgd_at_is_cross_entropy_on_adversarial_examples():
    method = TestPGDATConformance().build()
    ctx = make_context(method, seed=5)
    terms = method.loss(ctx)
    assert terms.keys() == {"ce_adv"}
    x_adv = ctx.computed("x_adv")
    assert x_adv is not None
    assert not torch.equal(x_adv, ctx.x)
    with torch.no_grad():
        expected = F.cross_entropy(ctx.student(x_adv), ctx.y)
    torch.testing.assert_close(terms["ce_adv"].detach(), expected)


def test_attack_raises_the_loss():
    method = TestPGDATConformance().build()
    ctx = make_context(method, seed=6, attack_options={"steps": 5})
    ctx.student.train()
    with torch.no_grad():
        clean = F.cross_entropy(ctx.student(ctx.x), ctx.y)
        adv = F.cross_entropy(ctx.student(ctx.x_adv), ctx.y)
    assert adv > clean
