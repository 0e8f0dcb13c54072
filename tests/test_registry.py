"""Registries: entry-point discovery, laziness, duplicates, broken plugins, unknown names."""

from __future__ import annotations

import sys

import pytest

import kdbench
from kdbench import METHODS, MODELS, Method, PluginError, Registry, UserError

PLUGIN = """
from kdbench import Method

class Good(Method):
    '''A third-party method.'''

    def loss(self, ctx):
        return {}
"""


def test_builtin_components_are_registered_through_entry_points():
    assert {"natural", "kd"} <= set(METHODS.names())
    assert {"resnet18", "preact_resnet18", "wrn_34_10", "wrn_28_10", "mobilenet_v2", "timm"} <= set(MODELS.names())
    assert {"cifar10", "cifar100", "stl10", "imagefolder", "fake"} <= set(kdbench.DATASETS.names())
    assert METHODS.entry("kd").distribution == "kdbench"


def test_core_imports_no_plugin():
    # Importing the core (and resolving a model) must not import any method plugin.
    import subprocess

    code = (
        "import kdbench, kdbench.run, kdbench.cli, sys; "
        "print([m for m in sys.modules if m.startswith('kdbench_plugins')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plugins_load_lazily(fake_distribution):
    fake_distribution(
        "lazy-plugin", entry_points={"kdbench.methods": {"lazy": "lazy_mod:Good"}}, modules={"lazy_mod": PLUGIN}
    )
    reg = Registry("methods", Method)
    assert "lazy" in reg.names()
    assert "lazy_mod" not in sys.modules
    assert reg.get("lazy").__name__ == "Good"
    assert "lazy_mod" in sys.modules
    assert reg.entry("lazy").provider == "lazy-plugin 1.0"


def test_unknown_name_lists_close_matches():
    with pytest.raises(UserError, match=r"unknown method 'kdd'; did you mean 'kd'"):
        METHODS.get("kdd")


def test_duplicate_name_names_both_distributions(fake_distribution):
    fake_distribution("dup-one", entry_points={"kdbench.methods": {"twin": "dup_a:Good"}}, modules={"dup_a": PLUGIN})
    fake_distribution(
        "dup-two", "2.0", entry_points={"kdbench.methods": {"twin": "dup_b:Good"}}, modules={"dup_b": PLUGIN}
    )
    reg = Registry("methods", Method)
    with pytest.raises(PluginError) as info:
        reg.get("twin")
    assert "dup-one 1.0" in str(info.value)
    assert "dup-two 2.0" in str(info.value)
    assert reg.get("kd") is METHODS.get("kd")  # everything else still works


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("raise ImportError('no module named torch_extras')", "ImportError"),
        ("raise RuntimeError('CUDA init failed')", "RuntimeError"),
        ("def broken(:\n    pass", "SyntaxError"),
        ("x = 1", "AttributeError"),  # the entry point names a missing attribute
    ],
)
def test_broken_plugin_is_reported_with_its_distribution(fake_distribution, code, error):
    fake_distribution(
        "broken-plugin", "0.3", entry_points={"kdbench.methods": {"bad": "bad_mod:Good"}}, modules={"bad_mod": code}
    )
    reg = Registry("methods", Method)
    with pytest.raises(PluginError) as info:
        reg.get("bad")
    message = str(info.value)
    assert "broken-plugin 0.3" in message
    assert "bad = bad_mod:Good" in message
    assert error in message
    assert reg.get("kd").__name__ == "KD"


def test_wrong_type_is_rejected(fake_distribution):
    fake_distribution(
        "wrong-type", entry_points={"kdbench.methods": {"notamethod": "wt:thing"}}, modules={"wt": "thing = 42"}
    )
    with pytest.raises(PluginError, match=r"not a subclass of kdbench\.method\.Method"):
        Registry("methods", Method).get("notamethod")


def test_autoload_can_be_disabled(fake_distribution, monkeypatch):
    fake_distribution(
        "third-party", entry_points={"kdbench.methods": {"tp": "tp_mod:Good"}}, modules={"tp_mod": PLUGIN}
    )
    monkeypatch.setenv("KDBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = Registry("methods", Method)
    assert "tp" not in reg.names()
    assert "kd" in reg.names()


def test_register_in_python_and_variants():
    reg = Registry("methods", Method)

    class Local(Method):
        def loss(self, ctx):
            return {}

    reg.register("local", Local)
    assert reg.get("local") is Local
    with pytest.raises(PluginError, match="provided by both"):
        reg.register("local", Local)
    assert "timm:resnet50" in MODELS
    assert MODELS.get("timm:resnet50") is MODELS.get("timm")


def test_components_may_name_their_config_type():
    """``Method[MyConfig]``, ``Attack[MyConfig]`` and ``DatasetSource[MyConfig]`` type ``self.config`` (for
    mypy) and register, load and construct exactly like a bare subclass."""
    import torch

    from kdbench import StrictModel
    from kdbench.attacks.base import Attack
    from kdbench.data.base import DatasetSource
    from kdbench.method import MethodSetup

    class ScaleConfig(StrictModel):
        scale: float = 2.0

    class Scaled(Method[ScaleConfig]):
        Config = ScaleConfig

        def loss(self, ctx):
            return {"zero": torch.zeros(()) * self.config.scale}

    class Still(Attack[ScaleConfig]):
        Config = ScaleConfig

        def perturb(self, model, x, objective):
            return x

    class Nothing(DatasetSource[ScaleConfig]):
        Config = ScaleConfig

        def info(self):
            raise NotImplementedError

        def load(self, split):
            raise NotImplementedError

    methods, attacks, datasets = (
        Registry("methods", Method),
        Registry("attacks", Attack),
        Registry("datasets", DatasetSource),
    )
    methods.register("scaled", Scaled)
    attacks.register("still", Still)
    datasets.register("nothing", Nothing)
    setup = MethodSetup(10, 8, None, None, 64, torch.device("cpu"))
    assert methods.get("scaled")(ScaleConfig(scale=3.0), setup).config.scale == 3.0
    assert attacks.get("still")(ScaleConfig(scale=4.0)).config.scale == 4.0
    assert datasets.get("nothing")(ScaleConfig(), None, False).config.scale == 2.0
