"""The robustness evaluation on the device: PGD-20 and standard AutoAttack (pyautoattack) on CUDA.

The labels are the network's own clean predictions, so every point starts classified correctly and
AutoAttack attacks all of them (a random network's accuracy on real labels would leave it almost nothing
to do). The network is a linear classifier of the pixels with unit-variance weights: at 8/255 its logit
differences can move by about eps * ||w_i - w_j||_1 ~ 27, more than its clean margins, so both attacks must
break most points, quickly. (A randomly initialised CNN is nearly constant, hence "robust": AutoAttack then
runs all four attacks, Square's 5,000 queries included, on every point, which takes minutes on a CPU.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdbench.config import EmptyConfig
from kdbench.evaluation import evaluate
from kdbench.evaluation.autoattack import run_autoattack
from kdbench.models.base import Network, NetworkSpec, Normalize

EPS = 8 / 255

pytest.importorskip("pyautoattack", reason="AutoAttack needs pyautoattack (the GPU machine gets it from gpu-site.sh)")


class LinearNet(Network):
    """``logits = W x + b`` on the normalised, flattened pixels; W ~ N(0, 1): a classifier with no robustness."""

    Config = EmptyConfig

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.num_classes = spec.num_classes
        self.feature_dim = 3 * spec.image_size**2
        self.body = nn.Sequential(Normalize(spec.mean, spec.std), nn.Flatten())
        self.head = nn.Linear(self.feature_dim, spec.num_classes)
        nn.init.normal_(self.head.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _model_and_data(device: str, n: int):
    spec = NetworkSpec(10, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    torch.manual_seed(0)
    net = LinearNet(spec).to(device).eval()
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x.to(device)).argmax(1).cpu()
    return net, x, y


def test_autoattack_runs_on_the_device_and_stays_in_the_ball(device):
    n = 256 if device == "cuda" else 8
    net, x, y = _model_and_data(device, n)
    result = run_autoattack(net, x, y, eps=EPS, batch_size=32, device=device, seed=0)
    assert result.x_adv.shape == x.shape and result.x_adv.device == x.device
    assert (result.x_adv - x).abs().max().item() <= EPS + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.correct.float().mean().item() < 0.5  # an untrained network is not robust


def test_evaluate_reports_pgd20_and_autoattack_on_the_device(device):
    n = 256 if device == "cuda" else 8
    net, x, y = _model_and_data(device, n)
    images = (x * 255).round().to(torch.uint8)
    with torch.no_grad():  # the uint8 round trip may move a few points off their label: relabel
        y = net(images.float().div(255).to(device)).argmax(1).cpu()
    report = evaluate(net, images, y, ["clean", "pgd20", "autoattack"], eps=EPS, batch_size=64, device=device, seed=0)
    assert report.clean_acc == 1.0 and report.n_eval == n
    assert report.robust["autoattack"] is not None and report.robust["pgd20"] is not None
    assert report.robust["autoattack"] <= report.clean_acc and report.robust["pgd20"] <= report.clean_acc
    assert report.robust["autoattack"] < 0.5
    assert report.seconds["autoattack"] > 0 and report.seconds["pgd20"] > 0
    assert next(net.parameters()).device.type == device  # the model stayed where it was
