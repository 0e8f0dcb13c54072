"""``kdbench bench``: the command works end to end on CPU and its JSON is complete and sane.

No timing is asserted (CPU timings on a shared machine are noise): only that every number is there and
positive, that the FLOP counter agrees with the 3x-forward rule for a natural step, and that
``--baseline`` adds the conventional loop and a speedup. Nothing here needs a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kdbench.attacks.objectives import cross_entropy
from kdbench.attacks.pgd import PGD
from kdbench.attacks.threat import ThreatModelConfig
from kdbench.bench import ConventionalPGD, lookup_gpu_peak, time_steps
from kdbench.bench.baseline import conventional_loader
from kdbench.cli import main
from kdbench.testing import TinyNet

from .conftest import write

BATCH = 16
IMAGE = 16
BASE = f"""
[data]
dataset = "fake"
options = {{train_size = 64, test_size = 32, image_size = {IMAGE}}}
[student]
model = "resnet8"
[train]
batch_size = {BATCH}
[eval]
attacks = ["clean"]
"""
NATURAL = 'name = "bench-natural"\nseed = 0\n' + BASE + '[method]\nname = "natural"\n'
PGD_AT = 'name = "bench-pgdat"\nseed = 0\n' + BASE + '[method]\nname = "pgd_at"\n[attack]\nsteps = 2\n'
KD = 'name = "bench-kd"\nseed = 0\n' + BASE + '[method]\nname = "kd"\n[teacher]\nrecipe = "natural.toml"\n'
FAST = ["--steps", "2", "--warmup", "1", "--eval-n", "8", "--no-autoattack", "--quiet"]
STEP_KEYS = {"images_per_second", "seconds_per_epoch", "step_ms", "flops_per_step", "tflops", "mfu"}
TOP_KEYS = {
    "command",
    "recipe",
    "recipe_hash",
    "device",
    "torch",
    "git_commit",
    "precision",
    "channels_last",
    "compile",
    "batch_size",
    "step",
    "eval",
    "baseline",
    "speedup",
}


def bench(tmp_path: Path, recipe: str, *extra: str) -> dict:
    path = write(tmp_path / "recipe.toml", recipe)
    write(tmp_path / "natural.toml", NATURAL)
    out = tmp_path / "bench.json"
    assert main(["bench", str(path), *FAST, *extra, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def check_step(block: dict) -> None:
    assert STEP_KEYS | {"peak_memory_bytes"} <= set(block)
    for key in [*STEP_KEYS, "peak_memory_bytes"]:
        assert block[key] > 0, key
    assert block["steps"] == 2
    assert block["seconds_per_epoch"] == pytest.approx(50_000 / block["images_per_second"])


def test_natural_step_json_and_flop_count(tmp_path, capsys):
    report = bench(tmp_path, NATURAL)
    assert set(report) >= TOP_KEYS
    assert report["command"].startswith("kdbench bench ")
    assert report["precision"] == "fp32" and report["channels_last"] is False and report["compile"] is False
    assert report["batch_size"] == BATCH
    assert report["device"].startswith("cpu")
    check_step(report["step"])
    assert report["baseline"] is None and report["speedup"] is None
    assert report["peak"]["tflops"] > 0
    ev = report["eval"]
    assert ev["n"] == 8 and ev["pgd20"]["seconds"] > 0 and ev["autoattack"] is None

    # Sanity of the counter: a natural step is one forward and one backward (about twice the forward) pass.
    from kdbench.build import build_network, network_spec
    from kdbench.data.sources import FakeConfig, FakeSource
    from kdbench.models.cifar_resnet_small import ResNet8

    info = FakeSource(FakeConfig(image_size=IMAGE), None, False).info()
    net = build_network("resnet8", ResNet8.Config(), network_spec(info)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.rand(1, 3, IMAGE, IMAGE))
    forward = counter.get_total_flops()
    expected = 3 * forward * BATCH
    assert expected / 2 <= report["step"]["flops_per_step"] <= expected * 2

    out = capsys.readouterr().out
    assert "images/s" in out and "s / CIFAR epoch" in out and "MFU" in out


def test_teacher_without_finished_run_is_randomly_initialised(tmp_path):
    report = bench(tmp_path, KD, "--no-eval")
    assert report["teacher"] == {"model": "resnet8", "weights": "random init"}
    assert report["eval"] is None
    check_step(report["step"])
    assert not list((tmp_path / "runs").glob("**/model.pt"))  # the teacher was not trained


def test_baseline_adversarial_method(tmp_path, capsys):
    report = bench(tmp_path, PGD_AT, "--baseline", "--workers", "1", "--no-eval")
    check_step(report["step"])
    base = report["baseline"]
    check_step(base)
    assert base["attack_gradient"] == "backward" and base["precision"] == "fp32"
    assert base["num_workers"] == 1
    # The conventional attack also computes parameter gradients: more FLOPs for the same model FLOPs.
    assert base["flops_per_step"] > report["step"]["flops_per_step"]
    assert base["model_flops_per_step"] == report["step"]["flops_per_step"]
    assert report["speedup"] == pytest.approx(report["step"]["images_per_second"] / base["images_per_second"])
    assert "speedup:" in capsys.readouterr().out


def test_sweep_and_bad_counts_are_user_errors(tmp_path, capsys):
    path = write(tmp_path / "sweep.toml", NATURAL + '[sweep]\n"train.lr" = [0.1, 0.2]\n')
    assert main(["bench", str(path), "--quiet"]) == 2
    assert "sweeps over 2 runs" in capsys.readouterr().err
    good = write(tmp_path / "good.toml", NATURAL)
    assert main(["bench", str(good), "--steps", "0", "--quiet"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_conventional_pgd_matches_kdbench_pgd():
    """Both gradient modes of the conventional attack give kdbench's PGD iterate (same start, same math)."""
    torch.manual_seed(0)
    from kdbench.build import network_spec
    from kdbench.data.sources import FakeConfig, FakeSource

    net = TinyNet(network_spec(FakeSource(FakeConfig(image_size=8), None, False).info())).eval()
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    config = ThreatModelConfig(steps=3, random_start="none")
    reference = PGD(config).perturb(net.forward_all, x, cross_entropy(y))
    for gradient in ("backward", "input"):
        x_adv = ConventionalPGD(config, net, gradient).perturb(net.forward_all, x, cross_entropy(y))
        assert torch.allclose(x_adv, reference, atol=1e-6)
        assert (x_adv - x).abs().max() <= config.eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is not None for p in net.parameters())  # "backward" went through the parameters


def test_conventional_loader_gives_pil_augmented_batches():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    loader = conventional_loader(
        images, torch.arange(10), batch_size=4, augment=True, device=torch.device("cpu"), num_workers=0
    )
    x, y, index = next(iter(loader))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(y, index)  # labels were arange: each item carries its own index
    assert len(loader) == 2  # drop_last


def test_gpu_peak_table_and_timer():
    assert lookup_gpu_peak("NVIDIA H100 80GB HBM3").label == "H100 SXM"
    assert lookup_gpu_peak("NVIDIA H100 PCIe").label == "H100 PCIe"
    assert lookup_gpu_peak("NVIDIA H200").bf16 == pytest.approx(989.4)
    assert lookup_gpu_peak("NVIDIA A100-SXM4-80GB").label == "A100"
    assert lookup_gpu_peak("NVIDIA L40S").label == "L40S"
    assert lookup_gpu_peak("NVIDIA GeForce RTX 4090").label == "RTX 4090"
    assert lookup_gpu_peak("Tesla T4") is None
    calls = []
    timing = time_steps(lambda: calls.append(1) or 8, steps=3, warmup=2, device=torch.device("cpu"))
    assert len(calls) == 5 and timing.images == 24 and len(timing.step_seconds) == 3
    assert timing.peak_memory_bytes > 0


def test_flop_count_of_grouped_convolution_backward():
    """Each gradient of a convolution costs its forward: 3x for a full backward, 2x for the input only, any groups."""
    from torch import nn

    from kdbench.bench import count_flops

    for groups in (1, 4, 32):
        conv = nn.Conv2d(32, 32, 3, padding=1, groups=groups)
        x = torch.rand(2, 32, 8, 8, requires_grad=True)
        forward = count_flops(lambda conv=conv, x=x: conv(x))
        assert forward == 2 * 2 * 8 * 8 * 32 * (32 // groups) * 9
        assert count_flops(lambda conv=conv, x=x: conv(x).sum().backward()) == 3 * forward
        assert count_flops(lambda conv=conv, x=x: torch.autograd.grad(conv(x).sum(), x)) == 2 * forward
