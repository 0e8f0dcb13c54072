"""A third-party kdbench plugin: the ``iad`` method (Introspective Adversarial Distillation).

Registered through the ``kdbench.methods`` entry point in this package's pyproject.toml.
"""

from kdbench_example_plugin.iad import IAD, IADConfig, per_sample_kl, teacher_trust

__all__ = ["IAD", "IADConfig", "per_sample_kl", "teacher_trust"]
