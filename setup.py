"""Packaging glue that pyproject.toml cannot express: plugins/<name>/ installs as kdbench_plugins.<name>.

Adding a first-party method therefore needs no edit here, only its folder and one entry-point line.
"""

from setuptools import find_packages, setup

plugin_packages = ["kdbench_plugins"] + [f"kdbench_plugins.{p}" for p in find_packages("plugins")]
setup(
    packages=find_packages(include=["kdbench", "kdbench.*"]) + plugin_packages,
    package_dir={"kdbench_plugins": "plugins"},
)
