"""The config schema (models.py) read as data: every table and key with its
type, default, range, description and example. `bkd config sample` and
`bkd init` (sample.py), the bkd.toml(5) man page (scripts/clidocs.py), and
check-config's "did you mean" and file checks all read the models through
here, so they cannot drift apart."""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import tomli_w
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from . import models as m


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: str  # as TOML; "" when required
    range: str
    description: str
    example: str = ""  # as TOML: the value its table's example() gives it, if any

    @property
    def required(self) -> bool:
        return self.default == ""


@dataclass(frozen=True)
class Table:
    """A table of the config, its keys and the tables inside it."""

    name: str  # "" for the top level, "rpc", "host"; "schedule" inside [[host]]
    description: str
    keys: tuple[Key, ...] = ()
    tables: tuple[Table, ...] = ()  # inside it, in the schema's order
    array: bool = False  # an array of tables ([[host]]): any number of them
    inherits: str = ""  # a host's override: any key of this top-level table, every one optional
    # A tagged array ([[notify]]): the keys above are those every member has;
    # each member (by the value of its tag) with all of its keys.
    tag: str = ""
    members: tuple[tuple[str, Table], ...] = ()


def toml_value(value) -> str:
    """A JSON-mode value as TOML, on one line (tomli-w's escapes for a scalar)."""
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").removesuffix("\n")


def _is_section(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, m.Section)


def _optional_of(kind):
    """X for Optional[X], else None."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is typing.Union and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None))
    return None


def _named_types():
    """The schema's named types, known by their validators, and what to call them."""
    return [(m.OptionalDuration, 'duration or ""'), (m.Duration, "duration"),
            (m.OptionalPath, 'absolute path or ""'), (m.AbsolutePath, "absolute path"), (m.Url, "http(s) URL"),
            (m.HostName, "host name"), (m.SinkName, "sink name"), (m.ReplicaName, "replica name"),
            (m.TimeOfDay, "time of day, HH:MM"),
            (m.AlertKind, "alert kind (" + ", ".join(m.ALERT_KINDS) + ")")]


def _type_name(kind, metadata=()) -> str:
    for named, name in _named_types():
        # Known by its validators and serializers, the same objects in every field of that type.
        marks = [mark for mark in named.__metadata__ if not isinstance(mark, FieldInfo)]
        if marks and all(any(mark is seen for seen in metadata) for mark in marks):
            return name
    if typing.get_origin(kind) is typing.Annotated:
        return _type_name(typing.get_args(kind)[0], typing.get_args(kind)[1:])
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(json.dumps(v) for v in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        item = _type_name(typing.get_args(kind)[0])
        return f"array of {item}s" if re.fullmatch(r"[\w ]+", item) else f"array, each {item}"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path",
             timedelta: "duration"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _range(field: FieldInfo) -> str:
    for mark in field.metadata:
        if isinstance(mark, m.Range):
            return mark.describe()
    if _type_name(field.annotation, field.metadata).startswith("duration"):
        return f"from {m.format_duration(m.MIN_DURATION)} to {m.format_duration(m.MAX_DURATION)}"
    return ""


def example_of(model: type[BaseModel]) -> dict:
    """The example values a table gives for its keys (models.example)."""
    extra = model.model_config.get("json_schema_extra")
    return (extra or {}).get("examples", [{}])[0] if isinstance(extra, dict) else {}


def _description(model, name: str) -> str:
    """A key's description; a key a subclass narrows (a sink's `type`) keeps its base's."""
    for cls in getattr(model, "__mro__", ()):
        field = getattr(cls, "model_fields", {}).get(name)
        if field is not None and field.description:
            return field.description
    return ""


def _key(model, name: str, field: FieldInfo, example: dict) -> Key:
    kind = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    if field.is_required():
        default = ""
    else:
        default = toml_value(TypeAdapter(kind).dump_python(field.get_default(call_default_factory=True),
                                                           mode="json"))
    key = field.alias or name
    return Key(key, _type_name(field.annotation, field.metadata), default, _range(field),
               _description(model, name), toml_value(example[key]) if key in example else "")


def _doc(model) -> str:
    """A model's own docstring (not one inherited), for its table's description."""
    return " ".join((model.__dict__.get("__doc__") or "").split())


def _table_type(kind):
    """What a field holds when it is a table: (the model, or a tagged union's
    members, and whether it is an array of tables); None for a plain key."""
    array = typing.get_origin(kind) is list
    inner = typing.get_args(kind)[0] if array else (_optional_of(kind) or kind)
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    if _is_section(inner):
        return inner, array
    members = typing.get_args(inner) if typing.get_origin(inner) is typing.Union else ()
    if members and all(_is_section(member) for member in members):
        return members, array
    return None


def _overridden(config, model) -> str:
    """The top-level table a partial override (every key optional) stands for, or ""."""
    for name, field in config.model_fields.items():
        if (_is_section(field.annotation) and field.annotation is not model
                and set(field.annotation.model_fields) == set(model.model_fields)
                and all(f.default is None for f in model.model_fields.values())):
            return name
    return ""


def _tag(members) -> str:
    """The key whose literal value tells a tagged union's members apart."""
    (tag,) = [name for name in members[0].model_fields
              if all(typing.get_origin(member.model_fields.get(name, FieldInfo()).annotation) is typing.Literal
                     for member in members)]
    return tag


def tag_value(member, tag: str) -> str:
    (value,) = typing.get_args(member.model_fields[tag].annotation)
    return value


def table_of(model, config=None, name: str = "", array: bool = False) -> Table:
    """The schema of a model (the whole config by default) as a Table tree."""
    config = config or model
    if isinstance(model, tuple):
        return _union(model, config, name, array)
    keys, tables = [], []
    example = example_of(model)
    for field_name, field in model.model_fields.items():
        inner = _table_type(field.annotation)
        if inner is None:
            keys.append(_key(model, field_name, field, example))
            continue
        base = _overridden(config, inner[0]) if _is_section(inner[0]) else ""
        if base:
            tables.append(Table(field_name, f"Any key of [{base}], for this {name} only; a key not set "
                                            f"here takes the value of [{base}].", inherits=base))
        else:
            tables.append(table_of(inner[0], config, field_name, inner[1]))
    return Table(name, _doc(model), tuple(keys), tuple(tables), array)


def _union(members, config, name: str, array: bool) -> Table:
    """An array of tables whose members differ by a tag (`type`): the keys they
    all have, and each member with all of its own."""
    tag = _tag(members)
    common = [n for n in members[0].model_fields if all(n in member.model_fields for member in members)]
    shared = members[0].__mro__[1]  # the members' common base: its docstring describes them all
    keys = []
    for field_name in common:
        field = members[0].model_fields[field_name]
        if field_name == tag:
            values = ", ".join(json.dumps(tag_value(member, tag)) for member in members)
            keys.append(Key(field.alias or field_name, f"one of {values}", "", "",
                            _description(members[0], field_name)))
        else:
            keys.append(_key(members[0], field_name, field, {}))
    # Each member with all its keys, the shared ones too, and its own example values.
    shapes = tuple((tag_value(member, tag), table_of(member, config, name, array)) for member in members)
    return Table(name, _doc(shared), tuple(keys), (), array, tag=tag, members=shapes)


def _table_at(loc: tuple, model=m.Config) -> tuple[type[BaseModel] | None, tuple[str, ...]]:
    """The model of the table at loc, a location as pydantic reports it
    (('host', 0, 'schedule'); a [[notify]] sink's own keys after its type:
    ('notify', 1, 'email')), and the names of the tables leading there;
    None where loc names no table."""
    names: list[str] = []
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(model, tuple):  # a tagged union: the part is the member's tag value
            tag = _tag(model)
            model = next((member for member in model if tag_value(member, tag) == part), None)
            if model is None:
                return None, ()
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        inner = _table_type(field.annotation) if field else None
        if inner is None:
            return None, ()
        model = inner[0]
        names.append(part)
    return (None, ()) if isinstance(model, tuple) else (model, tuple(names))


def keys_at(loc: tuple) -> list[str]:
    """The keys of the table at loc (see _table_at); [] where loc names no table."""
    model, _ = _table_at(loc)
    return [field.alias or name for name, field in model.model_fields.items()] if model else []


def homes_of(key: str, loc: tuple) -> list[str]:
    """The tables inside the table at loc that have this key, as their headers
    ("[schedule]", "[host.rsync]"): where a key written one level too high belongs."""
    model, names = _table_at(loc)
    homes = []
    for name, field in (model.model_fields.items() if model else ()):
        inner = _table_type(field.annotation)
        shapes = () if inner is None else inner[0] if isinstance(inner[0], tuple) else (inner[0],)
        if any(key in (f.alias or n for n, f in shape.model_fields.items()) for shape in shapes):
            header = ".".join((*names, field.alias or name))
            homes.append(f"[[{header}]]" if inner[1] else f"[{header}]")
    return homes


def named_files(data: Mapping, model=m.Config, loc: tuple = ()) -> Iterator[tuple[tuple, str, str]]:
    """(location, path, role) of every key in data (TOML as read, merged)
    that names a file (models.NamedFile) and holds a non-empty string; each
    sink by the keys of its type."""
    for name, field in model.model_fields.items():
        key = field.alias or name
        value = data.get(key)
        role = next((mark.role for mark in field.metadata if isinstance(mark, m.NamedFile)), None)
        if role and isinstance(value, str) and value:
            yield loc + (key,), value, role
        inner = _table_type(field.annotation)
        if inner is None or value is None:
            continue
        entries = enumerate(value) if inner[1] and isinstance(value, list) else [(None, value)]
        for index, entry in entries:
            if not isinstance(entry, Mapping):
                continue  # the per-key check reports it
            shape = inner[0]
            if isinstance(shape, tuple):
                tag = _tag(shape)
                shape = next((member for member in shape if tag_value(member, tag) == entry.get(tag)), None)
            if shape is not None:
                yield from named_files(entry, shape, loc + (key,) + (() if index is None else (index,)))
