"""``mtard``: Multi-Teacher Adversarial Robustness Distillation (Zhao, Yu, Sun, Zhang & Wei,
"Enhanced Accuracy and Robustness via Multi-Teacher Adversarial Distillation", ECCV 2022; code
github.com/zhaoshiji123/MTARD@6480a1b, ``mtard_resnet18_cifar10.py`` and ``mtard_loss.py``).

Two teachers: a robust one (the recipe's ``[teacher]``) that sees x', and a naturally trained one
(``[teachers.natural]``) that sees x::

    x'        = PGD-10 from x + 0.001 N(0, 1) maximising CE(S(x'), y)         student in eval mode
    KLrs(T,S) = mean over B x C of p_T (log(p_T + 1e-5) - log p_S)             (x scale; 10 on CIFAR-100)
    L_adv     = KLrs(T_adv(x'), S(x')),   L_nat = KLrs(T_nat(x), S(x))
    each step: r_k = L_k / L_k,init (detached)
               w_nat <- w_nat - eta (w_nat - r_nat^b / (r_adv^b + r_nat^b)),   w_adv = 1 - w_nat
    loss      = w_adv L_adv + w_nat L_nat                                       terms "kl_adv", "kl_nat"

``L_init`` are the losses of the very first training batch, fixed afterwards. Each batch's losses
update the weights *before* its loss is formed, so the first step uses exactly 0.5 / 0.5. The
weights read the full KL (the ``b log(b + 1e-5)`` part included: a cross-entropy to the soft target
would change r). Official settings (mtard_resnet18_cifar10.py:16-20,42-49,74,135-138): w init
0.5 / 0.5, eta 0.025, b = 1, eps 8/255, step 2/255; eta drops with the learning rate (x0.1 at 215,
260 and 285 of 300 epochs): here ``eta = eta_0 * lr / (the highest lr so far)`` (from
``ctx.lr_scale``), which is exactly that under a multistep schedule, keeps eta_0 through a warm-up
or a one-cycle ramp, and decays with any other schedule's decay.

State: ``w_nat``, both ``L_init`` and the highest lr so far are buffers, so a checkpoint holds them
and a resume continues bit for bit (the official code does not checkpoint them). Data-parallel: the weights
read the global batch's losses, the mean over processes of each shard's L_adv and L_nat (an all-reduce of
two numbers per step; equal shards, so exactly the global mean), so every process holds the weights one
process would hold on the whole batch.
Differences from the official code: docs/methods/mtard.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdbench import Method, MethodSetup, Objective, StepContext, StrictModel
from kdbench.attacks.objectives import cross_entropy
from kdbench.engine.distributed import Distributed
from kdbench.losses import kl_log_eps

__all__ = ["MTARD", "MTARDConfig", "adaptive_weight_step"]

#: The name of the natural teacher's table in a recipe: ``[teachers.natural]``.
NATURAL = "natural"


class MTARDConfig(StrictModel):
    eta: float = Field(0.025, gt=0, le=1, description="step of the adaptive weight update (official: 0.025)")
    b: float = Field(1.0, gt=0, description="exponent b of the relative losses r^b (official: 1)")
    initial_natural_weight: float = Field(0.5, ge=0, le=1, description="w_nat before the first step (official 0.5)")
    eta_follows_lr: bool = Field(
        True,
        description="eta = eta_0 * lr / highest lr so far (official: x0.1 at the LR milestones); false: eta_0 always",
    )
    scale: float = Field(1.0, gt=0, description="multiplies both KLs; the official CIFAR-100 script uses 10")


def adaptive_weight_step(w_nat: Tensor, ratio_adv: Tensor, ratio_nat: Tensor, eta: float | Tensor, b: float) -> Tensor:
    """``w_nat - eta (w_nat - r_nat^b / (r_adv^b + r_nat^b))``: one step of MTARD's weight update (0-d tensors)."""
    target = ratio_nat.pow(b) / (ratio_adv.pow(b) + ratio_nat.pow(b))
    return w_nat - eta * (w_nat - target)


class MTARD(Method):
    """MTARD: a robust teacher on x' and a natural teacher on x, weighted adaptively by their relative losses."""

    Config = MTARDConfig
    config: MTARDConfig
    needs_teacher: ClassVar[bool] = True
    uses_teacher_logits: ClassVar[bool] = True
    extra_teachers: ClassVar[Mapping[str, str]] = {
        NATURAL: "a naturally trained teacher; it sees clean x, the robust [teacher] sees x'"
    }
    # mtard_loss.py: model.eval() for the attack, then S(x') and S(x) in train mode.
    attack_bn_mode: ClassVar[Literal["train", "eval"]] = "eval"
    attack_defaults: ClassVar[Mapping[str, Any]] = {"random_start": "normal"}

    natural_weight: Tensor
    initial_losses: Tensor
    peak_lr_scale: Tensor

    def __init__(self, config: MTARDConfig, setup: MethodSetup):
        super().__init__(config, setup)
        # float64: thousands of small updates accumulate without float32 drift; buffers, so checkpointed.
        self.register_buffer("natural_weight", torch.tensor(config.initial_natural_weight, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.full((2,), -1.0, dtype=torch.float64))  # (adv, nat); -1: unset
        self.register_buffer("peak_lr_scale", torch.tensor(0.0, dtype=torch.float64))
        self._world: Distributed | None = None  # set in data-parallel runs only

    def enter_data_parallel(self, world: Distributed, seed: int) -> None:
        """The adaptive weights follow the global batch's losses (mean of the processes' shard losses)."""
        del seed  # nothing random here
        self._world = world

    def attack_objective(self, ctx: StepContext) -> Objective:
        return cross_entropy(ctx.y)

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        c = self.config
        robust = F.softmax(ctx.teacher_adv.logits.float(), dim=1)
        natural = F.softmax(ctx.teachers[NATURAL].clean.logits.float(), dim=1)
        l_adv = c.scale * kl_log_eps(ctx.student_adv.logits, robust, "mean")
        l_nat = c.scale * kl_log_eps(ctx.student_clean.logits, natural, "mean")
        w_nat = self._update_weights(l_adv, l_nat, ctx.lr_scale if c.eta_follows_lr else 1.0)
        return {"kl_adv": (1 - w_nat) * l_adv, "kl_nat": w_nat * l_nat}

    @torch.no_grad()
    def _update_weights(self, l_adv: Tensor, l_nat: Tensor, lr_scale: float) -> Tensor:
        """Fix L_init on the first call, step w_nat towards r_nat / (r_adv + r_nat); return it (float32, detached).

        ``lr_scale``: this step's lr over the recipe's peak (1.0 when eta does not follow the lr).
        """
        current = torch.stack([l_adv, l_nat]).detach().double()
        if self._world is not None:  # equal shards: the mean of their means is the global batch's mean
            current = self._world.sum(current).div_(self._world.world_size)
        # The first batch sets L_init; no host read (a where on the device instead of an if).
        self.initial_losses.copy_(torch.where(self.initial_losses > 0, self.initial_losses, current))
        ratio = current / self.initial_losses
        scale = torch.tensor(lr_scale, dtype=torch.float64, device=current.device)
        self.peak_lr_scale.copy_(torch.maximum(self.peak_lr_scale, scale))
        decay = torch.where(self.peak_lr_scale > 0, scale / self.peak_lr_scale, torch.ones_like(scale))
        w = adaptive_weight_step(self.natural_weight, ratio[0], ratio[1], self.config.eta * decay, self.config.b)
        self.natural_weight.copy_(w)
        return w.float()
