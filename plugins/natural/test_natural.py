import torch
import torch.nn.functional as F

from kdbench.testing import MethodConformance, make_context


class TestNaturalConformance(MethodConformance):
    method = "natural"


def test_natural_is_cross_entropy_on_clean_logits():
    method = TestNaturalConformance().build()
    ctx = make_context(method, seed=3)
    terms = method.loss(ctx)
    with torch.no_grad():
        expected = F.cross_entropy(ctx.student(ctx.x), ctx.y)
    assert terms.keys() == {"ce"}
    torch.testing.assert_close(terms["ce"].detach(), expected)
