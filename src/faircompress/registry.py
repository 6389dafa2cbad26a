"""One name -> object registry for every kind of plug-in (datasets, models, compression steps, group
metrics), with one discovery mechanism.

A registry knows the package folder its plug-ins live in. The first time it is asked for a name, it
imports every public module of that folder (and any module that an installed distribution announces
under the entry-point group ``faircompress.<kind>``); each module registers itself on import. So a new
plug-in is one new file dropped into its folder: nothing else imports it by name.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class PluginError(ImportError):
    """A plug-in module that cannot be imported; the message names the module."""


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str | None = None, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._discovered = package is None and entry_point_group is None

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self.discover()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise KeyError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def check(self, name: str) -> str:
        """``name`` if it is registered, else a ValueError naming the known ones (for config validators)."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names()) or 'none'})")
        return name

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._items[name]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def discover(self) -> None:
        """Import the plug-in folder's modules and the announced entry points (once)."""
        if self._discovered:
            return
        self._discovered = True  # set first: a plug-in may look names up while it is imported
        for module in plugin_modules(self.package) if self.package else []:
            _import(module)
        if self.entry_point_group:
            for ep in entry_points(group=self.entry_point_group):
                _import(ep.module)


def plugin_modules(package: str) -> list[str]:
    """Dotted names of a package's public modules (those not starting with '_')."""
    pkg = importlib.import_module(package)
    return [f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise PluginError(f"plug-in module {module} cannot be imported: {e}") from e
