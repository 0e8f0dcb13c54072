"""The conventional training loop that published robust-distillation code runs, for the speed comparison.

What it does differently from kdbench's fast path (`kdbench.engine.trainer.Trainer.step` fed by
`kdbench.data.loader.DeviceLoader`), each the way the ARD (github.com/goldblum/AdversariallyRobustDistillation,
main.py) and RSLAD (github.com/zibojia/RSLAD) training scripts do it:

* data: PIL images through ``torchvision.transforms`` (``RandomCrop(size, padding=4)``,
  ``RandomHorizontalFlip``, ``ToTensor``) in ``torch.utils.data.DataLoader`` worker processes
  (``num_workers = min(4, cpus)``, ``pin_memory`` on CUDA), copied to the device batch by batch;
* precision and layout: float32, no autocast, contiguous (NCHW) tensors;
* the attack (`ConventionalPGD`): the per-sample objective of the method, summed, differentiated by
  ``loss.backward()`` through the whole student after ``model.zero_grad()``, so every step also
  computes parameter gradients that are then thrown away (RSLAD's ``attack_pgd`` in rslad_loss.py;
  ARD's ``AttackPGD`` and RSLAD's ``rslad_inner_loss`` take ``torch.autograd.grad`` on the input
  instead: ``gradient="input"`` times that variant); projection ``min(max(x', x - eps), x + eps)``
  then ``clamp(0, 1)``;
* the update: ``optimizer.zero_grad()`` (grads zeroed, not freed, as before PyTorch 2.0), backward,
  ``optimizer.step()``, and ``loss.item()`` every step (the scripts' running loss: a host sync).

The method's own formulas are untouched: the attack maximises `Method.attack_objective` and the loss is
`Method.loss` read through a `StepContext` built with the plain fp32 settings, so the comparison works
for any method and measures only the engineering. Backend flags (cuDNN benchmark, TF32) are shared
with the fast path, which makes the reported speedup conservative.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdbench.attacks import threat
from kdbench.attacks.base import Attack, ModelFn, Objective
from kdbench.config import StrictModel
from kdbench.method import Method, StepContext
from kdbench.models.base import Network
from kdbench.recipe import TrainSection

__all__ = ["ConventionalLoop", "ConventionalPGD", "PILDataset", "conventional_loader", "default_num_workers"]


def default_num_workers() -> int:
    """``min(4, usable CPUs)``: the DataLoader workers of the conventional loop."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


class PILDataset(Dataset[tuple[Tensor, int, int]]):
    """A uint8 ``(N, C, H, W)`` tensor served as PIL images through ``transform``, like torchvision's CIFAR10.

    torchvision's ``CIFAR10`` keeps its images as an ``(N, H, W, C)`` uint8 array and builds a PIL image
    per ``__getitem__``; this does the same from kdbench's decoded split, so the baseline needs no extra
    files. Items are ``(transform(image), label, index)``; the index feeds methods with memory banks.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Any):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        hwc = images.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()
        self.images = hwc[..., 0] if hwc.shape[-1] == 1 else hwc
        self.labels = labels.detach().cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i], i


def conventional_loader(
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int,
    augment: bool,
    device: torch.device,
    seed: int = 0,
    num_workers: int | None = None,
    crop_padding: int = 4,
) -> DataLoader[Any]:
    """The published scripts' input pipeline over ``images`` (uint8 ``(N, C, H, W)``, CPU) and ``labels``."""
    import torchvision.transforms as T

    size = int(images.shape[-1])
    steps = [T.RandomCrop(size, padding=crop_padding), T.RandomHorizontalFlip()] if augment else []
    dataset = PILDataset(images, labels, T.Compose([*steps, T.ToTensor()]))
    workers = default_num_workers() if num_workers is None else num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=len(dataset) > batch_size,
        generator=torch.Generator().manual_seed(seed),
    )


class ConventionalPGD(Attack):
    """PGD written the way training scripts write it: full backward through the model, grads zeroed.

    Reads the threat model from any attack config with the `ThreatModelConfig` fields (``norm``,
    ``eps``, ``step_size``, ``steps``, ``random_start``); a config without ``steps`` (FGSM) is one step
    of size eps. Per step::

        x'.requires_grad_(); loss = objective(model(x')).sum(); model.zero_grad(); loss.backward()
        x' = proj(x' + alpha * sign(x'.grad))      (L2: x'.grad / ||x'.grad||_2)

    ``gradient="input"`` replaces the last two calls with ``torch.autograd.grad(loss, x')`` (ARD's
    ``AttackPGD``, RSLAD's ``rslad_inner_loss``).
    """

    def __init__(self, config: StrictModel, module: nn.Module, gradient: str = "backward"):
        super().__init__(config)
        if gradient not in ("backward", "input"):
            raise ValueError(f"gradient must be 'backward' or 'input', got {gradient!r}")
        self.module = module
        self.gradient = gradient
        self.norm: str = getattr(config, "norm", "linf")
        self.eps = float(getattr(config, "eps", 8 / 255))
        self.steps = int(getattr(config, "steps", 1))
        self.step_size = float(getattr(config, "step_size", self.eps))
        self.random_start: str = getattr(config, "random_start", "none")

    def perturb(self, model: ModelFn, x: Tensor, objective: Objective) -> Tensor:
        x0 = x.detach()
        x_adv = threat.random_start(x0, norm=self.norm, eps=self.eps, mode=self.random_start)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = objective(model(x_adv)).sum()
            if self.gradient == "backward":
                self.module.zero_grad(set_to_none=False)
                loss.backward()
                grad = x_adv.grad
                assert grad is not None
            else:
                (grad,) = torch.autograd.grad(loss, [x_adv])
            x_adv = x_adv.detach() + self.step_size * threat.ascent_direction(grad, self.norm)
            if self.norm == "linf":
                x_adv = torch.min(torch.max(x_adv, x0 - self.eps), x0 + self.eps).clamp(0.0, 1.0)
            else:
                x_adv = threat.project(x_adv, x0, norm=self.norm, eps=self.eps)
        return x_adv.detach()


class ConventionalLoop:
    """One conventional training step per `step` call, on batches from `batches`.

    ``student``, ``teacher`` and ``method`` must be this loop's own copies (the loop trains them);
    they are moved to ``device`` in float32 and contiguous memory format. The optimiser is SGD with the
    recipe's hyper-parameters at a constant learning rate (the schedule costs nothing measurable).
    """

    def __init__(
        self,
        *,
        student: Network,
        method: Method,
        attack_config: StrictModel,
        loader: DataLoader[Any],
        train: TrainSection,
        device: torch.device,
        teacher: Network | None = None,
        gradient: str = "backward",
    ):
        fmt = torch.contiguous_format
        self.device = device
        self.student = student.to(device=device, dtype=torch.float32).to(memory_format=fmt)
        self.teacher = teacher.to(device=device, dtype=torch.float32).to(memory_format=fmt) if teacher else None
        self.method = method.to(device)
        self.attack = ConventionalPGD(attack_config, self.student, gradient)
        self.loader = loader
        params = [p for p in [*self.student.parameters(), *self.method.parameters()] if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=train.nesterov
        )
        self.student.train()
        self.method.train()
        self._step_index = 0

    def batches(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The loader's batches, epoch after epoch (each epoch starts the workers again, as a script does)."""
        while True:
            yield from self.loader

    def step(self, x: Tensor, y: Tensor, index: Tensor) -> float:
        """Copy the batch to the device, train one step, return the loss (read with ``.item()``)."""
        x, y, index = x.to(self.device), y.to(self.device), index.to(self.device)
        ctx = StepContext(
            x=x,
            y=y,
            index=index,
            student=self.student,
            teacher=self.teacher,
            method=self.method,
            attack=self.attack,
            autocast=nullcontext,
            epoch=0,
            step=self._step_index,
        )
        terms = self.method.loss(ctx)
        total = torch.stack([t.float() for t in terms.values()]).sum()
        self.optimizer.zero_grad(set_to_none=False)
        total.backward()
        self.optimizer.step()
        self._step_index += 1
        return float(total.item())
