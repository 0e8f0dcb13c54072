import copy
from typing import ClassVar

import pytest
import torch
from kdbench_plugins._golden import ZS_ADV, ZS_CLEAN, ZT_ADV, ZT_CLEAN, GoldenCtx, View, kl_log_eps, softmax

from kdbench.engine.schedule import lr_factor
from kdbench.testing import MethodConformance, make_context


class TestMTARDConformance(MethodConformance):
    method = "mtard"


class TestMTARDCifar100(MethodConformance):
    method = "mtard"
    options: ClassVar[dict] = {"scale": 10.0, "eta_follows_lr": False, "b": 2.0}


class _Teacher:
    def __init__(self, rows):
        self.clean = View(rows)


def _ctx(natural=ZT_CLEAN, robust_adv=ZT_ADV, **kwargs) -> GoldenCtx:
    ctx = GoldenCtx(**kwargs)
    ctx.teacher_adv = View(robust_adv)
    ctx.teachers = {"natural": _Teacher(natural)}
    return ctx


def _mtard(**options):
    from kdbench_plugins.mtard import MTARD, MTARDConfig

    return MTARD(MTARDConfig(**options), setup=None)  # type: ignore[arg-type]


def _klrs(zt, zs) -> float:
    """METHODS.md's KLrs: mean over B x C of p_T (log(p_T + 1e-5) - log p_S)."""
    return sum(kl_log_eps(softmax(t), softmax(s)) for t, s in zip(zt, zs, strict=True)) / (len(zt) * len(zt[0]))


def test_mtard_golden_value_of_the_first_step():
    l_adv, l_nat = _klrs(ZT_ADV, ZS_ADV), _klrs(ZT_CLEAN, ZS_CLEAN)
    assert l_adv == pytest.approx(0.02028123, rel=1e-6)  # METHODS.md
    assert l_nat == pytest.approx(0.01904348, rel=1e-6)
    method = _mtard()
    terms = method.loss(_ctx())  # type: ignore[arg-type]
    total = float(sum(terms.values()))
    assert total == pytest.approx(0.5 * l_adv + 0.5 * l_nat, rel=1e-5)  # float32 KL of ~0.02
    assert total == pytest.approx(0.01966235, rel=1e-5)
    assert method.initial_losses.tolist() == pytest.approx([l_adv, l_nat], rel=1e-5)
    assert method.natural_weight.item() == 0.5  # r = (1, 1): the first step keeps 0.5 / 0.5


def test_mtard_weight_sequence_of_methods_md():
    from kdbench_plugins.mtard import MTARD, MTARDConfig

    method = MTARD(MTARDConfig(), setup=None)  # type: ignore[arg-type]
    seen = []
    for l_adv, l_nat in [(1.0, 2.0), (0.9, 1.0), (0.8, 0.5), (0.8, 0.5)]:
        w = method._update_weights(torch.tensor(l_adv), torch.tensor(l_nat), 1.0)
        seen.append(w.item())
        assert w.item() == pytest.approx(method.natural_weight.item(), rel=1e-7)
    assert seen == pytest.approx([0.5, 0.49642857, 0.48997024, 0.48367336], abs=1e-8)


def test_eta_follows_the_learning_rate_milestones():
    # Official: 300 epochs, LR and eta x0.1 from 215, 260, 285; eta is 0.0025 at epoch 215.
    factor = lr_factor("multistep", total_steps=300 * 10, steps_per_epoch=10, milestones=[215, 260, 285], epochs=300)
    assert factor(214 * 10) == 1.0
    scale = factor(215 * 10)
    method = _mtard()
    method._update_weights(torch.tensor(1.0), torch.tensor(2.0), factor(214 * 10))  # fixes L_init, peak lr 1
    w = method._update_weights(torch.tensor(0.9), torch.tensor(1.0), scale)
    target = 0.5 / 1.4
    assert w.item() == pytest.approx(0.5 - 0.025 * scale * (0.5 - target), rel=1e-6)
    assert 0.025 * scale == pytest.approx(0.0025)


def test_swapping_the_teachers_inputs_changes_the_loss():
    base = float(sum(_mtard().loss(_ctx()).values()))  # type: ignore[arg-type]
    swapped = float(sum(_mtard().loss(_ctx(natural=ZT_ADV, robust_adv=ZT_CLEAN)).values()))  # type: ignore[arg-type]
    assert swapped != pytest.approx(base, rel=1e-4)


def test_each_teacher_sees_its_own_input_in_the_step_context():
    method = TestMTARDConformance().build()
    ctx = make_context(method)
    method.loss(ctx)
    assert ctx.computed("teacher_adv") is not None  # the robust teacher on x'
    assert ctx.computed("teacher_clean:natural") is not None  # the natural teacher on x
    assert ctx.computed("teacher_clean") is None
    assert ctx.computed("teacher_adv:natural") is None
    natural = ctx.teachers["natural"].network
    assert natural is not ctx.teacher and not natural.training


def test_weights_are_state_that_round_trips_bitwise():
    method = TestMTARDConformance().build()
    for seed in range(3):
        method.loss(make_context(method, seed=seed))
    state = copy.deepcopy(method.state_dict())
    assert set(state) == {"natural_weight", "initial_losses", "peak_lr_scale"}
    assert state["natural_weight"].item() != 0.5
    fresh = TestMTARDConformance().build()
    fresh.load_state_dict(state)
    a = method.loss(make_context(method, seed=9))
    b = fresh.loss(make_context(fresh, seed=9))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(method.natural_weight, fresh.natural_weight)


def test_mtard_trains_data_parallel_and_attacks_like_the_official_code():
    from kdbench_plugins.mtard import MTARD

    assert MTARD.supports_data_parallel  # its weights all-reduce (tests/test_distributed_memory.py)
    assert MTARD.attack_bn_mode == "eval"
    assert MTARD.attack_defaults == {"random_start": "normal"}
    assert set(MTARD.extra_teachers) == {"natural"}


def test_eta_keeps_its_value_through_a_warm_up_and_decays_with_the_lr():
    # A one-cycle ramp (lr_scale 0 -> 1): eta_0 throughout; then half the peak lr: eta_0 / 2.
    method = _mtard()
    method._update_weights(torch.tensor(1.0), torch.tensor(2.0), 0.0)
    before = method.natural_weight.clone()
    w = method._update_weights(torch.tensor(0.9), torch.tensor(1.0), 0.3)
    assert w.item() == pytest.approx(before.item() - 0.025 * (before.item() - 0.5 / 1.4), rel=1e-6)
    method._update_weights(torch.tensor(0.9), torch.tensor(1.0), 1.0)
    before = method.natural_weight.item()
    w = method._update_weights(torch.tensor(0.9), torch.tensor(1.0), 0.5)
    assert w.item() == pytest.approx(before - 0.0125 * (before - 0.5 / 1.4), rel=1e-6)
