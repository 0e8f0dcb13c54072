"""The built-in networks and the timm adapter, built through the entry-point registry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import timm
import torch
from pydantic import ValidationError
from torch import nn

from kdbench import MODELS, Network, NetworkSpec, UserError
from kdbench._registry import split_variant
from kdbench.models.base import Normalize

SPEC = NetworkSpec(num_classes=10, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
CIFAR_MODELS = [name for name in MODELS.names() if name != "timm"]
SMALL_CIFAR_MODELS = ["resnet18", "preact_resnet18", "mobilenet_v2"]
TIMM_MODELS = ["timm:resnet10t", "timm:vit_tiny_patch16_224", "timm:mobilenetv3_small_050"]

#: Parameter counts for 10 classes, as the reference implementations (kuangliu/pytorch-cifar, ARD, RSLAD,
#: TRADES without its unused ``sub_block1``, Rice et al.'s PreAct ResNet) give them.
PARAMS_10_CLASSES = {
    "resnet18": 11_173_962,
    "preact_resnet18": 11_172_170,
    "mobilenet_v2": 2_296_922,
    "wrn_34_10": 46_160_474,
    "wrn_28_10": 36_479_194,
}
FEATURE_DIMS = {"resnet18": 512, "preact_resnet18": 512, "mobilenet_v2": 1280, "wrn_34_10": 640, "wrn_28_10": 640}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Batch-2 CIFAR passes gain nothing from intra-op threads, and lose a lot when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, spec: NetworkSpec = SPEC, **config: object) -> Network:
    cls = MODELS.get(name)
    return cls(spec, cls.Config(**config), split_variant(name)[1])


def batch(size: int = 2, image_size: int = 32) -> torch.Tensor:
    return torch.rand(size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_builtin_models_are_registered() -> None:
    assert set(PARAMS_10_CLASSES) | {"timm"} <= set(MODELS.names())
    for name in MODELS.names():
        assert issubclass(MODELS.get(name), Network)


# CIFAR architectures --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_model_outputs(name: str) -> None:
    net = build(name).eval()
    x = batch()
    with torch.no_grad():
        logits = net(x)
        out = net.forward_all(x)
    assert net.num_classes == 10
    assert logits.shape == (2, 10)
    assert out.features.shape == (2, net.feature_dim)
    if name in FEATURE_DIMS:
        assert net.feature_dim == FEATURE_DIMS[name]
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(net.head(out.features), logits)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_model_gradient_and_channels_last(name: str) -> None:
    net = build(name)
    x = batch().requires_grad_(True)
    net(x).logsumexp(dim=1).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0

    net.eval()
    x = batch()
    with torch.no_grad():
        expected = net(x)
        net.to(memory_format=torch.channels_last)
        got = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_model_parameter_counts(name: str) -> None:
    net = build(name)
    if name in PARAMS_10_CLASSES:
        assert n_params(net) == PARAMS_10_CLASSES[name]
    wide = build(name, SPEC._replace(num_classes=100))
    assert wide.num_classes == 100
    assert n_params(wide) - n_params(net) == 90 * (net.feature_dim + 1)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_model_100_classes(name: str) -> None:
    net = build(name, SPEC._replace(num_classes=100)).eval()
    with torch.no_grad():
        assert net(batch()).shape == (2, 100)


@pytest.mark.parametrize("name", SMALL_CIFAR_MODELS)
def test_cifar_model_larger_inputs(name: str) -> None:
    net = build(name, SPEC._replace(image_size=96)).eval()
    with torch.no_grad():
        out = net.forward_all(batch(2, 96))
    assert out.logits.shape == (2, 10)
    assert out.features.shape == (2, net.feature_dim)


def test_normalisation_is_inside_the_model() -> None:
    net = build("resnet18").eval()
    shifted = build("resnet18", SPEC._replace(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))).eval()
    shifted.load_state_dict(net.state_dict())
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(shifted((x - 0.5) / 0.25), net(x))


@pytest.mark.parametrize(("name", "classifier"), [("resnet18", "linear"), ("mobilenet_v2", "linear")])
def test_reference_checkpoint_keys_load(name: str, classifier: str) -> None:
    net = build(name)
    state = {(classifier + k[4:] if k.startswith("head.") else k): v for k, v in net.state_dict().items()}
    assert f"{classifier}.weight" in state
    fresh = build(name)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.head.weight, net.head.weight)


def test_wide_resnet_config_and_reference_keys() -> None:
    net = build("wrn_28_10", dropout=0.3, bn_momentum=0.01)
    blocks = [m for m in net.modules() if hasattr(m, "dropout")]
    assert blocks
    assert all(m.dropout == 0.3 for m in blocks)
    assert all(m.momentum == 0.01 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    # TRADES/RSLAD checkpoints name the classifier fc and carry an unused sub_block1.
    state = {("fc" + k[4:] if k.startswith("head.") else k): v for k, v in net.state_dict().items()}
    state["sub_block1.layer.0.conv1.weight"] = torch.zeros(1)
    net.load_state_dict(state)
    with pytest.raises(ValidationError):
        MODELS.get("wrn_34_10").Config(dropout=1.5)
    with pytest.raises(ValidationError):
        MODELS.get("wrn_34_10").Config(depth=16)


# timm adapter --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_model_matches_timm(name: str) -> None:
    variant = split_variant(name)[1]
    assert variant is not None
    torch.manual_seed(0)
    net = build(name).eval()
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if timm.get_pretrained_cfg(variant).fixed_input_size else {}
    reference = timm.create_model(variant, pretrained=False, num_classes=10, **kwargs).eval()

    x = batch()
    with torch.no_grad():
        out = net.forward_all(x)
        expected = reference(Normalize(SPEC.mean, SPEC.std)(x))
    assert out.logits.shape == (2, 10)
    assert out.features.shape == (2, net.feature_dim)
    torch.testing.assert_close(net(x), out.logits)
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    # The classifier lives only in `head`: its weights are not stored twice.
    assert n_params(net) == n_params(reference)
    assert len(net.state_dict()) == len(reference.state_dict())


def test_timm_model_gradient_channels_last_and_100_classes() -> None:
    net = build("timm:resnet10t", drop_rate=0.1)
    x = batch().requires_grad_(True)
    net(x).sum().backward()
    assert x.grad is not None
    assert x.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        expected = net(batch())
        net.to(memory_format=torch.channels_last)
        got = net(batch().contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert build("timm:resnet10t", SPEC._replace(num_classes=100)).eval()(batch()).shape == (2, 100)


def test_timm_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(UserError, match=r"unknown timm model 'resnet81'.*'resnet18'"):
        build("timm:resnet81")
    with pytest.raises(UserError, match=r"unknown timm model 'nonexistent_model'.*list_models"):
        build("timm:nonexistent_model")


def test_timm_without_variant_errors_clearly() -> None:
    cls = MODELS.get("timm")
    assert cls.accepts_variant
    with pytest.raises(UserError, match=r'"timm:<name>"'):
        cls(SPEC, cls.Config(), None)


def test_timm_model_with_two_classifier_heads_is_rejected() -> None:
    with pytest.raises(UserError, match="single classifier"):
        build("timm:deit_tiny_distilled_patch16_224")
