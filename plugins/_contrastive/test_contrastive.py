"""The shared contrastive machinery: critic and NCE loss, memory banks, negative sampling, no host syncs."""

from __future__ import annotations

import ast
import copy
import math
from pathlib import Path

import pytest
import torch
from kdbench_plugins._contrastive import (
    ContrastMemory,
    Embed,
    effective_negatives,
    estimate_z,
    memory_init_bound,
    nce_loss,
    nce_loss_from_logits,
)

from kdbench import METHODS, MethodSetup
from kdbench.testing import make_context

PLUGINS = Path(__file__).resolve().parent.parent


def _reference_nce(anchor, positive, negatives, z, n_data, tau, weights=None) -> list[float]:
    """The critic and loss written out with Python loops: h = P / (P + N/M), P = exp(a.v / tau) / Z."""
    batch, n = len(anchor), len(negatives[0])
    out = []
    for b in range(batch):

        def h(v, b=b):
            p = math.exp(sum(x * y for x, y in zip(anchor[b], v, strict=True)) / tau) / z
            return p / (p + n / n_data)

        w = 1.0 if weights is None else weights[b]
        out.append(-(w * math.log(h(positive[b])) + sum(math.log(1 - h(v)) for v in negatives[b])))
    return out


def _unit(rows: list[list[float]]) -> list[list[float]]:
    return [[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in rows]


ANCHOR = _unit([[1.0, 0.5, -0.2], [0.0, 1.0, 1.0]])
POSITIVE = _unit([[0.9, 0.4, 0.1], [0.3, -1.0, 0.5]])
NEGATIVES = [
    _unit([[1.0, 0.0, 0.0], [-0.5, 0.5, 0.5], [0.2, 0.2, -1.0]]),
    _unit([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.1, -0.3, 0.2]]),
]


@pytest.mark.parametrize("weights", [None, [0.25, 0.9]])
def test_nce_loss_golden_value(weights):
    z, n_data, tau = 37.5, 10, 0.07
    expected = _reference_nce(ANCHOR, POSITIVE, NEGATIVES, z, n_data, tau, weights)
    got = nce_loss(
        torch.tensor(ANCHOR),
        torch.tensor(POSITIVE),
        torch.tensor(NEGATIVES),
        torch.tensor(z),
        n_data,
        tau,
        None if weights is None else torch.tensor(weights),
    )
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    if weights is None:  # pinned: catches a silent change of the formula and of the reference alike
        assert expected == pytest.approx([13.8154072, 23.7162358], rel=1e-6)


def test_nce_loss_from_logits_matches_the_explicit_form():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=gen) * 5
    z = torch.tensor(3.0)
    p = logits.exp() / z
    c = 5 / 20
    h = p / (p + c)
    expected = -(h[:, 0].log() + (1 - h[:, 1:]).log().sum(1))
    assert torch.allclose(nce_loss_from_logits(logits, z, 20), expected, rtol=1e-5)


def test_estimate_z_is_repdistiller_mean_times_m():
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    expected = 50 * sum(math.exp(v) for v in (0.0, 1.0, 2.0, -1.0)) / 4
    assert estimate_z(logits, 50).item() == pytest.approx(expected, rel=1e-6)


def test_embed_is_linear_then_l2_normalised():
    torch.manual_seed(0)
    embed = Embed(5, 3)
    f = torch.randn(4, 5)
    v = embed(f)
    raw = f @ embed.linear.weight.t() + embed.linear.bias
    assert torch.allclose(v, raw / raw.norm(dim=1, keepdim=True), atol=1e-6)


def test_memory_init_and_buffers():
    torch.manual_seed(0)
    mem = ContrastMemory(1000, 128, ("student", "teacher"), momentum=0.5)
    s = 1 / math.sqrt(128 / 3)
    assert memory_init_bound(128) == pytest.approx(s)
    for name in ("student", "teacher"):
        bank = mem.bank(name)
        assert bank.shape == (1000, 128)
        assert bank.abs().max() <= s
        assert bank.min() < -0.9 * s  # uniform over the whole interval, not a narrower one
        assert bank.max() > 0.9 * s
        assert mem.z(name).item() == -1.0
        # expected squared norm d * s^2 / 3 = 1
        assert bank.pow(2).sum(1).mean().item() == pytest.approx(1.0, abs=0.02)
    assert (mem.labels == -1).all()
    assert set(mem.state_dict()) == {"memory_student", "memory_teacher", "z_student", "z_teacher", "labels"}
    assert not list(mem.parameters())


def test_memory_update_momentum_then_renormalise():
    torch.manual_seed(0)
    mem = ContrastMemory(6, 3, ("student",), momentum=0.5)
    before = mem.bank("student").clone()
    index = torch.tensor([4, 1])
    v = torch.nn.functional.normalize(torch.randn(2, 3), dim=1)
    mem.update("student", index, v)
    after = mem.bank("student")
    for row, i in enumerate(index.tolist()):
        mixed = 0.5 * before[i] + 0.5 * v[row]
        assert torch.allclose(after[i], mixed / mixed.norm(), atol=1e-6)
    untouched = [0, 2, 3, 5]
    assert torch.equal(after[untouched], before[untouched])


def test_memory_state_dict_round_trip_includes_z_and_labels():
    torch.manual_seed(0)
    mem = ContrastMemory(20, 4, ("student", "teacher"), momentum=0.5)
    mem.observe_labels(torch.tensor([3, 7, 11]), torch.tensor([2, 0, 1]))
    mem.update("teacher", torch.tensor([3, 7]), torch.ones(2, 4))
    mem.normaliser("student", torch.zeros(2, 5))  # fixes Z = M * mean(exp(0)) = 20
    state = copy.deepcopy(mem.state_dict())
    torch.manual_seed(1)
    fresh = ContrastMemory(20, 4, ("student", "teacher"), momentum=0.5)
    assert not torch.equal(fresh.bank("student"), state["memory_student"])
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert fresh.z("student").item() == pytest.approx(20.0)
    assert fresh.z("teacher").item() == -1.0
    assert fresh.labels[[3, 7, 11]].tolist() == [2, 0, 1]


def test_normaliser_is_fixed_by_the_first_batch():
    mem = ContrastMemory(10, 2, ("student",), momentum=0.5)
    first = mem.normaliser("student", torch.zeros(3, 4))
    assert first.item() == pytest.approx(10.0)
    second = mem.normaliser("student", torch.full((3, 4), 2.0))
    assert second.item() == pytest.approx(10.0)
    peek = ContrastMemory(10, 2, ("student",), momentum=0.5)
    peek.normaliser("student", torch.zeros(3, 4), fix=False)
    assert peek.z("student").item() == -1.0


def test_logits_against_a_bank_equal_gathered_dot_products():
    torch.manual_seed(0)
    mem = ContrastMemory(30, 8, ("teacher",), momentum=0.5)
    anchor = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    rows = torch.randint(0, 30, (4, 7))
    expected = torch.einsum("bd,bkd->bk", anchor, mem.bank("teacher")[rows]) / 0.07
    assert torch.allclose(mem.logits("teacher", anchor, rows, 0.07), expected, atol=1e-5)


def test_negatives_never_share_the_anchor_class_when_enough_other_rows_exist():
    torch.manual_seed(0)
    n_data, classes = 300, 4
    mem = ContrastMemory(n_data, 2, ("student",), momentum=0.5)
    labels = torch.arange(n_data) % classes
    mem.observe_labels(torch.arange(n_data), labels)
    y = torch.tensor([0, 1, 2, 3, 0, 3])
    negatives = mem.sample_negatives(y, 250, classes)
    assert negatives.shape == (6, 250)
    assert negatives.dtype == torch.int64
    assert (labels[negatives] != y[:, None]).all()
    # drawn over all other-class rows, not a fixed subset
    assert len(set(negatives[0].tolist())) > 150


def test_negatives_are_drawn_without_replacement_when_enough_rows_exist():
    # RepDistiller: np.random.choice(cls_negative[target], k, replace=False) whenever k <= #other-class rows.
    torch.manual_seed(0)
    n_data, classes = 400, 4
    mem = ContrastMemory(n_data, 2, ("student",), momentum=0.5)
    labels = torch.arange(n_data) % classes
    mem.observe_labels(torch.arange(n_data), labels)
    y = torch.tensor([0, 1, 2, 3] * 8)
    negatives = mem.sample_negatives(y, 250, classes)  # 300 other-class rows per anchor: with replacement
    # would repeat rows in almost every anchor (birthday bound: 1 - prod(1 - i/300) ~ 1)
    for row in negatives.tolist():
        assert len(set(row)) == 250
    # all 300 valid rows are used across anchors of one class: a uniform subset, not a fixed prefix
    assert len(set(negatives[y == 0].flatten().tolist())) == 300


def test_negatives_take_every_valid_row_uniformly():
    # Each valid row is in a draw of n out of v with probability n / v (a uniform subset).
    torch.manual_seed(1)
    n_data = 40
    mem = ContrastMemory(n_data, 2, ("student",), momentum=0.5)
    mem.observe_labels(torch.arange(n_data), (torch.arange(n_data) < 20).long())  # rows 0..19 class 1
    y = torch.zeros(4000, dtype=torch.int64)
    negatives = mem.sample_negatives(y, 5, num_classes=2)
    counts = torch.bincount(negatives.flatten(), minlength=n_data).float()
    assert (counts[20:] == 0).all()
    assert torch.allclose(counts[:20] / 4000, torch.full((20,), 5 / 20), atol=0.03)


def test_unseen_rows_are_allowed_and_short_rows_draw_with_replacement():
    torch.manual_seed(0)
    mem = ContrastMemory(50, 2, ("student",), momentum=0.5)
    mem.observe_labels(torch.arange(10), torch.zeros(10, dtype=torch.int64))  # rows 10.. unseen
    negatives = mem.sample_negatives(torch.tensor([0]), 30, num_classes=2)
    assert (negatives >= 10).all()  # unknown rows are valid, class-0 rows are not
    assert len(set(negatives[0].tolist())) == 30
    # Only rows 45..49 are of another class: fewer than N = 40 -> 40 draws with replacement from them.
    mem.observe_labels(torch.arange(50), (torch.arange(50) >= 45).long())
    negatives = mem.sample_negatives(torch.tensor([0, 0]), 40, num_classes=2)
    assert negatives.shape == (2, 40)
    assert (negatives >= 45).all()
    assert set(negatives.flatten().tolist()) == {45, 46, 47, 48, 49}
    # An anchor whose class holds every row has no valid row: any row rather than a stall.
    mem.observe_labels(torch.arange(50), torch.zeros(50, dtype=torch.int64))
    negatives = mem.sample_negatives(torch.tensor([0]), 40, num_classes=2)
    assert len(set(negatives[0].tolist())) == 40


def test_negative_count_clamping():
    assert effective_negatives(16384, 50_000) == 16384
    assert effective_negatives(16384, 96) == 95
    from kdbench import UserError

    with pytest.raises(UserError, match="at least 2 training samples"):
        effective_negatives(10, 1)


# ------------------------------------------------------------------------------ no host synchronisation

STEP_MODULES = ["_contrastive/__init__.py", "crd/__init__.py", "gacd/__init__.py"]
SYNCING = {"item", "cpu", "tolist", "numpy"}


@pytest.mark.parametrize("module", STEP_MODULES)
def test_step_code_has_no_host_sync_calls(module):
    tree = ast.parse((PLUGINS / module).read_text())
    found = [
        f"line {n.lineno}: .{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in SYNCING
    ]
    assert not found, f"{module} reads tensors back to the host: {found}"


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("crd", {"kd_weight": 1.0}),
        ("gacd", {}),
        ("gacd", {"weight_source": "adversarial", "attack_objective": "kl", "kd_weight": 1.0}),
    ],
)
def test_a_step_never_reads_a_tensor_on_the_host(method, options, monkeypatch):
    # On a CPU there is no sync to catch, so trap every Python-level way a tensor value reaches the host.
    cls = METHODS.get(method)
    setup = MethodSetup(10, 16, 24, 10, 64, torch.device("cpu"))
    m = cls(cls.Config.model_validate(options), setup)
    ctx = make_context(m)
    if method == "gacd":
        ctx.x_adv  # noqa: B018 - the core's PGD runs untrapped (it builds host-side float32 eps scalars)

    def refuse(self, *args, **kwargs):
        raise AssertionError("host synchronisation inside a training step")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    objective = m.attack_objective(ctx)
    if objective is not None:  # the method's own attack objective, as PGD calls it
        objective(ctx.student.forward_all(ctx.x_adv)).sum()
    terms = m.loss(ctx)
    monkeypatch.undo()
    assert all(torch.isfinite(v) for v in terms.values())
