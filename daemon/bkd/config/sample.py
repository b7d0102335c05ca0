"""A config file written from the schema (schema.py), every key with its
description, type, range and default as comments: `bkd config sample` (what
the package installs as /etc/bkd/bkd.toml.example) and `bkd init`.

TOML text is written here with the standard library rather than kept as a
template (which would drift from the models) or written with tomlkit (a
dependency, for comments alone): docs/configuration.md says more."""

from __future__ import annotations

import textwrap
import tomllib
from collections.abc import Mapping

from .. import __version__
from .models import Config, Section
from .schema import Key, Table, table_of, toml_value

WIDTH = 88

USAGE = """\
A line "#key = value" is a key at its default: remove the "#" to set it. Above each
key: what it does, then its type and range. Durations are a number and a unit (90s,
15m, 1h, 7d, 2w, 1h30m); paths are absolute.

bkd reads this file, then conf.d/*.toml beside it in name order. After a change: bkd
check-config, then systemctl reload bkd. bkd.toml(5) and
/usr/share/doc/bkd/configuration.md explain every key."""

SAMPLE_TITLE = (f"Every key of bkd {__version__}'s configuration, with its default: written by `bkd config "
                "sample`, installed as /etc/bkd/bkd.toml.example.")
INIT_TITLE = (f"bkd configuration, written by `bkd init` (bkd {__version__}): your settings, then every "
              "other key at its default.")


def render(values: Mapping | None = None, title: str = SAMPLE_TITLE, model: type[Section] = Config) -> str:
    """A config holding values (valid TOML-ready data, e.g. from `bkd init`):
    each key given there is set, every other key is written commented out at
    its default; required keys not given get their table's example value,
    and arrays of tables with no entry given get a commented-out example."""
    root = table_of(model)
    values = dict(values or {})
    _refuse_unknown(root, values)
    lines = _comment(title) + ["#"] + [f"# {line}" if line else "#" for line in USAGE.split("\n")]
    lines += _keys(root, values, commented=False)
    tops = {table.name: table for table in root.tables}
    for table in root.tables:
        lines += _table(table, values.get(table.name), table.name, commented=False, tops=tops)
    return "\n".join(lines) + "\n"


def _refuse_unknown(table: Table, given: Mapping) -> None:
    known = {key.name for key in table.keys} | {sub.name for sub in table.tables}
    known |= {key.name for _, member in table.members for key in member.keys}
    unknown = sorted(set(given) - known)
    if unknown:  # values are validated before they get here: this is a bug, never lose them quietly
        raise ValueError(f"not in the schema: {', '.join(unknown)}")


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent="# ", subsequent_indent="# ")


def _facts(key: Key) -> str:
    return ", ".join([key.type, *([key.range] if key.range else [])]) + ("; required" if key.required else "")


def _assignment(key: Key, value: object, active: bool) -> list[str]:
    """`key = value` (#key = value when not active); a long array one item a line."""
    text = key.example or key.default if value is None else toml_value(value)
    if not text:  # a test holds every required key to an example
        raise ValueError(f"the required key {key.name} has no example value in the schema")
    lines = [f"{key.name} = {text}"]
    if len(lines[0]) > WIDTH and text.startswith("["):
        items = tomllib.loads(f"v = {text}")["v"]
        lines = [f"{key.name} = [", *(f"    {toml_value(item)}," for item in items), "]"]
    return [("" if active else "#") + line for line in lines]


def _keys(table: Table, given: Mapping, commented: bool) -> list[str]:
    lines = []
    for key in table.keys:
        value = given.get(key.name)
        lines += ["", *_comment(key.description), *_comment(_facts(key))]
        lines += _assignment(key, value, active=not commented and (value is not None or key.required))
    return lines


def _table(table: Table, given, path: str, commented: bool, tops: dict[str, Table]) -> list[str]:
    """A table (given: its values, None when not given), or an array of tables
    (given: a list of them), and the tables inside it."""
    lines = ["", *_comment(table.description)]
    if table.inherits:  # a host's override of a top-level table: only what is given
        keys = {key.name: key for key in tops[table.inherits].keys}
        if given is None or commented:
            return lines + [f"#[{path}]"]
        _refuse_unknown(tops[table.inherits], given)
        shown = Table(table.name, "", tuple(keys[name] for name in given))
        return lines + [f"[{path}]", *_keys(shown, given, commented=False)]
    if not table.array:
        given = given or {}
        _refuse_unknown(table, given)
        lines += [f"{'#' if commented else ''}[{path}]", *_keys(table, given, commented)]
        for sub in table.tables:
            lines += _table(sub, given.get(sub.name), f"{path}.{sub.name}", commented, tops)
        return lines
    items = list(given or [])
    if not items:  # a commented-out example of each shape
        shapes = [member for _, member in table.members] or [table]
        for shape in shapes:
            if shape is not table:  # a member of a tagged array: what this kind of entry is
                lines += ["", *_comment(shape.description)]
            lines += _entry(shape, {}, path, commented=True, tops=tops)
        return lines
    for item in items:
        shape = next((member for value, member in table.members if item.get(table.tag) == value), table)
        _refuse_unknown(shape, item)
        lines += [""] + _entry(shape, item, path, commented, tops)
    return lines


def _entry(shape: Table, item: Mapping, path: str, commented: bool, tops: dict[str, Table]) -> list[str]:
    """One entry of an array of tables: [[path]], its keys, the tables inside it."""
    lines = [f"{'#' if commented else ''}[[{path}]]", *_keys(shape, item, commented)]
    for sub in shape.tables:
        lines += _table(sub, item.get(sub.name), f"{path}.{sub.name}", commented, tops)
    return lines
