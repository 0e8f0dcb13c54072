"""Registries of components, filled lazily from Python entry points.

Built-in and third-party components are found the same way: an entry point in one of the groups
``kdbench.models``, ``kdbench.datasets``, ``kdbench.attacks`` and ``kdbench.methods`` (see
pyproject.toml). Nothing is imported until a recipe or a command names it, so a broken plugin breaks
only the recipes that use it; the error names its distribution, version and entry point. A loaded
component is validated before it is used (`kdbench._plugin_checks`: strict Config, required methods,
typed class attributes); one that fails is refused whole.

A name may carry a variant after a colon (``timm:resnet50``): the registry resolves the part before
the colon and hands the rest to the component.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kdbench._errors import PluginError, UserError, did_you_mean
from kdbench._plugin_checks import component_problems

if TYPE_CHECKING:
    from kdbench.attacks.base import Attack
    from kdbench.data.base import DatasetSource
    from kdbench.method import Method
    from kdbench.models.base import Network

__all__ = ["ATTACKS", "DATASETS", "METHODS", "MODELS", "Entry", "Registry", "registries"]

#: The base class of one kind of component; a registry holds subclasses of it (classes, not instances).
T = TypeVar("T")

#: Set to 1 to load only kdbench's own distribution; third-party entry points are then ignored.
DISABLE_AUTOLOAD_ENV = "KDBENCH_DISABLE_PLUGIN_AUTOLOAD"
CORE_DISTRIBUTION = "kdbench"


@dataclass
class Entry(Generic[T]):
    """One registered name: where it comes from and, once loaded, the component class."""

    name: str
    distribution: str
    version: str
    target: str  # "module:attr" of the entry point, or "<python>" for in-process registration
    entry_point: metadata.EntryPoint | None = None
    obj: type[T] | None = None
    conflicts: list[Entry[T]] = field(default_factory=list)

    @property
    def provider(self) -> str:
        return f"{self.distribution} {self.version}"


class Registry(Generic[T]):
    """Names -> component classes of one kind, discovered from the entry-point group ``kdbench.<kind>``.

    ``base`` is the class every component must be a subclass of (``Registry[Method]`` holds subclasses
    of `Method`, and `get` returns ``type[Method]``); a plugin registering anything else is reported
    instead of failing later in the middle of a run.
    """

    def __init__(self, kind: str, base: type[T]):
        self.kind = kind
        self.group = f"kdbench.{kind}"
        self.base = base
        self._entries: dict[str, Entry[T]] | None = None

    # discovery --------------------------------------------------------------------------------

    def _discover(self) -> dict[str, Entry[T]]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, Entry[T]] = {}
        only_core = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
        for ep in metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "<unknown>"
            version = dist.version if dist is not None else "?"
            if only_core and dist_name != CORE_DISTRIBUTION:
                continue
            entry: Entry[T] = Entry(ep.name, dist_name, version, ep.value, entry_point=ep)
            if ep.name in entries:
                if entries[ep.name].distribution == dist_name and entries[ep.name].target == ep.value:
                    continue  # the same distribution seen twice on sys.path
                entries[ep.name].conflicts.append(entry)
            else:
                entries[ep.name] = entry
        self._entries = entries
        return entries

    def register(self, name: str, obj: type[T], *, distribution: str = "<python>") -> type[T]:
        """Register class ``obj`` under ``name`` from Python code (tests, notebooks). Returns ``obj``."""
        obj = self._check_type(name, obj, distribution)
        entries = self._discover()
        if name in entries:
            raise PluginError(
                f"{self.kind} name {name!r} is provided by both {entries[name].provider} and {distribution}; "
                "rename one of them"
            )
        entries[name] = Entry(name, distribution, "", "<python>", obj=obj)
        return obj

    def unregister(self, name: str) -> None:
        """Forget a name registered with `register` (used by tests)."""
        self._discover().pop(name, None)

    # lookup -------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._discover())

    def entries(self) -> Iterator[Entry[T]]:
        entries = self._discover()
        for name in sorted(entries):
            yield entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and split_variant(name)[0] in self._discover()

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name`` (without loading it); unknown names get close matches."""
        base_name, _ = split_variant(name)
        entries = self._discover()
        if base_name not in entries:
            raise UserError(f"unknown {self.kind[:-1]} {base_name!r}; {did_you_mean(base_name, entries)}")
        return entries[base_name]

    def get(self, name: str) -> type[T]:
        """Load and return the component class registered as ``name`` (a ``:variant`` suffix is ignored)."""
        entry = self.entry(name)
        if entry.conflicts:
            providers = ", ".join(e.provider + f" ({e.target})" for e in [entry, *entry.conflicts])
            raise PluginError(
                f"{self.kind[:-1]} {entry.name!r} is registered by more than one distribution: {providers}; "
                "uninstall one of them"
            )
        if entry.obj is None:
            entry.obj = self._load(entry)
        return entry.obj

    def _load(self, entry: Entry[T]) -> type[T]:
        assert entry.entry_point is not None
        try:
            obj = entry.entry_point.load()
        except BaseException as exc:  # SyntaxError, ImportError, AttributeError, anything a plugin raises
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise PluginError(
                f"plugin {entry.provider} failed to load {self.group} entry point "
                f"'{entry.name} = {entry.target}': {type(exc).__name__}: {exc}"
            ) from exc
        return self._check_type(entry.name, obj, f"{entry.provider} ('{entry.name} = {entry.target}')")

    def _check_type(self, name: str, obj: object, provider: str) -> type[T]:
        """``obj`` itself, once it is known to be a valid subclass of ``base``; a `PluginError` otherwise."""
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise PluginError(
                f"{self.group} entry point {name!r} from {provider} is {obj!r}, "
                f"not a subclass of {self.base.__module__}.{self.base.__qualname__}"
            )
        problems = component_problems(obj, self.base)
        if problems:  # refused whole, at load time, rather than half-used in the middle of a run
            raise PluginError(f"{self.kind[:-1]} {name!r} from {provider} is not a valid plugin: {'; '.join(problems)}")
        return obj


def split_variant(name: str) -> tuple[str, str | None]:
    """``"timm:resnet50"`` -> ``("timm", "resnet50")``; ``"kd"`` -> ``("kd", None)``."""
    base, sep, variant = name.partition(":")
    return base, (variant if sep else None)


def _make_registries() -> tuple[Registry[Network], Registry[DatasetSource], Registry[Attack], Registry[Method]]:
    # Imported here so that the interfaces can import this module without a cycle.
    from kdbench.attacks.base import Attack
    from kdbench.data.base import DatasetSource
    from kdbench.method import Method
    from kdbench.models.base import Network

    return (
        Registry("models", Network),
        Registry("datasets", DatasetSource),
        Registry("attacks", Attack),
        Registry("methods", Method),
    )


MODELS, DATASETS, ATTACKS, METHODS = _make_registries()


def registries() -> dict[str, Registry[Any]]:
    """All registries by kind name (of different kinds, hence ``Registry[Any]``)."""
    return {r.kind: r for r in (MODELS, DATASETS, ATTACKS, METHODS)}
