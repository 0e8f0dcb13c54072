"""Input normalisation as model configuration: official checkpoints compute the official function."""

from __future__ import annotations

import re

import pytest
import torch

from kdbench._errors import RecipeError, UserError
from kdbench.build import build_network, load_network_weights, network_spec
from kdbench.data.base import DatasetInfo
from kdbench.models.normalization import (
    NormalizeStats,
    check_recorded,
    recorded_normalization,
    resolve_normalization,
)
from kdbench.recipe import resolve

CIFAR10 = DatasetInfo(10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
NONE = resolve_normalization("none", CIFAR10.mean, CIFAR10.std)

#: Official key layout per architecture: the classifier's name in TRADES/ARD/RSLAD, and the modules the
#: official WRN builds but never calls (TRADES' model_cifar_wrn.pt holds their weights).
OFFICIAL = {
    "wrn_34_10": ("fc.", True),
    "resnet18": ("linear.", False),
    "mobilenet_v2": ("linear.", False),
}


def _official_state(net: torch.nn.Module, classifier: str, with_sub_block: bool) -> dict[str, torch.Tensor]:
    state = {
        (classifier + k[len("head.") :] if k.startswith("head.") else k): v.clone() for k, v in net.state_dict().items()
    }
    if with_sub_block:  # the unused sub_block1 of the TRADES WideResNet: same shapes as block1
        block1 = {k: v for k, v in state.items() if k.startswith("block1.")}
        state.update({"sub_block1." + k[len("block1.") :]: v.clone() for k, v in block1.items()})
    return state


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_key_layout_round_trip_with_normalize_none(name, tmp_path):
    classifier, sub_block = OFFICIAL[name]
    from kdbench._registry import MODELS

    cfg = MODELS.get(name).Config()
    torch.manual_seed(0)
    original = build_network(name, cfg, network_spec(CIFAR10, normalization=NONE)).eval()
    for m in original.modules():  # non-trivial BN statistics, so a wrong load would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "official.pt"
    torch.save(_official_state(original, classifier, sub_block), path)  # a bare state_dict, as the repos save

    torch.manual_seed(1)
    loaded = build_network(name, cfg, network_spec(CIFAR10, normalization=NONE)).eval()
    meta = load_network_weights(loaded, path)
    assert meta == {}
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        expected = original(x)
        assert torch.equal(loaded(x), expected)
        # The same weights behind the dataset normalisation compute another function (the old, silent
        # behaviour): off by more than the logits' input-dependent spread.
        wrong = build_network(name, cfg, network_spec(CIFAR10)).eval()
        load_network_weights(wrong, path)
        spread = (expected - expected.mean(0)).abs().mean()
        assert (wrong(x) - expected).abs().mean() > spread


def test_normalize_none_feeds_raw_pixels():
    from kdbench._registry import MODELS

    net = build_network("resnet18", MODELS.get("resnet18").Config(), network_spec(CIFAR10, normalization=NONE))
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(net.normalize(x), x)


def test_explicit_statistics_and_recording():
    stats = NormalizeStats(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    norm = resolve_normalization(stats, CIFAR10.mean, CIFAR10.std)
    assert norm.setting == "explicit" and norm.stats == ((0.5,) * 3, (0.25,) * 3)
    dataset = resolve_normalization(None, CIFAR10.mean, CIFAR10.std)
    assert dataset.setting == "dataset" and dataset.stats == (CIFAR10.mean, CIFAR10.std)
    # model.pt files of older releases record no normalisation: they used the dataset's
    assert recorded_normalization({"model": "resnet18"}, CIFAR10.mean, CIFAR10.std) == dataset
    assert recorded_normalization({}, CIFAR10.mean, CIFAR10.std) is None  # a bare state_dict
    with pytest.raises(ValueError, match="channels"):
        NormalizeStats(mean=[0.5], std=[0.2, 0.2])
    with pytest.raises(ValueError, match="positive"):
        NormalizeStats(mean=[0.5], std=[0.0])


def test_mismatched_recorded_normalisation_is_an_error():
    dataset = resolve_normalization("dataset", CIFAR10.mean, CIFAR10.std)
    check_recorded(None, NONE, file="r.toml", key="teacher.normalize", what="w")  # bare state_dict: taken as given
    check_recorded(dataset, dataset, file="r.toml", key="teacher.normalize", what="w")
    with pytest.raises(RecipeError) as err:
        check_recorded(dataset, NONE, file="r.toml", key="teacher.normalize", what="the teacher's weights w.pt")
    text = str(err.value)
    assert text.startswith("r.toml: teacher.normalize: the teacher's weights w.pt was trained with")
    assert 'set teacher.normalize = "dataset"' in text and "\n" not in text


BASE = {
    "name": "n",
    "data": {"dataset": "fake"},
    "student": {"model": "resnet8"},
    "method": {"name": "natural"},
}


def test_recipe_accepts_the_three_forms_and_keeps_old_hashes():
    plain = resolve(BASE)
    same = resolve({**BASE, "student": {"model": "resnet8", "normalize": "dataset"}})
    raw = resolve({**BASE, "student": {"model": "resnet8", "normalize": "none"}})
    explicit = resolve({**BASE, "student": {"model": "resnet8", "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}}})
    assert plain.hash == same.hash  # "dataset" is what the absent key always meant
    assert len({plain.hash, raw.hash, explicit.hash}) == 3
    assert "normalize" not in plain.to_dict()["student"] or plain.to_dict()["student"]["normalize"] is None


@pytest.mark.parametrize(
    ("student", "fragment"),
    [
        ({"model": "resnet8", "normalize": "imagenet"}, "student.normalize"),
        ({"model": "resnet8", "normalize": {"mean": [0.5], "std": [-1.0]}}, "student.normalize"),
    ],
)
def test_bad_normalize_values_name_the_key(student, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        resolve({**BASE, "student": student})


def test_eval_rebuilds_a_run_with_its_recorded_normalisation(tmp_path, capsys):
    """`kdbench eval RUN` of a normalize = "none" run reproduces its result (the network is rebuilt raw)."""
    import json

    from kdbench.cli import main

    from .conftest import write

    recipe = write(
        tmp_path / "r.toml",
        """
        name = "raw"
        [data]
        dataset = "fake"
        options = {train_size = 64, test_size = 32, image_size = 16}
        [student]
        model = "resnet8"
        normalize = "none"
        [method]
        name = "natural"
        [train]
        epochs = 1
        batch_size = 32
        [eval]
        attacks = ["clean", "pgd2"]
        """,
    )
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["normalize"]["student"] == {"setting": "none", "mean": [0.0] * 3, "std": [1.0] * 3}
    assert main(["eval", str(out)]) == 0
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["metrics"]["clean_acc"] == result["metrics"]["clean_acc"]
    assert evaluated["metrics"]["robust"]["pgd2"] == result["metrics"]["robust"]["pgd2"]
    # as a weights file: the file records "none", so asking for "dataset" is refused
    capsys.readouterr()
    assert main(["eval", str(out / "model.pt"), "--dataset", "fake", "--normalize", "dataset"]) == 2
    assert 'was trained with normalize = "none"' in capsys.readouterr().err
