from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from kdbench import METHODS, MethodSetup, ModelOutput, RecipeError, UserError
from kdbench.engine.checkpoint import load_weights_only
from kdbench.engine.trainer import Trainer
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe
from kdbench.testing import MethodConformance, make_context, tiny_recipe


class TestCRDConformance(MethodConformance):
    method = "crd"


class TestCRDWithKD(MethodConformance):
    method = "crd"
    options: ClassVar[dict[str, Any]] = {"kd_weight": 1.0, "negatives": 20}


# ------------------------------------------------------------------------------------ golden value


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _embed(w: list[list[float]], b: list[float], f: list[float]) -> list[float]:
    return _unit([sum(wi * fi for wi, fi in zip(row, f, strict=True)) + bi for row, bi in zip(w, b, strict=True)])


def _nce(anchor: list[float], rows: list[list[float]], z: float, n_data: int, tau: float) -> float:
    """-log h(a, rows[0]) - sum_k log(1 - h(a, rows[k])), h = P / (P + N/M), P = exp(a.v / tau) / Z."""
    n = len(rows) - 1

    def h(v: list[float]) -> float:
        p = math.exp(sum(x * y for x, y in zip(anchor, v, strict=True)) / tau) / z
        return p / (p + n / n_data)

    return -math.log(h(rows[0])) - sum(math.log(1 - h(v)) for v in rows[1:])


class _Ctx:
    """Just the views CRD's loss reads, on fixed tensors."""

    def __init__(self, student: ModelOutput, teacher: ModelOutput, y: torch.Tensor, index: torch.Tensor):
        self.student_clean, self.teacher_clean, self.y, self.index = student, teacher, y, index


W_S, B_S = [[1.0, 0.5], [-0.5, 1.0]], [0.1, 0.0]
W_T, B_T = [[0.8, 0.0], [0.3, -1.0]], [0.0, 0.2]
MEM_S = [_unit(v) for v in ([1, 0], [0, 1], [1, 1], [-1, 0.5], [0.3, -1], [-1, -1])]
MEM_T = [_unit(v) for v in ([0.5, 1], [1, -0.2], [-1, 0], [0.2, 0.9], [1, 1], [0, -1])]
F_S, F_T = [[1.0, 2.0], [-1.0, 0.5]], [[0.5, -1.0], [2.0, 1.0]]
Z_S, Z_T = 4.0, 5.5
INDEX, Y = [2, 4], [1, 0]
NEG = [[0, 3, 5], [1, 3, 4]]
LOGITS = [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]]


def _golden_method():
    cls = METHODS.get("crd")
    setup = MethodSetup(3, 2, 2, 3, 6, torch.device("cpu"))
    method = cls(cls.Config(embed_dim=2, negatives=3), setup)
    with torch.no_grad():
        method.embed_s.linear.weight.copy_(torch.tensor(W_S))
        method.embed_s.linear.bias.copy_(torch.tensor(B_S))
        method.embed_t.linear.weight.copy_(torch.tensor(W_T))
        method.embed_t.linear.bias.copy_(torch.tensor(B_T))
        method.memory.memory_student = torch.tensor(MEM_S)
        method.memory.memory_teacher = torch.tensor(MEM_T)
        method.memory.z_student.fill_(Z_S)
        method.memory.z_teacher.fill_(Z_T)
    method.memory.sample_negatives = lambda y, n, c: torch.tensor(NEG)  # fixed negatives
    logits = torch.tensor(LOGITS)
    ctx = _Ctx(
        ModelOutput(logits, torch.tensor(F_S)),
        ModelOutput(logits.flip(1), torch.tensor(F_T)),
        torch.tensor(Y),
        torch.tensor(INDEX),
    )
    return method, ctx


def test_crd_golden_value_and_memory_update():
    method, ctx = _golden_method()
    terms = method.loss(ctx)  # type: ignore[arg-type]
    tau, n_data = 0.07, 6
    s = [_embed(W_S, B_S, f) for f in F_S]
    t = [_embed(W_T, B_T, f) for f in F_T]
    l_t = sum(_nce(t[b], [MEM_S[i] for i in [INDEX[b], *NEG[b]]], Z_S, n_data, tau) for b in range(2)) / 2
    l_s = sum(_nce(s[b], [MEM_T[i] for i in [INDEX[b], *NEG[b]]], Z_T, n_data, tau) for b in range(2)) / 2
    ce = sum(-LOGITS[b][Y[b]] + math.log(sum(math.exp(v) for v in LOGITS[b])) for b in range(2)) / 2
    assert terms.keys() == {"crd_t", "crd_s", "ce"}
    assert terms["crd_t"].item() == pytest.approx(0.8 * l_t, rel=1e-5)
    assert terms["crd_s"].item() == pytest.approx(0.8 * l_s, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert sum(terms.values()).item() == pytest.approx(24.4625168, rel=1e-5)  # pinned
    # After the loss: rows of the batch moved halfway to the new embeddings, then renormalised.
    for bank, new, old in (("student", s, MEM_S), ("teacher", t, MEM_T)):
        memory = method.memory.bank(bank)
        for b, i in enumerate(INDEX):
            expected = _unit([0.5 * o + 0.5 * v for o, v in zip(old[i], new[b], strict=True)])
            assert memory[i].tolist() == pytest.approx(expected, abs=1e-6)
        assert torch.allclose(memory[[0, 1, 3, 5]], torch.tensor([old[i] for i in (0, 1, 3, 5)]))
    assert method.memory.labels[INDEX].tolist() == Y


def test_first_batch_fixes_z_as_repdistiller():
    method = TestCRDConformance().build()
    ctx = make_context(method)
    assert method.memory.z("student").item() == -1.0
    t = method.embed_t(ctx.teacher_clean.features)
    before = method.memory.bank("student").clone()
    torch.manual_seed(0)
    method.loss(ctx)
    torch.manual_seed(0)
    rows = method.memory.sample_negatives(ctx.y, method.num_negatives, 10)
    rows = torch.cat([ctx.index[:, None], rows], 1)
    expected = 64 * torch.exp(torch.einsum("bd,bkd->bk", t, before[rows]) / 0.07).mean()
    assert method.memory.z("student").item() == pytest.approx(expected.item(), rel=1e-4)
    fixed = method.memory.z("student").clone()
    method.loss(make_context(method, seed=1))
    assert torch.equal(method.memory.z("student"), fixed)


def test_crd_trains_on_clean_inputs_and_clamps_negatives():
    method = TestCRDConformance().build()
    assert method.num_negatives == 63  # 16384 asked, 64 samples
    ctx = make_context(method)
    assert method.attack_objective(ctx) is None
    method.loss(ctx)
    assert ctx.computed("x_adv") is None


def test_kd_term_refuses_another_label_space_at_construction():
    cls = METHODS.get("crd")
    setup = MethodSetup(10, 16, 24, 5, 64, torch.device("cpu"))
    with pytest.raises(UserError, match="teacher has 5 classes and the student 10"):
        cls(cls.Config(kd_weight=1.0), setup)
    cls(cls.Config(), setup)  # the feature-only default works across label spaces


# ------------------------------------------------------------------------------ runs on fake data

TEACHER = tiny_recipe("teacher", data_options="num_classes = CLASSES", train_extra="deterministic = true")

STUDENT = tiny_recipe(
    "student",
    seed=3,
    method="crd",
    teacher='[teacher]\nrecipe = "teacher.toml"',
    epochs=2,
    train_extra="deterministic = true",
)


def _write(folder: Path, teacher_classes: int = 10, method: str = "crd") -> Path:
    (folder / "teacher.toml").write_text(TEACHER.replace("CLASSES", str(teacher_classes)))
    path = folder / "student.toml"
    path.write_text(STUDENT.replace('name = "crd"', f'name = "{method}"'))
    return path


def _final_state(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    weights = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    method = load_weights_only(out / "checkpoints" / "ckpt-e0002-b000000.pt")["method"]
    return weights, method


def test_resume_restores_weights_and_memory_bank_exactly(tmp_path, monkeypatch):
    resolved = load_recipe(_write(tmp_path))
    reference = run_recipe(resolved, tmp_path / "ref").out_dir

    original = Trainer._run_epoch

    def crash_in_second_epoch(self, epoch, start_batch):
        if epoch == 1:
            raise RuntimeError("simulated crash")
        return original(self, epoch, start_batch)

    monkeypatch.setattr(Trainer, "_run_epoch", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(resolved, tmp_path / "crashed")
    monkeypatch.setattr(Trainer, "_run_epoch", original)
    after_one = load_weights_only(tmp_path / "crashed" / "checkpoints" / "ckpt-e0001-b000000.pt")["method"]
    assert after_one["memory.z_student"] > 0  # the first batch fixed Z, and it was checkpointed
    assert (after_one["memory.labels"] >= 0).all()  # one epoch of 2 full batches saw all 64 rows
    run_recipe(resolved, tmp_path / "crashed")

    (ref_weights, ref_method), (weights, method) = _final_state(reference), _final_state(tmp_path / "crashed")
    assert ref_weights.keys() == weights.keys()
    assert all(torch.equal(ref_weights[k], weights[k]) for k in ref_weights)
    assert {"memory.memory_student", "memory.memory_teacher", "memory.z_student", "memory.labels"} <= set(method)
    assert ref_method.keys() == method.keys()
    for key in ref_method:
        assert torch.equal(ref_method[key], method[key]), f"method state {key} differs after resume"
    assert not torch.equal(ref_method["memory.memory_student"], after_one["memory.memory_student"])


def test_transfer_across_label_spaces_runs_crd_and_refuses_kd(tmp_path):
    path = _write(tmp_path, teacher_classes=5)
    outcome = run_recipe(load_recipe(path), tmp_path / "crd")
    assert outcome.result.train.final["epoch"] == 2
    assert "loss/crd_t" in outcome.result.train.final
    with pytest.raises(RecipeError, match="teacher has 5 classes and the student 10"):
        run_recipe(load_recipe(path, ["method.name=kd"]), tmp_path / "kd")
    with pytest.raises(UserError, match="teacher has 5 classes and the student 10"):
        run_recipe(load_recipe(path, ["method.kd_weight=1.0"]), tmp_path / "crd_kd")
