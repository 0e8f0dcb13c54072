"""RobustBench zoo teachers: kdbench's teacher is robustbench.load_model's network, features come from the
input of the final linear layer, and every bad input is a one-line error naming the key.

Offline: each test writes a zoo-format file with random weights for a real zoo architecture into a
temporary model folder. The tests that need the optional ``robustbench`` package skip without it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from kdbench._errors import RecipeError, UserError
from kdbench.models.zoo import ZooNetwork, find_final_linear, load_zoo_teacher, zoo_weights_path
from kdbench.recipe import resolve


def _robustbench():
    pytest.importorskip("pandas")
    try:
        from kdbench.models.zoo import import_robustbench

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return import_robustbench()
    except UserError:
        pytest.skip("robustbench is not installed (optional extra)")


def _zoo_file(model_dir: Path, name: str, dataset: str = "cifar10", threat: str = "Linf") -> Path:
    """A zoo-format file (``{"state_dict": ...}`` with DataParallel's ``module.`` prefix) of random weights."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    net = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][name]["model"]()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = zoo_weights_path(model_dir, dataset, threat, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


# (zoo name, its architecture family): a WRN, a ResNet and a PreAct-ResNet of the CIFAR-10 L-inf zoo
ARCHITECTURES = [
    ("Zhang2019Theoretically", "WideResNet-34-10 (TRADES)"),
    ("Sehwag2021Proxy_R18", "ResNet-18"),
    ("Wong2020Fast", "PreAct-ResNet-18"),
]


@pytest.mark.parametrize(("name", "family"), ARCHITECTURES)
def test_zoo_teacher_equals_robustbench_load_model(name, family, tmp_path):
    rb = _robustbench()
    _zoo_file(tmp_path, name)
    teacher = load_zoo_teacher(
        name, dataset="cifar10", norm="linf", model_dir=tmp_path, download=False, image_size=32, file="r.toml"
    )
    reference = rb.utils.load_model(name, model_dir=tmp_path, dataset="cifar10", threat_model="Linf")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        out = teacher.network.forward_all(x)
        expected = reference(x)
        assert torch.equal(out.logits, expected), family
        assert torch.equal(teacher.network(x), expected)
        # penultimate features: the input of the final linear layer, i.e. the logits are head(features)
        head = teacher.network.head
        assert isinstance(head, nn.Linear) and out.features.shape == (4, head.in_features)
        torch.testing.assert_close(head(out.features), expected, rtol=0, atol=1e-5)
    assert teacher.network.num_classes == 10
    assert teacher.sha256 == __import__("hashlib").sha256(teacher.path.read_bytes()).hexdigest()
    # the head is stored once, under the zoo model's own key
    assert not any(k.startswith("head.") for k in teacher.network.state_dict())


def test_missing_zoo_file_names_the_exact_file(tmp_path):
    _robustbench()
    with pytest.raises(RecipeError) as err:
        load_zoo_teacher(
            "Zhang2019Theoretically",
            dataset="cifar10",
            norm="linf",
            model_dir=tmp_path,
            download=False,
            image_size=32,
            file="r.toml",
        )
    text = str(err.value)
    assert text.startswith("r.toml: teacher.model: RobustBench weights ")
    assert str(tmp_path / "cifar10" / "Linf" / "Zhang2019Theoretically.pt") in text
    assert "teacher.download = true" in text and "\n" not in text


def test_unknown_zoo_name_lists_close_matches(tmp_path):
    _robustbench()
    with pytest.raises(RecipeError, match=r"teacher\.model: .*did you mean 'Zhang2019Theoretically'"):
        load_zoo_teacher(
            "Zhang2019Theoretical",
            dataset="cifar10",
            norm="linf",
            model_dir=tmp_path,
            download=False,
            image_size=32,
            file="r.toml",
        )


def test_zoo_entry_of_another_threat_model_or_dataset(tmp_path):
    _robustbench()
    # Wong2020Fast exists for CIFAR-10 under L-inf only
    with pytest.raises(RecipeError, match=r"teacher\.model: RobustBench has 'Wong2020Fast' for cifar10 under Linf"):
        load_zoo_teacher(
            "Wong2020Fast", dataset="cifar10", norm="l2", model_dir=tmp_path, download=False, image_size=32, file="r"
        )
    with pytest.raises(RecipeError, match=r"teacher\.model: the RobustBench zoo has no 'stl10' models"):
        load_zoo_teacher(
            "Standard", dataset="stl10", norm="linf", model_dir=tmp_path, download=False, image_size=32, file="r"
        )


def test_full_module_pickle_is_refused_with_what_to_do(tmp_path):
    rb = _robustbench()
    path = zoo_weights_path(tmp_path, "cifar10", "Linf", "Wong2020Fast")
    path.parent.mkdir(parents=True)
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.save(model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Wong2020Fast"]["model"](), path)
    assert rb is not None
    with pytest.raises(RecipeError) as err:
        load_zoo_teacher(
            "Wong2020Fast", dataset="cifar10", norm="linf", model_dir=tmp_path, download=False, image_size=32, file="r"
        )
    text = str(err.value)
    assert "cannot be loaded with weights_only=True" in text and "full-module pickle" in text
    assert "torch.save({'state_dict': model.state_dict()}" in text and "\n" not in text


def test_ensemble_entries_are_refused(tmp_path):
    _robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    ensembles = [
        n
        for n, e in model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf].items()
        if isinstance(e["gdrive_id"], list)
    ]
    assert ensembles
    with pytest.raises(RecipeError, match="is an ensemble"):
        load_zoo_teacher(
            ensembles[0], dataset="cifar10", norm="linf", model_dir=tmp_path, download=False, image_size=32, file="r"
        )


def test_zoo_teacher_runs_in_a_distillation_recipe(tmp_path, cifar_root):
    """End to end: a kd student distils from a zoo-format file (Wong2020Fast's PreAct-ResNet-18)."""
    _robustbench()
    from kdbench.engine.progress import make_progress
    from kdbench.run import run_recipe

    _zoo_file(tmp_path / "models", "Wong2020Fast")
    raw = {
        "name": "zoo",
        "data": {"dataset": "cifar10", "train_subset": 64},
        "teacher": {"model": "robustbench:Wong2020Fast", "model_dir": str(tmp_path / "models")},
        "student": {"model": "resnet8"},
        "method": {"name": "kd"},
        "train": {"epochs": 1, "batch_size": 32},
        "eval": {"attacks": ["clean"], "n_examples": 16},
    }
    result = run_recipe(resolve(raw), tmp_path / "runs" / "zoo" / "x", progress=make_progress(quiet=True)).result.dump()
    source = result["teacher_source"]
    assert source["source"] == "robustbench" and source["zoo"]["name"] == "Wong2020Fast"
    assert source["key"].startswith("robustbench:Wong2020Fast@") and result["teacher_metrics"]["n_eval"] == 16
    assert result["normalize"]["teacher"] is None  # inside the zoo model


# ------------------------------------------------------------------------------ without robustbench


def test_find_final_linear_is_generic():
    class Odd(nn.Module):  # a linear layer before the final one, and the final one not named fc/linear/head
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(12, 8)
            self.out_layer = nn.Linear(8, 5)

        def forward(self, x):
            return self.out_layer(torch.relu(self.proj(x.flatten(1)[:, :12])))

    model = Odd()
    assert find_final_linear(model, torch.rand(2, 3, 2, 2)) is model.out_layer
    net = ZooNetwork(Odd(), image_size=2)
    x = torch.rand(3, 3, 2, 2)
    out = net.forward_all(x)
    assert out.features.shape == (3, 8) and net.feature_dim == 8 and net.num_classes == 5
    torch.testing.assert_close(net.head(out.features), out.logits)

    class Scaled(nn.Module):  # logits that are not a linear layer's output
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            return 2 * self.fc(x.flatten(1))

    with pytest.raises(UserError, match="not the output of a linear layer"):
        find_final_linear(Scaled(), torch.rand(2, 3, 2, 2))


def test_zoo_recipe_validation_needs_no_robustbench():
    base = {"name": "z", "data": {"dataset": "cifar10"}, "student": {"model": "resnet18"}, "method": {"name": "kd"}}
    ok = resolve({**base, "teacher": {"model": "robustbench:Zhang2019Theoretically"}})
    assert ok.recipe.teacher is not None and ok.recipe.teacher.zoo_name == "Zhang2019Theoretically"
    moved = resolve({**base, "teacher": {"model": "robustbench:Zhang2019Theoretically", "model_dir": "/elsewhere"}})
    assert moved.hash == ok.hash  # where the file lies does not change the run
    for teacher, fragment in [
        ({"model": "robustbench:X", "checkpoint": "w.pt"}, "brings its own weights"),
        ({"model": "robustbench:X", "normalize": "dataset"}, "normalise inside themselves"),
        ({"model": "resnet18", "checkpoint": "w.pt", "model_dir": "m"}, "for robustbench: teachers only"),
        ({"model": "robustbench:"}, "robustbench:<model name>"),
    ]:
        with pytest.raises(RecipeError, match="teacher") as err:
            resolve({**base, "teacher": teacher})
        assert fragment in str(err.value)


def test_missing_robustbench_says_how_to_install(monkeypatch):
    import builtins
    import importlib

    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name.startswith("robustbench"):
            raise ModuleNotFoundError("No module named 'robustbench'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert builtins is not None
    from kdbench.models.zoo import import_robustbench

    with pytest.raises(UserError, match=r'pip install -e "\.\[robustbench\]"'):
        import_robustbench()


def test_zoo_names_are_checked_when_the_recipe_is_validated():
    _robustbench()
    base = {"name": "z", "data": {"dataset": "cifar10"}, "student": {"model": "resnet18"}, "method": {"name": "kd"}}
    with pytest.raises(RecipeError, match=r"teacher\.model: RobustBench has no cifar10 Linf model 'Zhang2019'"):
        resolve({**base, "teacher": {"model": "robustbench:Zhang2019"}})
    with pytest.raises(RecipeError, match=r"teacher\.model: the RobustBench zoo has no 'stl10' models"):
        resolve({**base, "data": {"dataset": "stl10"}, "teacher": {"model": "robustbench:Standard"}})


def test_failed_download_is_one_line_naming_the_key(tmp_path, monkeypatch):
    rb = _robustbench()

    def offline(gdrive_id, path):
        raise ConnectionError("Failed to resolve 'drive.google.com'")

    monkeypatch.setattr(rb.utils, "download_gdrive_new", offline)
    with pytest.raises(RecipeError) as err:
        load_zoo_teacher(
            "Wong2020Fast", dataset="cifar10", norm="linf", model_dir=tmp_path, download=True, image_size=32, file="r"
        )
    text = str(err.value)
    assert text.startswith("r: teacher.download: downloading Wong2020Fast into ") and "ConnectionError" in text
    assert str(tmp_path / "cifar10" / "Linf" / "Wong2020Fast.pt") in text and "\n" not in text
