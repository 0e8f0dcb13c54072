"""``kdbench plugins check``: load every registered component and report the ones that fail.

Registries load plugins lazily, so a broken third-party plugin only surfaces when a recipe names it.
This command loads every entry point of every registry (models, datasets, attacks, methods) up front
and prints one line per component::

    ok      methods/kd  (kdbench 0.1.0, kdbench_plugins.kd:KD)
    FAILED  methods/bad  (broken-plugin 0.3, bad_mod:Good): plugin broken-plugin 0.3 failed to load ...

It exits with 1 when any component fails (import errors, missing attributes, wrong types, a name
registered by two distributions) and 0 otherwise. ``KDBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` limits it,
like everything else, to kdbench's own distribution.
"""

from __future__ import annotations

import argparse
from typing import Any

from kdbench._errors import PluginError
from kdbench._registry import Entry, Registry, registries

__all__ = ["CheckLine", "add_parser", "check_plugins", "cmd_plugins_check"]

#: One reported component: (ok, "kind/name", provider and target, error message or "").
CheckLine = tuple[bool, str, str, str]


def add_parser(subparsers: Any) -> None:
    """Add the ``plugins`` sub-command (the `kdbench.cli.COMMAND_MODULES` convention)."""
    p = subparsers.add_parser("plugins", help="check that every installed plugin loads")
    actions = p.add_subparsers(dest="plugins_action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="load every registered component; exit 1 if any fails",
        description="Load every entry point of every registry and print one line per component.",
    )
    check.set_defaults(handler=cmd_plugins_check)


def _where(entry: Entry[Any]) -> str:
    provider = f"{entry.distribution} {entry.version}".strip()
    return f"{provider}, {entry.target}"


def check_plugins(regs: dict[str, Registry[Any]] | None = None) -> list[CheckLine]:
    """Load every entry of every registry; one `CheckLine` per component, in kind and name order."""
    lines: list[CheckLine] = []
    for kind, reg in (regs or registries()).items():
        for entry in reg.entries():
            try:
                reg.get(entry.name)
            except PluginError as exc:
                # One line per component, whatever the plugin's exception text holds.
                message = " ".join(str(exc).split())
                lines.append((False, f"{kind}/{entry.name}", _where(entry), message))
            else:
                lines.append((True, f"{kind}/{entry.name}", _where(entry), ""))
    return lines


def cmd_plugins_check(args: argparse.Namespace) -> int:
    lines = check_plugins()
    width = max((len(name) for _, name, _, _ in lines), default=0)
    for ok, name, where, error in lines:
        status = "ok    " if ok else "FAILED"
        print(f"{status}  {name:<{width}}  ({where})" + ("" if ok else f": {error}"))
    failed = sum(not ok for ok, *_ in lines)
    print(f"{len(lines)} components, {failed} failed")
    return 1 if failed else 0
