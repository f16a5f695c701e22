"""How config values are read: YAML values coerced to the declared field types, dotted
overrides applied at any depth, registry names and per-entry parameters checked.

Field kinds beyond plain scalars and lists (declared in ``field(metadata=...)``):

- ``choices``: a fixed set of allowed values;
- ``registry``: a name that a registry knows (``jmlr.registry``), the allowed names read
  from the registry itself, never copied;
- :class:`Component`: a registry entry chosen by name *with its own parameters*, written
  ``objective: pairwise`` or ``objective: {name: pairwise, tie_tolerance: 0.2}``; each entry
  declares its parameters as a dataclass (``entry.params``), validated like a section;
- nested dataclasses and lists of dataclasses (records with their own fields and checks).

A dataclass may define ``validate(self, key)`` that raises ConfigError for values its types
cannot rule out; it runs after every override is applied.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from jmlr.errors import ConfigError


@dataclass
class Component:
    """A registry entry by name plus its parameters (an instance of ``entry.params``, or None
    for an entry that takes none)."""

    name: str
    params: Any = None

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self.params) if self.params is not None else {}
        return {"name": self.name, **values}


def registry_for(kind: str) -> Any:
    from jmlr import registry

    return registry.by_kind(kind)


def _params_type(kind: str, name: str, key: str) -> type | None:
    try:
        entry = registry_for(kind).get(name)
    except ConfigError as err:
        raise ConfigError(f"config key '{key}': {err}") from None
    return getattr(entry, "params", None)


def make_component(kind: str, value: Any, key: str, current: Component | None = None) -> Component:
    """A Component from YAML: a name (default parameters), or a mapping with ``name`` and
    parameters; a mapping without ``name`` changes the parameters of ``current``."""
    if isinstance(value, Component):
        return value
    if isinstance(value, str):
        name, values = value, {}
    elif isinstance(value, dict):
        values = dict(value)
        name = values.pop("name", None) or (current.name if current else None)
        if not isinstance(name, str):
            raise ConfigError(f"config key '{key}': needs a 'name' ({_known(kind)})")
        if current is not None and name == current.name and current.params is not None:
            values = {**dataclasses.asdict(current.params), **values}
    else:
        raise ConfigError(f"config key '{key}': expected a {kind} name or a mapping, got {value!r}")
    params_type = _params_type(kind, name, key)
    if params_type is None:
        if values:
            raise ConfigError(f"config key '{key}': {kind} {name!r} takes no parameters "
                              f"(got {', '.join(values)})")
        return Component(name, None)
    params = params_type()
    apply_mapping(params, values, key)
    return Component(name, params)


def _known(kind: str) -> str:
    return "known: " + ", ".join(registry_for(kind).names())


def coerce(value: Any, hint: Any, key: str, meta: dict[str, Any] | None = None,
           current: Any = None) -> Any:
    """Convert a YAML value to the field's declared type, or raise ConfigError."""
    meta = meta or {}
    origin = typing.get_origin(hint)
    if hint is Component:
        return make_component(meta["registry"], value, key, current)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else coerce(value, args[0], key, meta)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [coerce(v, item, f"{key}.{i}", meta) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): coerce(v, item, f"{key}.{k}", meta) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of "
                              f"{', '.join(f.name for f in dataclasses.fields(hint))}, got {value!r}")
        record = current if current is not None else hint()
        apply_mapping(record, value, key)
        return record
    return _scalar(value, hint, key)


def _scalar(value: Any, hint: Any, key: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        hint_text = " (quote text that starts with '{' or '[')" if isinstance(value, dict | list) else ""
        raise ConfigError(f"config key '{key}': expected text, got {value!r}{hint_text}")
    raise ConfigError(f"config key '{key}': unsupported type {hint}")


def _check_allowed(value: Any, meta: dict[str, Any], key: str) -> None:
    """``choices`` / ``registry`` membership, for a value or each item of a list."""
    items = value if isinstance(value, list) else [value]
    choices = meta.get("choices")
    kind = meta.get("registry")
    for item in items:
        if isinstance(item, Component):
            continue
        if choices and item not in choices:
            raise ConfigError(f"config key '{key}': {item!r} is not one of {', '.join(choices)}")
        if kind and item not in meta.get("also", ()) and item not in registry_for(kind):
            extra = [*meta.get("also", ()), *registry_for(kind).names()]
            raise ConfigError(f"config key '{key}': {item!r} is not a known {kind} "
                              f"(known: {', '.join(extra)})")


def set_field(record: Any, name: str, value: Any, key: str) -> None:
    """Coerce ``value`` to the field ``name`` of dataclass ``record`` and set it."""
    fields = {f.name: f for f in dataclasses.fields(record)}
    if name not in fields:
        owner = key.rsplit(".", 1)[0]
        raise ConfigError(f"unknown config key '{key}' (known in '{owner}': {', '.join(fields)})")
    meta = dict(fields[name].metadata)
    hint = typing.get_type_hints(type(record))[name]
    coerced = coerce(value, hint, key, meta, current=getattr(record, name))
    _check_allowed(coerced, meta, key)
    setattr(record, name, coerced)


def apply_mapping(record: Any, values: dict[str, Any], prefix: str) -> None:
    for name, value in values.items():
        set_field(record, str(name), value, f"{prefix}.{name}")


def apply_path(record: Any, parts: list[str], value: Any, prefix: str) -> None:
    """Set the value at a dotted path below ``record`` (a dataclass): through nested
    dataclasses, Components (their ``name`` or a parameter), mappings and list indices."""
    head, rest = parts[0], parts[1:]
    key = f"{prefix}.{head}"
    if not rest:
        set_field(record, head, value, key)
        return
    fields = {f.name: f for f in dataclasses.fields(record)}
    if head not in fields:
        raise ConfigError(f"unknown config key '{key}' (known in '{prefix}': {', '.join(fields)})")
    current = getattr(record, head)
    meta = dict(fields[head].metadata)
    if isinstance(current, Component):
        change = {rest[0]: value} if len(rest) == 1 else None
        if change is None:
            raise ConfigError(f"config key '{key}.{'.'.join(rest)}': a {meta['registry']} "
                              "parameter has no sub-keys")
        setattr(record, head, make_component(meta["registry"], change, key, current))
    elif dataclasses.is_dataclass(current):
        apply_path(current, rest, value, key)
    elif isinstance(current, dict) and len(rest) == 1:
        hint = typing.get_type_hints(type(record))[head]
        _, item = typing.get_args(hint)
        current[rest[0]] = coerce(value, item, f"{key}.{rest[0]}", meta)
    elif isinstance(current, dict):
        # deeper keys of a mapping: plain nested mappings, checked by the owner's validate()
        inner = current.get(rest[0])
        inner = to_plain(inner) if isinstance(inner, Component) else dict(inner or {})
        inner.pop("name", None)
        nested: Any = inner
        for part in rest[1:-1]:
            nested = nested.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"config key '{key}.{'.'.join(rest)}': {part!r} is not a mapping")
        nested[rest[-1]] = value
        current[rest[0]] = inner
    elif isinstance(current, list) and rest[0].isdigit() and int(rest[0]) < len(current):
        item = current[int(rest[0])]
        if len(rest) > 1 and dataclasses.is_dataclass(item):
            apply_path(item, rest[1:], value, f"{key}.{rest[0]}")
        else:
            hint = typing.get_args(typing.get_type_hints(type(record))[head])[0]
            current[int(rest[0])] = coerce(value, hint, f"{key}.{rest[0]}", meta)
    else:
        raise ConfigError(f"config key '{key}' has no sub-key '{'.'.join(rest)}'")


def validate_tree(record: Any, prefix: str) -> None:
    """Run ``validate(key)`` of every dataclass below ``record`` (itself included)."""
    if isinstance(record, Component):
        if record.params is not None:
            validate_tree(record.params, prefix)
        return
    if not dataclasses.is_dataclass(record):
        if isinstance(record, list):
            for i, item in enumerate(record):
                validate_tree(item, f"{prefix}.{i}")
        return
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, Component) and value.params is None and "registry" in f.metadata:
            # a default written by name alone: give it its entry's default parameters
            value = make_component(f.metadata["registry"], value.name, f"{prefix}.{f.name}")
            setattr(record, f.name, value)
        validate_tree(value, f"{prefix}.{f.name}")
    check = getattr(record, "validate", None)
    if callable(check):
        check(prefix)


def to_plain(value: Any) -> Any:
    """Dataclasses, Components, lists and dicts as plain YAML-ready values."""
    if isinstance(value, Component):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value
