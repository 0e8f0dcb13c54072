"""First-party plugins of kdbench, one sub-package per method, installed as ``kdbench_plugins``.

They register through the same entry-point groups as any third-party package (see pyproject.toml);
the core never imports them.
"""
