"""Registries: one per kind of pluggable thing (rank objectives, question formats, retriever
backends, training steps, stages, passage utilities), each a name → entry map.

A new kind of thing is one module plus one registry entry, never edits across the tree:
built-in entries register themselves with the decorator when their module is imported, and
each registry knows the modules that hold its built-ins (imported on first use, so that
listing the names never imports more than it must). Code outside the package registers the
same way, before the config is loaded or the command line is parsed.

>>> COLOURS = Registry("colour")
>>> @COLOURS.register("red")
... def red():
...     return "#f00"
>>> COLOURS.get("red")(), COLOURS.names()
('#f00', ('red',))
>>> COLOURS.get("blue")
Traceback (most recent call last):
...
jmlr.errors.ConfigError: unknown colour 'blue' (known: red)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from jmlr.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; ``kind`` names it in error messages ("rank objective")."""

    def __init__(self, kind: str, builtin_modules: Sequence[str] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._builtin_modules = list(builtin_modules)
        self._loaded = not self._builtin_modules

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True           # first, so that a module importing us does not loop
            for module in self._builtin_modules:
                importlib.import_module(module)

    def register(self, name: str, entry: T | None = None, *, replace: bool = False
                 ) -> Callable[[T], T] | T:
        """Add ``entry`` under ``name``; used bare (``register("x", obj)``) or as a
        decorator (``@register("x")``). A second entry under a taken name is an error unless
        ``replace`` (tests and plug-ins that override a built-in say so explicitly)."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be letters, digits, '_' or '-'")

        def add(value: T) -> T:
            if name in self._entries and not replace and self._entries[name] is not value:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register toys clean up with this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry, or a ConfigError listing the known names."""
        self._load_builtins()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order (built-ins first)."""
        self._load_builtins()
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load_builtins()
        return iter(list(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


# --------------------------------------------------------------------------- the registries

_BY_KIND: dict[str, Registry] = {}


def _registry(kind: str, *builtin_modules: str) -> Registry:
    found = _BY_KIND[kind] = Registry(kind, builtin_modules)
    return found


def by_kind(kind: str) -> Registry:
    """The registry of one kind ("rank objective", ...), as config fields name them."""
    if kind not in _BY_KIND:
        raise KeyError(f"no registry of kind {kind!r} (known: {', '.join(_BY_KIND)})")
    return _BY_KIND[kind]


# Each registry lists the modules that hold its built-in entries (imported on first use).
RANK_OBJECTIVES = _registry("rank objective", "jmlr.training.rank_objectives")
UTILITIES = _registry("utility", "jmlr.training.utilities")
QUESTION_FORMATS = _registry("question format", "jmlr.data.formats", "jmlr.data.hub_formats")
RETRIEVER_BACKENDS = _registry("retriever backend", "jmlr.retrieval.backends")
TRAINING_STEPS = _registry("training step", "jmlr.training.steps")
STAGES = _registry("stage", "jmlr.stages", "jmlr.stages_measure", "jmlr.stages_teacher",
                   "jmlr.stages_adapt", "jmlr.stages_merge", "jmlr.stages_align")
# Config sections beyond the built-in ones, added by plug-in stages and steps.
CONFIG_SECTIONS = _registry("config section", "jmlr.training.contrastive_data",
                            "jmlr.retrieval.synthesis", "jmlr.retrieval.query_prompts",
                            "jmlr.merging.config", "jmlr.alignment.config",
                            "jmlr.training.distill_config")
