"""A third-party kdbench plugin: the ``feature_mse`` method (FitNets-style feature distillation).

Registered through the ``kdbench.methods`` entry point in this package's pyproject.toml.
"""

from kdbench_example_plugin.feature_mse import FeatureMSE, FeatureMSEConfig, projected_feature_mse

__all__ = ["FeatureMSE", "FeatureMSEConfig", "projected_feature_mse"]
