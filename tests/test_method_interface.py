"""The widened method interface: teachers on x' inside the attack, named extra teachers, the training
attack's eps schedule, and re-entrant view requests."""

from __future__ import annotations

import pytest
import torch

from kdbench import METHODS, Method, RecipeError, UserError
from kdbench.attacks.objectives import cross_entropy, with_teacher
from kdbench.attacks.schedule import EpsPoint, EpsSchedule, budget_at
from kdbench.method import ReentrantViewError
from kdbench.recipe import resolve
from kdbench.testing import make_context

# ------------------------------------------------------------------------------ re-entrant views


class _ReadsTeacherAdvInObjective(Method):
    """The mistake the AdaAD plugin author first made: the teacher on x' read through the context."""

    def attack_objective(self, ctx):
        target = ctx.teacher_adv.logits  # needs x_adv, which is being computed
        return lambda out: (out.logits * target).sum(1)

    def loss(self, ctx):
        return {"x": ctx.student_adv.logits.float().mean()}


class _ReadsXAdvInObjective(_ReadsTeacherAdvInObjective):
    def attack_objective(self, ctx):
        ctx.x_adv  # noqa: B018
        return cross_entropy(ctx.y)


@pytest.mark.parametrize(
    ("cls", "chain"),
    [(_ReadsTeacherAdvInObjective, "x_adv -> teacher_adv -> x_adv"), (_ReadsXAdvInObjective, "x_adv -> x_adv")],
)
def test_a_view_needing_itself_is_a_one_line_error_naming_the_method(cls, chain):
    method = cls(cls.Config(), None)  # type: ignore[arg-type]
    ctx = make_context(method)
    ctx.method_name = "my_method"
    with pytest.raises(ReentrantViewError) as exc:
        method.loss(ctx)
    message = str(exc.value)
    assert "'my_method'" in message
    assert chain in message
    assert "with_teacher" in message
    assert "\n" not in message
    assert isinstance(exc.value, UserError)  # the CLI prints it as one line, exit 2, no traceback


# ------------------------------------------------------------------------------ teacher on x'


class _AttacksTheTeacher(Method):
    def attack_objective(self, ctx):
        return with_teacher(lambda s, t: torch.nn.functional.cross_entropy(t.logits.float(), ctx.y, reduction="none"))

    def loss(self, ctx):
        return {"x": ctx.student_adv.logits.float().mean()}


def test_with_teacher_differentiates_through_the_teacher_to_the_input_only():
    method = _AttacksTheTeacher(_AttacksTheTeacher.Config(), None)  # type: ignore[arg-type]
    ctx = make_context(method, attack_options={"steps": 3})
    teacher_state = {k: v.clone() for k, v in ctx.teacher.state_dict().items()}
    x_adv = ctx.x_adv
    assert (x_adv - ctx.x).abs().max() > 0.02  # the teacher's gradient moved x (start noise is 8/255 at most)
    assert all(p.grad is None for p in ctx.teacher.parameters())
    assert all(p.grad is None for p in ctx.student.parameters())
    assert all(torch.equal(v, teacher_state[k]) for k, v in ctx.teacher.state_dict().items())  # BN untouched
    # It really is the teacher's objective: its CE on x' rose against the clean one.
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(ctx.teacher(ctx.x), ctx.y)
        after = torch.nn.functional.cross_entropy(ctx.teacher(x_adv), ctx.y)
    assert after > before


def test_a_teacher_that_is_not_frozen_is_refused_in_the_attack():
    method = _AttacksTheTeacher(_AttacksTheTeacher.Config(), None)  # type: ignore[arg-type]
    ctx = make_context(method)
    ctx.teacher.train()
    with pytest.raises(RuntimeError, match="not frozen"):
        ctx.x_adv  # noqa: B018


def test_an_objective_naming_an_unknown_teacher_says_which_exist():
    class Named(_AttacksTheTeacher):
        def attack_objective(self, ctx):
            return with_teacher(lambda s, t: t.logits.sum(1), teacher="natural")

    method = Named(Named.Config(), None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="teacher 'natural', but the run built: teacher"):
        make_context(method).x_adv  # noqa: B018


# ------------------------------------------------------------------------------ eps schedule


def test_budget_at_step_and_linear_schedules():
    points = [EpsPoint(epoch=2, eps=2 / 255), EpsPoint(epoch=6, eps=6 / 255, step_size=1 / 255)]
    step = EpsSchedule(points=points)
    linear = EpsSchedule(points=points, interpolation="linear")
    base = (8 / 255, 2 / 255)
    assert budget_at(step, 0, *base) == base  # before the first point: the attack's own budget
    assert budget_at(step, 2, *base) == pytest.approx((2 / 255, 0.5 / 255))  # step keeps the ratio 1/4
    assert budget_at(step, 5, *base) == pytest.approx((2 / 255, 0.5 / 255))
    assert budget_at(step, 6, *base) == pytest.approx((6 / 255, 1 / 255))
    assert budget_at(step, 99, *base) == pytest.approx((6 / 255, 1 / 255))
    assert budget_at(linear, 4, *base) == pytest.approx((4 / 255, 0.75 / 255))


def _raw(**attack):
    return {
        "name": "x",
        "data": {"dataset": "fake"},
        "student": {"model": "resnet8"},
        "method": {"name": "pgd_at"},
        "attack": {"eps": "8/255", **attack},
        "train": {"epochs": 4},
    }


def test_an_eps_schedule_beyond_the_threat_model_is_a_one_line_error_naming_the_key():
    schedule = [{"epoch": 0, "eps": "4/255"}, {"epoch": 2, "eps": "10/255"}]
    with pytest.raises(RecipeError, match=r"attack\.eps_schedule\.1\.eps: eps 0\.0392157 exceeds .*attack\.eps"):
        resolve(_raw(eps_schedule=schedule))
    with pytest.raises(RecipeError, match=r"attack\.eps_schedule\.1\.epoch: epoch 0 does not come after"):
        resolve(_raw(eps_schedule=[{"epoch": 1, "eps": "4/255"}, {"epoch": 0, "eps": "8/255"}]))
    with pytest.raises(RecipeError, match=r"attack\.eps_schedule\.0\.epoch: required key is missing"):
        resolve(_raw(eps_schedule=[{"epo": 1, "eps": "4/255"}]))


def test_the_new_keys_are_hash_neutral_while_unused():
    from kdbench.config import hash_payload

    resolved = resolve(_raw())
    payload = resolved._as_dict(hash_payload)
    assert "teachers" not in payload  # so the hash of every existing recipe is unchanged
    assert "eps_schedule" not in payload["attack"]
    assert "eps_schedule_interpolation" not in payload["attack"]
    assert resolved.to_dict()["attack"]["eps_schedule"] == []  # recipe.toml still shows them
    scheduled = resolve(_raw(eps_schedule=[{"epoch": 1, "eps": "4/255"}]))
    assert scheduled.to_dict()["attack"]["eps_schedule"] == [{"epoch": 1, "eps": 4 / 255, "step_size": None}]
    assert scheduled.hash != resolved.hash


def test_the_trainer_applies_the_schedule_per_epoch_and_records_it(tmp_path):
    from kdbench.engine.progress import make_progress
    from kdbench.run import run_recipe

    raw = _raw(steps=1, eps_schedule=[{"epoch": 1, "eps": "2/255"}, {"epoch": 3, "eps": "8/255"}])
    raw["data"]["options"] = {"train_size": 64, "test_size": 16, "image_size": 8}
    raw["train"].update(batch_size=32, deterministic=True)
    raw["eval"] = {"attacks": ["clean"]}
    raw["eval"] = {"attacks": ["clean"]}
    resolved = resolve(raw)
    outcome = run_recipe(resolved, tmp_path / "out", progress=make_progress(True))
    import json

    rows = [json.loads(x) for x in (outcome.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["attack_eps"] for r in rows] == pytest.approx([8 / 255, 2 / 255, 2 / 255, 8 / 255])
    assert [r["attack_step_size"] for r in rows] == pytest.approx([2 / 255, 0.5 / 255, 0.5 / 255, 2 / 255])


def test_methods_without_an_attack_record_no_budget(tmp_path):
    from kdbench.engine.progress import make_progress
    from kdbench.run import run_recipe

    raw = _raw()
    raw["method"] = {"name": "natural"}
    raw["data"]["options"] = {"train_size": 64, "test_size": 16, "image_size": 8}
    raw["train"].update(batch_size=32, epochs=1)
    raw["eval"] = {"attacks": ["clean"]}
    import json

    outcome = run_recipe(resolve(raw), tmp_path / "out", progress=make_progress(True))
    row = json.loads((outcome.out_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert "attack_eps" not in row


def test_every_registered_method_declares_extra_teachers_as_a_mapping():
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert all(isinstance(k, str) and k != "teacher" for k in cls.extra_teachers), name


def test_show_names_a_methods_additional_teachers(capsys):
    from kdbench.cli import main

    assert main(["show", "mtard"]) == 0
    assert "additional teacher [teachers.natural]: a naturally trained teacher" in capsys.readouterr().out
