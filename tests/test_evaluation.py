"""The evaluation suite on tiny models: report shape, invariants, RNG isolation, AutoAttack adapter, flags."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from torch import Tensor, nn

from kdbench._errors import UserError
from kdbench.evaluation import ROBUST_KEYS, EvalReport, check_attack_names, evaluate, parse_attacks
from kdbench.evaluation.autoattack import capture_autoattack_flags, run_autoattack
from kdbench.evaluation.sanity import (
    check_autoattack_vs_pgd,
    check_eps_zero,
    check_gradient_masking,
    check_logits,
    check_robust_le_clean,
)
from kdbench.models.base import ModelOutput


class TinyNet(nn.Module):
    """A linear classifier on 3x32x32 images with a dropout layer (so eval mode matters) and forward_all."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(3 * 32 * 32, num_classes)

    def forward_all(self, x: Tensor) -> ModelOutput:
        feats = self.drop(x.flatten(1))
        return ModelOutput(self.head(feats), feats)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x).logits


def make_data(net: nn.Module, n: int = 8, wrong: int = 2, seed: int = 1234) -> tuple[Tensor, Tensor]:
    """Images and labels on which ``net`` is right except for the first ``wrong`` samples.

    (The data seed differs from the weights' seed: with the same stream, row i of the weights would equal
    image i up to scale and the model would be far from the decision boundary.)
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=gen)
    with torch.no_grad():
        logits = net.eval()(x)
    y = logits.argmax(1)
    y[:wrong] = (y[:wrong] + 1) % logits.shape[1]
    return x, y


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().train()


def test_report_shape_and_invariants(net):
    x, y = make_data(net)
    net.train()
    rng_before = torch.get_rng_state()
    flags_before = [p.requires_grad for p in net.parameters()]
    report = evaluate(net, x, y, ["clean", "fgsm", "pgd20", "cw", "pgd3"], batch_size=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG stream is untouched
    assert net.training  # modes restored
    assert net.drop.training
    assert [p.requires_grad for p in net.parameters()] == flags_before
    assert all(p.grad is None for p in net.parameters())

    assert isinstance(report, EvalReport)
    assert report.n_eval == 8
    assert report.clean_acc == pytest.approx(6 / 8)
    assert set(ROBUST_KEYS) <= set(report.robust)
    assert report.robust["autoattack"] is None
    assert "pgd3" in report.robust
    for name in ("fgsm", "pgd20", "cw", "pgd3"):
        assert report.robust[name] <= report.clean_acc
        assert report.worst <= report.robust[name]
        assert report.correct[name].shape == (8,)
        assert not torch.any(report.correct[name] & ~report.correct["clean"])
    worst = torch.stack(list(report.correct.values())).all(0).float().mean()
    assert report.worst == pytest.approx(float(worst))
    assert set(report.seconds) == {"clean", "fgsm", "pgd20", "cw", "pgd3", "sanity"}
    assert report.flags == []

    d = report.to_dict()
    assert set(d) == {"clean_acc", "robust", "n_eval", "counts"}
    assert {"fgsm", "pgd20", "cw", "autoattack", "worst"} <= set(d["robust"])
    assert d["robust"]["worst"] == report.worst


def test_evaluation_is_seeded_and_uint8_images_work(net):
    x, y = make_data(net)
    x8 = (x * 255).round().to(torch.uint8)
    first = evaluate(net, x8, y, ["pgd5", "cw"], seed=3)
    second = evaluate(net, x8.float() / 255, y, ["cw", "pgd5"], seed=3)  # order does not matter either
    for name in ("clean", "pgd5", "cw"):
        assert torch.equal(first.correct[name], second.correct[name])


def test_only_clean(net):
    x, y = make_data(net)
    report = evaluate(net, x, y, ["clean"])
    assert report.worst == report.clean_acc
    assert all(report.robust[k] is None for k in ROBUST_KEYS)


def test_autoattack_adapter_end_to_end(net):
    x, y = make_data(net)
    rng_before = torch.get_rng_state()
    report = evaluate(net, x, y, ["clean", "pgd20", "autoattack"], batch_size=4)
    assert torch.equal(torch.get_rng_state(), rng_before)  # pyautoattack reseeds: inside our fork
    assert report.robust["autoattack"] is not None
    assert report.robust["autoattack"] <= report.robust["pgd20"] + 1 / 8
    assert report.robust["autoattack"] <= report.clean_acc
    assert report.correct["autoattack"].shape == (8,)


def test_run_autoattack_with_few_classes_runs_every_attack(monkeypatch):
    """5 classes: APGD-T / FAB-T would ask for 9 targets and crash; the adapter targets the 4 there are.

    The model is robust (large bias margin), so all four attacks run; their budgets are cut to keep
    the test fast (the adapter itself never changes them).
    """
    import pyautoattack

    class CheapAutoAttack(pyautoattack.AutoAttack):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.apgd.n_iter = self.apgd_targeted.n_iter = self.fab.n_iter = 3
            self.square.n_queries = 10

    monkeypatch.setattr(pyautoattack, "AutoAttack", CheapAutoAttack)
    torch.manual_seed(1)
    net = TinyNet(num_classes=5).eval()
    with torch.no_grad():
        net.head.weight.mul_(0.01)
        net.head.bias.copy_(torch.tensor([5.0, 0, 0, 0, 0]))
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    y = torch.zeros(2, dtype=torch.long)
    result = run_autoattack(net, x, y, eps=8 / 255, batch_size=2, seed=0)
    assert result.x_adv.shape == x.shape
    assert (result.x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert result.correct.tolist() == [True, True]
    assert result.flags == ["autoattack: 5 classes: APGD-T and FAB-T target all 4 other classes (standard: 9)"]


def test_autoattack_flags_are_captured_deduplicated_and_prefixed():
    logger = logging.getLogger("auto-attack")
    with capture_autoattack_flags() as flags:
        logger.warning("there are 2 points with zero gradient!")
        logger.warning("there are 2 points with zero gradient!")
        logger.debug("running apgd-ce")
    assert flags == ["autoattack: there are 2 points with zero gradient!"]


def test_missing_pyautoattack_is_a_user_error(net, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import now raises ImportError
    x, y = make_data(net)
    with pytest.raises(UserError, match="pip install pyautoattack"):
        evaluate(net, x, y, ["autoattack"])


def test_softmax_model_is_flagged(net):
    x, y = make_data(net)
    probs = nn.Sequential(net, nn.Softmax(dim=1))
    report = evaluate(probs, x, y, ["clean", "autoattack"])
    assert "model returns probabilities, not logits: gradient-based attacks are unreliable" in report.flags
    assert any(f.startswith("autoattack: it seems that the output is a probability distribution") for f in report.flags)


# ---------------------------------------------------------------------------------------------
# user errors


@pytest.mark.parametrize(("name", "hint"), [("pgd-20", "pgd20"), ("autoatack", "autoattack"), ("fgms", "fgsm")])
def test_unknown_attack_names_suggest_close_matches(name, hint):
    with pytest.raises(UserError, match=f"did you mean '{hint}'"):
        parse_attacks(["clean", name])


def test_parse_attacks_canonicalises():
    assert parse_attacks(["PGD020", "clean", "pgd20", "cw"]) == ["pgd20", "clean", "cw"]
    with pytest.raises(UserError):
        parse_attacks(["pgd0"])
    check_attack_names(["clean", "pgd7", "autoattack"])
    with pytest.raises(UserError, match="choices: autoattack, autoattack_custom, clean, cw, fgsm, pgd20; or pgd<k>"):
        check_attack_names(["cw-inf"])


def test_bad_inputs_are_user_errors(net):
    x, y = make_data(net)
    with pytest.raises(UserError, match="fgsm is an L-inf attack"):
        evaluate(net, x, y, ["fgsm"], norm="l2", eps=0.5)
    with pytest.raises(UserError, match="eps"):
        evaluate(net, x, y, ["pgd20"], eps=8)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        evaluate(net, x * 255, y, ["clean"])
    with pytest.raises(UserError, match="labels"):
        evaluate(net, x, y[:3], ["clean"])


def test_l2_evaluation_runs(net):
    x, y = make_data(net)
    report = evaluate(net, x, y, ["clean", "pgd10", "cw"], norm="l2", eps=0.5)
    assert report.robust["pgd10"] <= report.clean_acc
    assert report.robust["fgsm"] is None


# ---------------------------------------------------------------------------------------------
# sanity checks


def test_check_logits():
    logits = torch.randn(4, 10)
    assert check_logits(logits) == []
    assert check_logits(logits.softmax(1)) == [
        "model returns probabilities, not logits: gradient-based attacks are unreliable"
    ]
    assert "non-finite" in check_logits(torch.full((2, 3), float("nan")))[0]


def test_check_eps_zero(net):
    x, y = make_data(net)
    net.eval()
    assert check_eps_zero(net, x, y) == []
    assert check_eps_zero(net, x, y, norm="l2") == []

    class Noisy(nn.Module):
        def forward(self, images: Tensor) -> Tensor:
            return net(images) + 100 * torch.randn(images.shape[0], 10)

    assert any("changed" in f for f in check_eps_zero(Noisy(), x, y))


def test_check_accuracy_relations():
    assert check_robust_le_clean(0.5, {"pgd20": 0.4, "cw": None}) == []
    assert check_robust_le_clean(0.5, {"pgd20": 0.6})[0].startswith("pgd20 accuracy 0.6000 above clean")
    assert check_autoattack_vs_pgd({"pgd20": 0.40, "autoattack": 0.405}) == []
    assert check_autoattack_vs_pgd({"pgd20": 0.40, "autoattack": 0.45})[0].startswith("autoattack weaker than pgd20")
    assert check_autoattack_vs_pgd({"pgd20": None, "autoattack": 0.45}) == []
    assert check_gradient_masking({"fgsm": 0.30, "pgd20": 0.20}) == []
    flags = check_gradient_masking({"fgsm": 0.30, "pgd20": 0.40, "cw": 0.50, "autoattack": 0.9})
    assert [f.split(" ")[0] for f in flags] == ["pgd20", "cw"]
    assert flags[0].startswith("pgd20 weaker than fgsm: possible gradient masking")
