"""GACD: the conformance suite over its options, golden values computed by hand, and what each loss term
and attack objective reads and trains."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch

from kdbench import METHODS, MethodSetup, ModelOutput
from kdbench.testing import MethodConformance, make_context


class TestGACDConformance(MethodConformance):
    method = "gacd"  # guided attack plus CE, weights p_T(y | x)


class TestGACDGuidedOnly(MethodConformance):
    method = "gacd"
    options: ClassVar[dict[str, Any]] = {"attack_objective": "gacd"}


class TestGACDCrossEntropyAttackAdversarialWeights(MethodConformance):
    method = "gacd"
    options: ClassVar[dict[str, Any]] = {"attack_objective": "ce", "weight_source": "adversarial"}


class TestGACDKLAttackUnweighted(MethodConformance):
    method = "gacd"
    options: ClassVar[dict[str, Any]] = {"attack_objective": "kl", "weight_source": "off"}


class TestGACDTeacherAnchoredOnly(MethodConformance):
    method = "gacd"
    options: ClassVar[dict[str, Any]] = {"anchors": "teacher"}


class TestGACDMemoryPositives(MethodConformance):
    method = "gacd"
    options: ClassVar[dict[str, Any]] = {"positives": "memory"}


class TestGACDTeacherMaxWithKD(MethodConformance):
    method = "gacd"
    options: ClassVar[dict[str, Any]] = {"weight_source": "teacher_max", "kd_weight": 0.5, "negatives": 16}


# ------------------------------------------------------------------------------------ golden values


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _embed(w: list[list[float]], b: list[float], f: list[float]) -> list[float]:
    return _unit([sum(wi * fi for wi, fi in zip(row, f, strict=True)) + bi for row, bi in zip(w, b, strict=True)])


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _h(a: list[float], v: list[float], z: float, n: int, n_data: int, tau: float = 0.07) -> float:
    """CRD's critic P / (P + N/M), P = exp(a.v / tau) / Z."""
    p = math.exp(sum(x * y for x, y in zip(a, v, strict=True)) / tau) / z
    return p / (p + n / n_data)


class _Ctx:
    """Just the views GACD reads, on fixed tensors."""

    def __init__(self, student_adv, teacher_clean, teacher_adv, y, index):
        self.student_adv, self.teacher_clean, self.teacher_adv = student_adv, teacher_clean, teacher_adv
        self.y, self.index = y, index


W_S, B_S = [[1.0, 0.5], [-0.5, 1.0]], [0.1, 0.0]
W_T, B_T = [[0.8, 0.0], [0.3, -1.0]], [0.0, 0.2]
MEM_S = [_unit(v) for v in ([1, 0], [0, 1], [1, 1], [-1, 0.5], [0.3, -1], [-1, -1])]
F_ADV, F_T = [[1.0, 2.0], [-1.0, 0.5]], [[0.5, -1.0], [2.0, 1.0]]
MEM_T = [_unit(v) for v in ([0.2, 1], [1, -0.4], [-0.6, -1], [0.9, 0.9], [-1, 0.1], [0.5, -0.5])]
Z, Z_T_BANK, N_DATA = 4.0, 2.5, 6
INDEX, Y = [2, 4], [1, 0]
NEG = [[0, 3, 5], [1, 3, 4]]
Z_ADV = [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]]
Z_T = [[0.5, 1.5, -1.0], [2.0, 0.0, 1.0]]
Z_T_ADV = [[1.0, 0.0, 0.0], [-1.0, 0.5, 0.0]]


def _golden(weight_source: str = "clean", **options: Any):
    options.setdefault("positives", "current")  # the golden values below are of "current" unless a test asks
    cls = METHODS.get("gacd")
    setup = MethodSetup(3, 2, 2, 3, N_DATA, torch.device("cpu"))
    method = cls(cls.Config(embed_dim=2, negatives=3, weight_source=weight_source, **options), setup)
    with torch.no_grad():
        method.embed_s.linear.weight.copy_(torch.tensor(W_S))
        method.embed_s.linear.bias.copy_(torch.tensor(B_S))
        method.embed_t.linear.weight.copy_(torch.tensor(W_T))
        method.embed_t.linear.bias.copy_(torch.tensor(B_T))
        method.memory.memory_student = torch.tensor(MEM_S)
        method.memory.z_student.fill_(Z)
        if method.config.anchors == "both":
            method.memory.memory_teacher = torch.tensor(MEM_T)
            method.memory.z_teacher.fill_(Z_T_BANK)
    method.memory.sample_negatives = lambda y, n, c: torch.tensor(NEG)  # fixed negatives
    ctx = _Ctx(
        ModelOutput(torch.tensor(Z_ADV), torch.tensor(F_ADV)),
        ModelOutput(torch.tensor(Z_T), torch.tensor(F_T)),
        ModelOutput(torch.tensor(Z_T_ADV), torch.tensor(F_T)),
        torch.tensor(Y),
        torch.tensor(INDEX),
    )
    return method, ctx


def _reference(weights: list[float], features: list[list[float]] = F_ADV) -> tuple[float, float, float]:
    """(CE(S(x'), y), L_T, L_S) with Python loops: the teacher- and student-anchored halves."""
    s = [_embed(W_S, B_S, f) for f in features]
    t = [_embed(W_T, B_T, f) for f in F_T]
    l_t = l_s = 0.0
    for b in range(2):
        l_t -= weights[b] * math.log(_h(t[b], s[b], Z, 3, N_DATA))
        l_t -= sum(math.log(1 - _h(t[b], MEM_S[j], Z, 3, N_DATA)) for j in NEG[b])
        l_s -= weights[b] * math.log(_h(s[b], t[b], Z_T_BANK, 3, N_DATA))
        l_s -= sum(math.log(1 - _h(s[b], MEM_T[j], Z_T_BANK, 3, N_DATA)) for j in NEG[b])
    ce = sum(-math.log(_softmax(Z_ADV[b])[Y[b]]) for b in range(2))
    return ce / 2, l_t / 2, l_s / 2


@pytest.mark.parametrize(
    ("source", "weights"),
    [
        ("clean", [_softmax(Z_T[b])[Y[b]] for b in range(2)]),
        ("adversarial", [_softmax(Z_T_ADV[b])[Y[b]] for b in range(2)]),
        ("teacher_max", [max(_softmax(Z_T[b])) for b in range(2)]),
        ("off", [1.0, 1.0]),
    ],
)
def test_gacd_golden_value(source, weights):
    method, ctx = _golden(source)
    terms = method.loss(ctx)  # type: ignore[arg-type]
    ce, l_t, l_s = _reference(weights)
    assert terms.keys() == {"ce_adv", "gacd_t", "gacd_s"}
    assert terms["ce_adv"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["gacd_t"].item() == pytest.approx(0.8 * l_t, rel=1e-5)
    assert terms["gacd_s"].item() == pytest.approx(0.8 * l_s, rel=1e-5)
    if source == "clean":
        assert sum(terms.values()).item() == pytest.approx(26.7052227, rel=1e-5)  # pinned


def test_memory_positives_golden_value():
    """positives = "memory": each half's positive is the sample's own row of the other side's bank (CRD)."""
    weights = [_softmax(Z_T[b])[Y[b]] for b in range(2)]
    method, ctx = _golden(positives="memory")
    terms = method.loss(ctx)  # type: ignore[arg-type]
    s = [_embed(W_S, B_S, f) for f in F_ADV]
    t = [_embed(W_T, B_T, f) for f in F_T]
    l_t = l_s = 0.0
    for b in range(2):
        i = INDEX[b]
        l_t -= weights[b] * math.log(_h(t[b], MEM_S[i], Z, 3, N_DATA))
        l_t -= sum(math.log(1 - _h(t[b], MEM_S[j], Z, 3, N_DATA)) for j in NEG[b])
        l_s -= weights[b] * math.log(_h(s[b], MEM_T[i], Z_T_BANK, 3, N_DATA))
        l_s -= sum(math.log(1 - _h(s[b], MEM_T[j], Z_T_BANK, 3, N_DATA)) for j in NEG[b])
    assert terms["gacd_t"].item() == pytest.approx(0.8 * l_t / 2, rel=1e-5)
    assert terms["gacd_s"].item() == pytest.approx(0.8 * l_s / 2, rel=1e-5)
    method, ctx = _golden(positives="memory", attack_objective="gacd")
    got = method.attack_objective(ctx)(ModelOutput(torch.zeros(2, 3), torch.tensor(F_ADV)))  # type: ignore[arg-type]
    expected = [
        -math.log(_h(s[b], MEM_T[INDEX[b]], Z_T_BANK, 3, N_DATA))
        - sum(math.log(1 - _h(s[b], MEM_T[j], Z_T_BANK, 3, N_DATA)) for j in NEG[b])
        for b in range(2)
    ]
    assert got.tolist() == pytest.approx(expected, rel=1e-5)


def test_default_positives_are_memory_rows_and_current_for_the_teacher_anchored_ablation():
    cls = METHODS.get("gacd")
    assert cls.Config().positives == "memory"
    assert cls.Config(anchors="teacher").positives == "current"
    assert cls.Config(anchors="both").positives == "memory"


def test_memory_positives_need_both_anchors():
    cls = METHODS.get("gacd")
    with pytest.raises(ValueError, match="needs anchors = 'both'"):
        cls.Config(positives="memory", anchors="teacher")


def test_teacher_anchored_only_is_the_literal_estimator():
    weights = [_softmax(Z_T[b])[Y[b]] for b in range(2)]
    method, ctx = _golden(anchors="teacher")
    terms = method.loss(ctx)  # type: ignore[arg-type]
    ce, l_t, _ = _reference(weights)
    assert terms.keys() == {"ce_adv", "gacd_t"}
    assert terms["ce_adv"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["gacd_t"].item() == pytest.approx(0.8 * l_t, rel=1e-5)
    assert not hasattr(method.memory, "memory_teacher")  # teacher-anchored only: no teacher bank
    assert sum(terms.values()).item() == pytest.approx(9.0648966, rel=1e-5)  # pinned


def _head_grads(method, term_values) -> dict[str, bool]:
    heads = {"embed_s": method.embed_s, "embed_t": method.embed_t}
    out = {}
    for name, head in heads.items():
        grads = torch.autograd.grad(term_values, list(head.parameters()), allow_unused=True, retain_graph=True)
        out[name] = any(g is not None and g.abs().sum() > 0 for g in grads)
    return out


def test_each_half_trains_the_head_of_its_own_anchor():
    """anchors = "both": gacd_t reaches only g_T, gacd_s only g_S (CRD's structure); "teacher": both."""
    method, ctx = _golden()
    terms = method.loss(ctx)  # type: ignore[arg-type]
    assert _head_grads(method, terms["gacd_t"]) == {"embed_s": False, "embed_t": True}
    assert _head_grads(method, terms["gacd_s"]) == {"embed_s": True, "embed_t": False}
    method, ctx = _golden(anchors="teacher")
    terms = method.loss(ctx)  # type: ignore[arg-type]
    assert _head_grads(method, terms["gacd_t"]) == {"embed_s": True, "embed_t": True}


def test_gacd_updates_both_banks():
    method, ctx = _golden()
    method.loss(ctx)  # type: ignore[arg-type]
    for name, mem, w, b, feats in (
        ("student", MEM_S, W_S, B_S, F_ADV),  # the student bank takes the embeddings of x'
        ("teacher", MEM_T, W_T, B_T, F_T),
    ):
        bank = method.memory.bank(name)
        for row, i in enumerate(INDEX):
            v = _embed(w, b, feats[row])
            expected = _unit([0.5 * o + 0.5 * e for o, e in zip(mem[i], v, strict=True)])
            assert bank[i].tolist() == pytest.approx(expected, abs=1e-5), name
        assert torch.allclose(bank[[0, 1, 3, 5]], torch.tensor([mem[i] for i in (0, 1, 3, 5)])), name
    assert method.memory.labels[INDEX].tolist() == Y


def test_kd_term_is_t2_kl_from_clean_teacher_to_adversarial_student():
    method, ctx = _golden(kd_weight=0.5)
    terms = method.loss(ctx)  # type: ignore[arg-type]
    kl = 0.0
    for b in range(2):
        p, q = _softmax([v / 4 for v in Z_T[b]]), _softmax([v / 4 for v in Z_ADV[b]])
        kl += sum(a * math.log(a / c) for a, c in zip(p, q, strict=True))
    assert terms["kd"].item() == pytest.approx(0.5 * 16 * kl / 2, rel=1e-5)


def test_guided_attack_objective_is_the_per_sample_loss_of_x_prime():
    method, ctx = _golden(attack_objective="gacd")
    objective = method.attack_objective(ctx)  # type: ignore[arg-type]
    features = [[0.3, -0.7], [1.5, 0.2]]
    got = objective(ModelOutput(torch.zeros(2, 3), torch.tensor(features)))
    t = [_embed(W_T, B_T, f) for f in F_T]
    s = [_embed(W_S, B_S, f) for f in features]
    expected = [
        -math.log(_h(s[b], t[b], Z_T_BANK, 3, N_DATA))
        - sum(math.log(1 - _h(s[b], MEM_T[j], Z_T_BANK, 3, N_DATA)) for j in NEG[b])
        for b in range(2)
    ]
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)  # the student-anchored half, unweighted


def test_guided_and_ce_attack_objective_adds_cross_entropy():
    method, ctx = _golden(attack_objective="gacd_ce")
    objective = method.attack_objective(ctx)  # type: ignore[arg-type]
    features = [[0.3, -0.7], [1.5, 0.2]]
    logits = [[0.2, -1.0, 0.4], [1.0, 0.0, -2.0]]
    got = objective(ModelOutput(torch.tensor(logits), torch.tensor(features)))
    t = [_embed(W_T, B_T, f) for f in F_T]
    s = [_embed(W_S, B_S, f) for f in features]
    expected = [
        -math.log(_softmax(logits[b])[Y[b]])
        + 0.8
        * (
            -math.log(_h(s[b], t[b], Z_T_BANK, 3, N_DATA))
            - sum(math.log(1 - _h(s[b], MEM_T[j], Z_T_BANK, 3, N_DATA)) for j in NEG[b])
        )
        for b in range(2)
    ]
    assert got.tolist() == pytest.approx(expected, rel=1e-5)


def test_guided_attack_teacher_anchored_only_is_the_positive_pair_loss():
    method, ctx = _golden(anchors="teacher", attack_objective="gacd")
    objective = method.attack_objective(ctx)  # type: ignore[arg-type]
    features = torch.tensor([[0.3, -0.7], [1.5, 0.2]])
    got = objective(ModelOutput(torch.zeros(2, 3), features))
    t = [_embed(W_T, B_T, f) for f in F_T]
    s = [_embed(W_S, B_S, f) for f in features.tolist()]
    expected = [-math.log(_h(t[b], s[b], Z, 3, N_DATA)) for b in range(2)]
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    # before the first loss fixes Z, the batch's own estimate M * mean(exp(t.s / tau)) stands in
    method.memory.z_student.fill_(-1.0)
    z_batch = N_DATA * sum(math.exp(sum(a * b for a, b in zip(t[b], s[b], strict=True)) / 0.07) for b in range(2)) / 2
    expected = [-math.log(_h(t[b], s[b], z_batch, 3, N_DATA)) for b in range(2)]
    assert objective(ModelOutput(torch.zeros(2, 3), features)).tolist() == pytest.approx(expected, rel=1e-5)


def test_attack_objectives_and_what_they_read():
    for mode in ("gacd", "gacd_ce", "ce", "kl"):
        method = TestGACDConformance().build()
        method = type(method)(method.Config(attack_objective=mode), method.setup)
        ctx = make_context(method, seed=3)
        objective = method.attack_objective(ctx)
        ctx.student.eval()
        with torch.no_grad():
            clean = objective(ctx.student.forward_all(ctx.x))
            adv = objective(ctx.student.forward_all(ctx.x_adv))
        assert clean.shape == (8,)
        assert adv.mean() > clean.mean(), f"PGD did not increase the {mode} objective"
        if mode == "ce":
            expected = torch.nn.functional.cross_entropy(ctx.student.forward_all(ctx.x).logits, ctx.y, reduction="none")
            assert torch.allclose(clean, expected, atol=1e-5)


def test_attack_runs_with_student_batchnorm_in_eval_mode():
    from kdbench_plugins.gacd import GACD

    assert GACD.attack_bn_mode == "eval"
    method = TestGACDConformance().build()
    ctx = make_context(method)
    bn = next(m for m in ctx.student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    ctx.x_adv  # noqa: B018 - run the attack only
    assert torch.equal(bn.running_mean, before)  # eval mode: the attack does not move running statistics


def test_weight_source_decides_which_teacher_views_run():
    for source, reads_adv in (("clean", False), ("adversarial", True), ("off", False), ("teacher_max", False)):
        method = TestGACDConformance().build()
        method = type(method)(method.Config(weight_source=source), method.setup)
        ctx = make_context(method)
        method.loss(ctx)
        assert (ctx.computed("teacher_adv") is not None) == reads_adv, source
