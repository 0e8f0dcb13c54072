"""Third-party methods are validated when they load, like pluggy validates hooks, and refused whole.

A distribution ("lax-plugins" 1.2) ships methods that look plausible but would silently misbehave:
a Config that is a plain pydantic model (a typo in the recipe becomes a silent default, NaN is
accepted), a Config field without default, class attributes of the wrong type, and a missing
``loss``. Each is refused at load time with the distribution, its version and what to fix; a recipe
naming one fails in one line (exit 2) before anything runs.
"""

from __future__ import annotations

import pytest

from kdbench import ATTACKS, DATASETS, METHODS, MODELS, PluginError
from kdbench.cli import main

from ..conftest import write
from .conftest import TINY_RECIPE

MODULE = """
    import torch.nn.functional as F
    from pydantic import BaseModel, ConfigDict
    from kdbench import Method, StrictModel

    class PlainConfig(BaseModel):  # the mistake: pydantic's defaults (extra ignored, NaN allowed)
        temperature: float = 4.0

    class NeedsValue(StrictModel):
        temperature: float  # no default

    class _Loss(Method):
        needs_teacher = False
        uses_teacher_logits = False

        def loss(self, ctx):
            return {"ce": F.cross_entropy(ctx.student_clean.logits.float(), ctx.y) * self.config.temperature / 4}

    class Plain(_Loss):
        Config = PlainConfig

    class Required(_Loss):
        Config = NeedsValue

    class IgnoreExtra(_Loss):
        class Config(BaseModel):
            model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
            temperature: float = 4.0

    class WrongAttributes(_Loss):
        needs_teacher = "no"
        attack_bn_mode = "training"

    class NoLoss(Method):
        needs_teacher = False
"""

PLUGINS = {
    "plain": ("Plain", ["Config accepts unknown keys", "Config accepts NaN and infinity"]),
    "required": ("Required", ["Config field(s) temperature have no default"]),
    "ignore_extra": ("IgnoreExtra", ["Config accepts unknown keys"]),
    "wrong_attributes": (
        "WrongAttributes",
        ["class attribute needs_teacher = 'no' is not of type bool", "class attribute attack_bn_mode = 'training'"],
    ),
    "no_loss": ("NoLoss", ["does not implement loss() (required by Method)"]),
}


@pytest.fixture
def lax_plugins(fake_distribution, monkeypatch):
    entry_points = {"kdbench.methods": {name: f"lax_methods:{cls}" for name, (cls, _) in PLUGINS.items()}}
    fake_distribution("lax-plugins", "1.2", entry_points=entry_points, modules={"lax_methods": MODULE})
    for registry in (MODELS, DATASETS, ATTACKS, METHODS):
        monkeypatch.setattr(registry, "_entries", None)


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_invalid_plugin_is_refused_at_load_naming_distribution_and_problem(lax_plugins, name):
    cls, problems = PLUGINS[name]
    with pytest.raises(PluginError) as info:
        METHODS.get(name)
    message = str(info.value)
    assert message.startswith(
        f"method {name!r} from lax-plugins 1.2 ('{name} = lax_methods:{cls}') is not a valid plugin: "
    )
    for problem in problems:
        assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize("option", ["temprature = 2.0", "temperature = nan"], ids=["typo", "nan"])
def test_recipe_with_a_lax_method_fails_in_one_line_before_running(lax_plugins, tmp_path, capsys, option):
    recipe = write(tmp_path / "r.toml", TINY_RECIPE.replace('name = "natural"', f'name = "plain"\n{option}'))
    out = tmp_path / "out"

    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "method 'plain' from lax-plugins 1.2 ('plain = lax_methods:Plain') is not a valid plugin" in err
    assert not out.exists()


def test_every_installed_component_passes_the_checks():
    for registry in (MODELS, DATASETS, ATTACKS, METHODS):
        for name in registry.names():
            registry.get(name)  # raises PluginError for an invalid one
