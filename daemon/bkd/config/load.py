"""Loading the main file and conf.d/*.toml drop-ins, with every problem reported
as FILE:KEY: message, KEY being the dotted TOML path within FILE."""

from __future__ import annotations

import copy
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import tomli_w
from pydantic import ValidationError

from ..tree import ownership
from .files import check_file
from .models import SINK_TYPES, Config, cross_check, format_key, valid_host_name
from .schema import homes_of, keys_at, named_files

DEFAULT_PATH = Path("/etc/bkd/bkd.toml")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Arrays of tables that drop-ins extend instead of replacing.
CONCATENATED = ("host", "notify", "replica")

# Where each merged key came from: merged path prefix -> (file, path within that file).
Origins = dict[tuple, tuple[Path, tuple]]


@dataclass(frozen=True)
class Problem:
    file: Path
    key: tuple
    message: str
    warning: bool = False  # check-config only: the daemon starts, but something fails or is at risk

    def __str__(self) -> str:
        key = format_key(self.key)
        message = f"warning: {self.message}" if self.warning else self.message
        line = f"{self.file}:{key}: {message}" if key else f"{self.file}: {message}"
        # A quoted TOML key, a path or a drop-in's name may hold control characters: never the terminal's.
        return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", line)


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def config_path(cli_path: str | None = None) -> Path:
    return Path(cli_path or os.environ.get("BKD_CONFIG") or DEFAULT_PATH)


def drop_in_files(main: Path) -> list[Path]:
    conf_d = main.parent / "conf.d"
    return sorted(conf_d.glob("*.toml")) if conf_d.is_dir() else []


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError([Problem(path, (), f"cannot read config: {e.strerror}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem(path, (), f"invalid TOML: {e}")]) from None


def _merge(into: dict, data: dict, file: Path, origins: Origins, prefix: tuple = ()) -> None:
    """Tables merge key by key, later files win; [[host]], [[notify]] and
    [[replica]] arrays are concatenated so a drop-in can add to them."""
    for key, value in data.items():
        path = prefix + (key,)
        if len(path) == 1 and key in CONCATENATED and not isinstance(value, list):
            # Merged as a table it would replace every host the files before it
            # defined, and a later [[host]] would hide that: say so at once.
            given = f"a table ([{key}])" if isinstance(value, dict) else _value_text(value)
            raise ConfigError([Problem(file, path, f"must be an array of tables ([[{key}]]), not {given}")])
        if len(path) == 1 and key in CONCATENATED and isinstance(into.get(key, []), list):
            items = into.setdefault(key, [])
            for local_index, item in enumerate(value):
                origins[(key, len(items))] = (file, (key, local_index))
                items.append(item)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, file, origins, path)
        else:
            into[key] = value
            origins[path] = (file, path)


def locate(loc: tuple, origins: Origins, main: Path, message: str) -> Problem:
    """The problem at merged location loc, named by the file and local path that set it."""
    for length in range(len(loc), 0, -1):
        if loc[:length] in origins:
            file, local = origins[loc[:length]]
            return Problem(file, local + loc[length:], message)
    return Problem(main, loc, message)


def _value_text(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def did_you_mean(loc: tuple) -> str:
    """For an unknown key at loc (a pydantic location), the tail of its
    message: a key of the same table it nearly is (a typo: `hosts` for
    `host`), else the tables inside this one that have it (written a level
    too high: `snapshot_every` outside [schedule]), else a key of this
    table it resembles; "" when none."""
    key, siblings = str(loc[-1]), keys_at(loc[:-1])
    for cutoff in (0.8, 0.6):
        close = difflib.get_close_matches(key, siblings, n=1, cutoff=cutoff)
        if close:
            return f"; did you mean {close[0]!r}?"
        homes = homes_of(key, loc[:-1]) if cutoff == 0.8 else []
        if homes:
            return f"; it is a key of {', '.join(homes)}"
    return ""


def describe_error(error: dict) -> tuple[tuple, str]:
    """A pydantic error as (location in the merged TOML, message)."""
    loc, kind, msg = tuple(error["loc"]), error["type"], error["msg"]
    # A [[notify]] sink's errors carry its type as an extra location part.
    if len(loc) >= 3 and loc[0] == "notify" and loc[2] in SINK_TYPES:
        loc = loc[:2] + loc[3:]
    if kind == "extra_forbidden":  # with the type still in: a sink's type decides its keys
        return loc, "unknown key" + did_you_mean(tuple(error["loc"]))
    if kind == "missing":
        return loc, "required key is missing"
    if kind == "union_tag_not_found":
        return loc + ("type",), "required key is missing: 'email' or 'webhook'"
    if kind == "union_tag_invalid":
        return loc + ("type",), f"must be 'email' or 'webhook', not {error['ctx']['tag']!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"must be a table, not {_value_text(error['input'])}"
    if kind == "too_short" and error.get("ctx", {}).get("min_length") == 1:
        return loc, "must not be empty"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        msg = f"{msg}, not {_value_text(error['input'])}"
    msg = msg.removeprefix("Value error, ")
    return loc, msg.replace("Input should be", "must be", 1).replace("String should", "must", 1)


def read_merged(path: Path, instead: Mapping[Path, dict] | None = None) -> tuple[dict, Origins]:
    """The main file and its drop-ins merged; ConfigError for any unreadable file.
    instead: drop-ins as they are about to be written (new ones take their place in name order)."""
    merged: dict = {}
    origins: Origins = {}
    problems: list[Problem] = []
    instead = instead or {}
    for file in [path, *sorted({*drop_in_files(path), *instead})]:
        try:
            _merge(merged, copy.deepcopy(instead[file]) if file in instead else _read_toml(file), file, origins)
        except ConfigError as e:
            problems += e.problems
    if problems:
        raise ConfigError(problems)
    return merged, origins


def validate(merged: dict, origins: Origins, main: Path) -> tuple[Config | None, list[Problem]]:
    """Per-key and cross-field checks in one pass: every problem, not the first kind only."""
    found: list[tuple[tuple, str]] = []
    config = None

    def refer(ref: tuple, at: tuple) -> str:
        """Another key named in a message: with its file when that is not the problem's file."""
        there, here = locate(ref, origins, main, ""), locate(at, origins, main, "")
        key = format_key(there.key)
        return key if there.file == here.file else f"{there.file}:{key}"

    try:
        config = Config.model_validate(merged, context={"cross_checked": True})
    except ValidationError as e:
        found += [describe_error(err) for err in e.errors()]
    # A key whose own value is wrong is reported once, by its per-key check.
    per_key = {loc for loc, _ in found}
    found += [(loc, msg) for loc, msg in cross_check(merged, refer) if loc not in per_key]
    return (None if found else config), [locate(loc, origins, main, msg) for loc, msg in found]


def load_config(path: Path) -> Config:
    """Read, merge and validate; raise ConfigError listing every problem."""
    config, problems = validate(*read_merged(path), path)
    if problems:
        raise ConfigError(problems)
    return config


DIRECTORIES = (("backup_root", "backup root"), ("state_dir", "state directory"))


def check_config(path: Path, directories: bool = True) -> list[Problem]:
    """Everything `bkd check-config` reports: the config's problems and, for
    each key with a valid value, whether it works on this machine for this
    effective uid: the directories bkd owns (SPEC §7), the files keys name
    and local sources. Errors are what the daemon refuses to start with;
    warnings (directories in memory, the files) what it starts with, but
    something fails or is at risk. Creates nothing."""
    try:
        merged, origins = read_merged(path)
    except ConfigError as e:
        return e.problems
    _, problems = validate(merged, origins, path)
    if not directories:
        return problems
    reported = {(p.file, p.key) for p in problems}

    def valid(loc: tuple) -> bool:
        where = locate(loc, origins, path, "")
        return (where.file, where.key) not in reported

    for key, what in DIRECTORIES:
        if not valid((key,)):
            continue
        directory = Path(merged.get(key, Config.model_fields[key].default))
        problem = ownership.check_dir(directory, what)
        if problem:
            problems.append(locate((key,), origins, path, problem))
            continue
        warning = ownership.in_memory(directory, what)
        if warning:
            problems.append(replace(locate((key,), origins, path, warning), warning=True))
        if key == "backup_root":
            problems += _check_host_dirs(directory, merged, origins, path)
    for loc, value, role in named_files(merged):
        problem = check_file(value, role) if valid(loc) else None
        if problem:  # a warning: the daemon starts without the file, and backs up what it can
            problems.append(replace(locate(loc, origins, path, problem), warning=True))
    return problems


def _check_host_dirs(backup_root: Path, merged: dict, origins: Origins, main: Path) -> list[Problem]:
    """Existing host directories must be real directories of ours: a symlink
    planted there would make bkd write wherever it points."""
    problems = []
    hosts = merged.get("host") if isinstance(merged.get("host"), list) else []
    for index, host in enumerate(hosts):
        name = host.get("name") if isinstance(host, dict) else None
        if valid_host_name(name):
            problem = ownership.check_dir(backup_root / name, "host directory", follow_symlinks=False)
            if problem:
                problems.append(locate(("host", index, "name"), origins, main, problem))
    return problems


def _drop_none(value: object) -> object:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def to_dict(config: Config) -> dict:
    """The effective config as TOML-ready data: defaults filled in, URLs
    redacted, absent host overrides left out."""
    return _drop_none(config.model_dump(mode="json", by_alias=True))


def to_toml(config: Config) -> str:
    return tomli_w.dumps(to_dict(config))
