"""The evaluation attacks by name, for ``kdbench list`` and ``kdbench show`` (they are not registry entries).

`kdbench.evaluation.evaluate` runs them; ``eval.attacks`` in a recipe and ``kdbench eval --attacks``
name them. The text says what each computes and at what cost, so a user can pick a cheap set while
developing and the full set for a number to report.
"""

from __future__ import annotations

__all__ = ["EVALUATION_ATTACKS", "describe_evaluation_attack", "evaluation_attack_name"]

#: name -> (one-line summary, longer description).
EVALUATION_ATTACKS: dict[str, tuple[str, str]] = {
    "clean": ("accuracy on the unperturbed test images (always evaluated)", "No attack: argmax(f(x)) == y."),
    "fgsm": (
        "one signed-gradient step of size eps (Goodfellow et al. 2015), L-inf only",
        "x' = clip(x + eps * sign(grad_x CE(f(x), y))). Cheap and weak: a sanity check, not a robustness claim.",
    ),
    "pgd<k>": (
        "k steps of PGD on the cross-entropy, step max(eps/4, 2.5*eps/k), uniform start (Madry et al. 2018)",
        "pgd20 is the usual report (step 2/255 at 8/255); any k from 1 to 10000 is accepted (pgd50, pgd100, ...). "
        "eval.step_size or --step-size pins the step.",
    ),
    "cw": (
        "PGD-30 on the CW margin max_{j!=y} z_j - z_y (Carlini & Wagner 2017), the CW-inf of RSLAD tables",
        "Step max(eps/4, 2.5*eps/30) (2/255 at 8/255), uniform start; eval.step_size pins it.",
    ),
    "autoattack": (
        "standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square (Croce & Hein 2020), through pyautoattack",
        "The number RobustBench ranks by and the leaderboard's primary metric. The most expensive by far "
        "(thousands of forward passes per robust image); needs `pip install pyautoattack`.",
    ),
    "autoattack_custom": (
        "AutoAttack's 'custom' version with APGD-CE + APGD-T only: cheaper, for development",
        "pyautoattack's version='custom' with attacks ['apgd-ce', 'apgd-t'] (standard settings for both). "
        "Stored as robust.autoattack_custom in result.json, never as 'autoattack', and never ranked as "
        "AutoAttack: an upper bound on standard AutoAttack accuracy (FAB-T and Square can only lower it).",
    ),
}


def evaluation_attack_name(name: str) -> str | None:
    """The catalog key of ``name`` (``pgd20`` -> ``pgd<k>``), or None when it is no evaluation attack."""
    name = name.strip().lower()
    if name in EVALUATION_ATTACKS:
        return name
    if name.startswith("pgd") and name[3:].isdigit():
        return "pgd<k>"
    return None


def describe_evaluation_attack(name: str) -> str:
    """``kdbench show``'s text for an evaluation attack (``name`` must be one: see `evaluation_attack_name`)."""
    key = evaluation_attack_name(name)
    assert key is not None
    summary, details = EVALUATION_ATTACKS[key]
    return (
        f"evaluation attack {name}  (kdbench.evaluation; eval.attacks in recipes, kdbench eval --attacks)\n\n"
        f"{summary}.\n\n{details}"
    )
