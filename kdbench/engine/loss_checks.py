"""What the engine refuses in a method's loss terms: a broken contract at the first step, and NaN/inf.

`check_loss_terms` runs once, on the first step's terms, before any optimiser step: `Method.loss` must
return a non-empty dict of named scalar floating-point tensors with autograd history.
`check_finite` runs at the trainer's sync points and before every checkpoint, on the per-term
finiteness flags `kdbench.engine.epoch_totals.EpochTotals` keeps on the device (no host sync per
step): a non-finite term stops the run without saving, naming the term, the step and the last good
checkpoint.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kdbench._errors import PluginError, UserError
from kdbench.engine.checkpoint import CheckpointStore
from kdbench.engine.epoch_totals import EpochTotals

__all__ = ["NonFiniteLossError", "check_finite", "check_loss_terms"]


class NonFiniteLossError(UserError):
    """A loss term became NaN or infinite; the run stops and keeps its last good checkpoint."""


def check_finite(totals: EpochTotals, epoch: int, method_name: str, store: CheckpointStore) -> None:
    """Raise `NonFiniteLossError` when a loss term of this epoch was NaN or infinite at some step."""
    bad = totals.first_bad_step()
    if bad is None:
        return
    step, names = bad
    last = store.positions()
    good = f"last good checkpoint: {store.path(last[0])}" if last else "no checkpoint was written yet"
    raise NonFiniteLossError(
        f"non-finite loss term {', '.join(names)!s} of method {method_name} "
        f"at epoch {epoch + 1}, step {step}; stopped without saving; {good}"
    )


def check_loss_terms(terms: Any, method_name: str) -> None:
    """Refuse what `Method.loss` may not return, in one line naming the method and the term.

    The contract: a non-empty dict of name -> scalar floating-point tensor with autograd history. A
    vector would be summed by nobody (stack fails or, worse, broadcasts), a Python float or a detached
    tensor trains nothing, and an empty dict has nothing to minimise.
    """
    where = f"method {method_name}"
    fix = "return a dict of named scalar tensors computed from the step context (e.g. loss.mean())"
    if not isinstance(terms, dict) or not terms:
        got = "an empty dict" if isinstance(terms, dict) else type(terms).__name__
        raise PluginError(f"{where}: loss() returned {got}, not named loss terms; {fix}; stopped before any step")
    for name, value in terms.items():
        problem = None
        if not isinstance(value, Tensor):
            problem = f"is a {type(value).__name__}, not a tensor"
        elif value.dim() != 0:
            problem = f"has shape {tuple(value.shape)}, not a scalar"
        elif not value.is_floating_point():
            problem = f"has dtype {value.dtype}, not a floating-point type"
        elif not value.requires_grad:
            problem = "has no gradient (computed under torch.no_grad() or detached)"
        if problem is not None:
            raise PluginError(f"{where}: loss term {name!r} {problem}; {fix}; stopped before any optimiser step")
