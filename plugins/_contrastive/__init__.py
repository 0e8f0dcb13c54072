"""Shared building blocks of the contrastive distillation methods ``crd`` and ``gacd``.

Contrastive Representation Distillation (Tian, Krishnan & Isola, "Contrastive Representation
Distillation", ICLR 2020, arXiv:1910.10699; code github.com/HobbitLong/RepDistiller, ``crd/``) and
GACD (Bai et al., arXiv:2009.09922) share the same machinery, implemented here once:

- **Embedding heads** ``g(f) = W f + b`` followed by L2 normalisation, ``(B, D_f) -> (B, d)``, d = 128
  (RepDistiller's ``Embed``). Trainable: they are submodules of the method.
- **Memory banks**: one ``(n_data, d)`` matrix per side (student, teacher), rows keyed by the dataset
  index of a sample, initialised ``U(-s, s)`` with ``s = 1 / sqrt(d / 3)`` so that a row has unit
  expected squared norm (RepDistiller's ``ContrastMemory``). After the loss of a batch is computed,
  the rows of its samples are updated ``m <- normalise(0.5 m + 0.5 v)`` with the new embeddings ``v``
  (RepDistiller updates in place; here the bank is replaced by an updated copy, see `ContrastMemory.update`).
- **The critic** of noise-contrastive estimation with ``N`` negatives drawn uniformly from ``M``
  memory rows (noise probability ``1/M``)::

      P(v | a) = exp(a.v / tau) / Z,            tau = 0.07
      h(a, v)  = P(1 | a, v) = P / (P + N / M)
      loss_b   = -( w_b log h(a_b, v_b+) + sum_{k=1..N} log(1 - h(a_b, v_bk-)) )

  (RepDistiller's ``ContrastLoss``, eq. 18 of the paper; ``w_b = 1`` in CRD). ``Z`` is fixed from the
  first batch as ``Z = M * mean(exp(a.v / tau))`` over that batch's positive and negative scores, as
  RepDistiller does, and then never changes. The logarithms are computed as
  ``log h = logsigmoid(a.v/tau - log Z - log(N/M))``, the same quantity as RepDistiller's
  ``log(P / (P + N/M + 1e-7))`` without the 1e-7 (negligible next to ``N/M >= 1/M``).
- **Negatives, mode "exact"**: the positive of a sample is the sample itself; its ``N`` negatives are
  memory rows of *other classes*, drawn **without replacement** whenever at least ``N`` such rows
  exist, and with replacement only otherwise (RepDistiller ``dataset/cifar100.py``:
  ``replace = True if self.k > len(self.cls_negative[target]) else False``).

Choices of kdbench (not in RepDistiller), all made to keep a step free of host synchronisation:

- *Row labels.* RepDistiller knows every row's class from the dataset up front. A method here sees
  only batches, so a ``labels`` buffer ``(n_data,)`` is filled from ``ctx.y`` at ``ctx.index`` as
  batches arrive (before negatives are drawn, so the batch's own rows are already labelled). Rows
  not seen yet (label -1) are *allowed* as negatives: they still hold their random initial vectors,
  which belong to no class, so they are valid noise samples. After the first epoch every row that
  training visits is labelled.
- *Sampling without replacement on the device.* Every anchor draws a uniform random key per memory
  row, rows of the anchor's class get a key above every draw, and the ``N`` smallest keys
  (``topk``) are the negatives: a uniformly random ``N``-subset of the valid rows, in random order,
  with no Python loop and no host read. An anchor with fewer than ``N`` valid rows (tiny or very
  unbalanced data) draws its ``N`` negatives with replacement from its valid rows, as RepDistiller
  does; one with no valid row at all (every row of its class) falls back to any row. The ``B x M``
  keys cost what the ``B x M`` scores below already cost.
- *N is clamped* to ``M - 1`` (the rows other than the sample itself): asking for more negatives than
  the dataset has rows only happens on tiny datasets (tests, ``data.train_subset``) and would make
  the noise ratio ``N / M`` exceed 1.
- *Scores against a whole bank.* Scores are computed as ``(a @ memory.T)`` gathered at the sampled
  rows instead of gathering ``(B, N + 1, d)`` rows first: the same numbers, ``B x M`` floats (25 MiB
  for CIFAR) instead of ``B x (N + 1) x d`` (1 GiB for N = 16384). This is cheaper whenever
  ``M < (N + 1) d``, i.e. for every dataset up to 2 million images.
- *Z without a host read.* ``Z`` is a buffer holding -1 until set; each step computes
  ``where(Z > 0, Z, estimate)`` on the device and writes it back, so the first batch fixes it and no
  ``if`` on a tensor value is needed.

The banks, the labels and ``Z`` are buffers: they are saved in every checkpoint through
``state_dict()`` and restored on resume.

Data-parallel runs (torchrun; `ContrastMemory.enter_data_parallel`): every process holds the whole
banks, and each step all-gathers the batch's indices, labels and embeddings, so every process applies
the updates of the whole global batch, in rank order, as one process training on the global batch
would. ``Z`` is estimated from the global batch's scores (a sum and a count all-reduced). The keys and
the with-replacement draws of the negatives come from a `SharedGenerator` seeded by the run, drawn
for the global batch on every process, each keeping its own slice; its state is part of the
checkpointed method state. Only the draws differ from a single-process run, which keeps using the
global RNG (its results are unchanged): an N-process run equals one process in this mode on the same
global batches (tests/test_distributed_memory.py), to float tolerance (the heads' matrix products run
on smaller batches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdbench import StrictModel, UserError
from kdbench.engine.distributed import Distributed

from .shared import SharedGenerator

__all__ = [
    "UNKNOWN_LABEL",
    "ContrastMemory",
    "ContrastiveConfig",
    "Embed",
    "effective_negatives",
    "estimate_z",
    "memory_init_bound",
    "nce_loss",
    "nce_loss_from_logits",
]

#: Marks a memory row whose class is not known yet (allowed as a negative).
UNKNOWN_LABEL = -1


class ContrastiveConfig(StrictModel):
    """Options shared by ``crd`` and ``gacd`` (RepDistiller's ``feat_dim``, ``nce_k``, ``nce_t``, ``nce_m``)."""

    embed_dim: int = Field(128, gt=0, description="dimension d of the embedding heads and memory banks")
    negatives: int = Field(
        16384, gt=0, description="negatives N per anchor (nce_k); clamped to dataset size - 1 on small datasets"
    )
    tau: float = Field(0.07, gt=0, description="critic temperature (nce_t)")
    momentum: float = Field(0.5, ge=0, lt=1, description="memory update m <- normalise(momentum m + (1 - momentum) v)")


def memory_init_bound(dim: int) -> float:
    """``s = 1 / sqrt(d / 3)``: rows ``U(-s, s)^d`` have expected squared norm ``d s^2 / 3 = 1``."""
    return 1.0 / math.sqrt(dim / 3)


def effective_negatives(requested: int, dataset_size: int) -> int:
    """``min(N, M - 1)``: never more negatives than rows other than the sample itself."""
    if dataset_size < 2:
        raise UserError(f"contrastive distillation needs at least 2 training samples, got {dataset_size}")
    return max(1, min(requested, dataset_size - 1))


def estimate_z(logits: Tensor, n_data: int) -> Tensor:
    """RepDistiller's normaliser ``Z = M * mean(exp(logits))`` over a batch's scores; 0-d, no autograd."""
    return logits.detach().float().exp().mean() * n_data


def nce_loss_from_logits(logits: Tensor, z: Tensor, n_data: int, weights: Tensor | None = None) -> Tensor:
    """Per-sample NCE loss from critic logits; ``logits: (B, 1 + N)`` with the positive in column 0.

    ``logits = a.v / tau``; ``P = exp(logits) / z``; ``h = P / (P + N / M)`` with ``M = n_data``::

        loss_b = -( w_b log h_b0 + sum_{k >= 1} log(1 - h_bk) )      -> (B,)

    ``weights: (B,)`` multiplies the positive term (None: 1). Both logs are logsigmoids of
    ``log(P / (N/M))``, which is exact and stable in float32.
    """
    n = logits.shape[1] - 1
    log_odds = logits.float() - (z.float().log() + math.log(n / n_data))
    positive = F.logsigmoid(log_odds[:, 0])
    negative = F.logsigmoid(-log_odds[:, 1:]).sum(dim=1)
    if weights is not None:
        positive = weights.float() * positive
    return -(positive + negative)


def nce_loss(
    anchor: Tensor,
    positive: Tensor,
    negatives: Tensor,
    z: Tensor,
    n_data: int,
    tau: float,
    weights: Tensor | None = None,
) -> Tensor:
    """`nce_loss_from_logits` on explicit embeddings: ``anchor, positive: (B, d)``, ``negatives: (B, N, d)``."""
    pos = (anchor * positive).sum(dim=1, keepdim=True)
    neg = torch.einsum("bd,bnd->bn", anchor, negatives)
    return nce_loss_from_logits(torch.cat([pos, neg], dim=1) / tau, z, n_data, weights)


class Embed(nn.Module):
    """``f: (B, D_f) -> normalise(W f + b): (B, d)``, RepDistiller's ``Embed`` (linear + L2 norm)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, features: Tensor) -> Tensor:
        # float32 whatever the network's autocast dtype: the critic divides by tau = 0.07 and exponentiates.
        return F.normalize(self.linear(features.flatten(1).float()), dim=1)


class ContrastMemory(nn.Module):
    """Memory banks ``memory_<bank>: (n_data, dim)``, normalisers ``z_<bank>`` and row ``labels: (n_data,)``.

    ``z_<bank>`` is the normaliser of scores *against* that bank (anchors from the other side), -1
    until the first batch fixes it. All buffers: saved and restored through ``state_dict()``.
    """

    labels: Tensor

    def __init__(self, n_data: int, dim: int, banks: Sequence[str], momentum: float):
        super().__init__()
        self.n_data, self.dim, self.momentum = n_data, dim, momentum
        self.banks = tuple(banks)
        bound = memory_init_bound(dim)
        for name in self.banks:
            # Global RNG on the CPU (seeded by the run), then moved: the same init on every device.
            self.register_buffer(f"memory_{name}", torch.rand(n_data, dim).mul_(2 * bound).add_(-bound))
            self.register_buffer(f"z_{name}", torch.tensor(-1.0))
        self.register_buffer("labels", torch.full((n_data,), UNKNOWN_LABEL, dtype=torch.int64))
        # Set by enter_data_parallel; None: one process drawing from the global RNG (the default).
        self.world: Distributed | None = None

    def enter_data_parallel(self, world: Distributed, seed: int) -> None:
        """Follow the global batch of ``world``: all-gather every update, draw negatives from a generator
        shared by every process (a submodule, so its state is checkpointed). With ``Distributed()``
        (one process) the same draws as N processes on the same global batches."""
        self.world = world
        self.shared_rng = SharedGenerator(seed, self.labels.device)

    def _gather(self, tensor: Tensor) -> Tensor:
        """The global batch's rows of ``tensor: (B, ...)`` (itself in a single process)."""
        return tensor if self.world is None else self.world.all_gather(tensor)

    def bank(self, name: str) -> Tensor:
        """The ``(n_data, dim)`` memory of one side."""
        bank: Tensor = getattr(self, f"memory_{name}")
        return bank

    def z(self, name: str) -> Tensor:
        """The 0-d normaliser of scores against ``name`` (-1 while unset)."""
        z: Tensor = getattr(self, f"z_{name}")
        return z

    @torch.no_grad()
    def observe_labels(self, index: Tensor, y: Tensor) -> None:
        """Record the classes of a batch's rows: ``index, y: (B,)`` (of the global batch when data-parallel)."""
        self.labels.index_copy_(0, self._gather(index), self._gather(y).to(self.labels.dtype))

    @torch.no_grad()
    def sample_negatives(self, y: Tensor, n: int, num_classes: int) -> Tensor:
        """``(B, n)`` row indices, for each anchor drawn uniformly among rows whose label is not ``y_b``.

        Without replacement when at least ``n`` such rows exist (RepDistiller's ``np.random.choice(...,
        replace=False)``): the rows with the ``n`` smallest of ``B x M`` uniform keys, the anchor's own
        class keyed above every draw. Anchors with fewer valid rows (``0 < v_b < n``) take ``n`` draws
        with replacement from their ``v_b`` valid rows; with none, any row (see the module docstring).
        ``num_classes`` is accepted for interface stability; the draw does not need it.
        """
        del num_classes
        keys, uniforms = self._draws(len(y), n, y.device)
        same_class = self.labels[None, :] == y[:, None]  # (B, M)
        keys = keys.masked_fill_(same_class, 2.0)
        order = keys.topk(n, dim=1, largest=False, sorted=True).indices  # valid rows first, random order
        valid = self.n_data - same_class.sum(dim=1, keepdim=True)  # (B, 1)
        # With replacement among the first v_b entries of `order`, which are then all the valid rows.
        slots = (uniforms * valid.clamp_min(1)).long().clamp_max(n - 1)
        with_replacement = order.gather(1, slots)
        use_order = (valid >= n) | (valid == 0)
        return torch.where(use_order, order, with_replacement)

    def _draws(self, b: int, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Uniform keys ``(b, M)`` and uniforms ``(b, n)`` for `sample_negatives`.

        One process: the global RNG, keys first (the draws of kdbench <= 0.1). Data-parallel: the
        shared generator draws both for the whole global batch on every process (the same numbers
        everywhere), and this process keeps the rows of its slice of the batch.
        """
        if self.world is None:
            return torch.rand((b, self.n_data), device=device), torch.rand((b, n), device=device)
        sizes = self.world.all_gather_sizes(b, device)
        start, total = sum(sizes[: self.world.rank]), sum(sizes)
        generator = self.shared_rng.generator
        keys = torch.rand((total, self.n_data), generator=generator, device=generator.device)
        uniforms = torch.rand((total, n), generator=generator, device=generator.device)
        return keys[start : start + b].to(device), uniforms[start : start + b].to(device)

    def logits(self, name: str, anchor: Tensor, rows: Tensor, tau: float) -> Tensor:
        """``anchor_b . memory[rows_bk] / tau``: ``anchor: (B, dim)``, ``rows: (B, K)`` -> ``(B, K)``.

        Scored against the whole bank and gathered, cheaper than gathering ``(B, K, dim)`` rows for
        ``M < K * dim``; autograd reaches ``anchor`` only (the bank is a buffer).
        """
        return (anchor.float() @ self.bank(name).t()).gather(1, rows) / tau

    @torch.no_grad()
    def normaliser(self, name: str, logits: Tensor, *, fix: bool = True) -> Tensor:
        """``Z``: the stored value once set, else `estimate_z` of ``logits``; ``fix`` stores it (first batch)."""
        stored = self.z(name)
        z = torch.where(stored > 0, stored, self.estimate_z(logits))
        if fix:
            stored.copy_(z)
        return z

    @torch.no_grad()
    def estimate_z(self, logits: Tensor) -> Tensor:
        """`estimate_z` over the global batch's scores: the mean of ``exp(logits)`` over every process
        when data-parallel (a sum and a count all-reduced), as one process scoring the global batch."""
        if self.world is None or not self.world.enabled:
            return estimate_z(logits, self.n_data)
        exp = logits.detach().float().exp()
        totals = self.world.sum(torch.stack([exp.sum(), exp.new_tensor(float(exp.numel()))]))
        return totals[0] / totals[1] * self.n_data

    @torch.no_grad()
    def update(self, name: str, index: Tensor, values: Tensor) -> None:
        """``memory[index] <- normalise(m * memory[index] + (1 - m) * values)``; ``values: (B, dim)``.

        Out of place: the buffer is replaced by an updated copy, because this step's scores saved the
        old bank for their backward pass (an in-place write would invalidate it). The copy costs one
        pass over the bank (25 MiB for CIFAR), far less than the step. Data-parallel: the rows of the
        whole global batch (all-gathered), on every process.
        """
        index, values = self._gather(index), self._gather(values.detach().float())
        bank = self.bank(name)
        rows = bank.index_select(0, index).mul_(self.momentum).add_(values.detach().float(), alpha=1 - self.momentum)
        setattr(self, f"memory_{name}", bank.index_copy(0, index, F.normalize(rows, dim=1)))
