"""Loading the main file and conf.d/*.toml drop-ins, with every problem reported
as FILE:KEY: message, KEY being the dotted TOML path within FILE."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from pydantic import ValidationError

from .models import Config

DEFAULT_PATH = Path("/etc/bkd/bkd.toml")

# Where each merged key came from: merged path prefix -> (file, path within that file).
Origins = dict[tuple, tuple[Path, tuple]]


@dataclass(frozen=True)
class Problem:
    file: Path
    key: tuple
    message: str

    def __str__(self) -> str:
        key = format_key(self.key)
        return f"{self.file}:{key}: {self.message}" if key else f"{self.file}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def config_path(cli_path: str | None = None) -> Path:
    return Path(cli_path or os.environ.get("BKD_CONFIG") or DEFAULT_PATH)


def format_key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


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
    """Tables merge key by key, later files win; [[host]] arrays are concatenated
    so a drop-in can add hosts."""
    for key, value in data.items():
        path = prefix + (key,)
        if path == ("host",) and isinstance(value, list) and isinstance(into.get(key, []), list):
            hosts = into.setdefault(key, [])
            for local_index, item in enumerate(value):
                origins[("host", len(hosts))] = (file, ("host", local_index))
                hosts.append(item)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, file, origins, path)
        else:
            into[key] = value
            origins[path] = (file, path)


def _locate(loc: tuple, origins: Origins, main: Path) -> tuple[Path, tuple]:
    for length in range(len(loc), 0, -1):
        if loc[:length] in origins:
            file, local = origins[loc[:length]]
            return file, local + loc[length:]
    return main, loc


def error_message(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return error["msg"].removeprefix("Value error, ")


def load_config(path: Path) -> Config:
    """Read, merge and validate; raise ConfigError listing every problem."""
    merged: dict = {}
    origins: Origins = {}
    problems: list[Problem] = []
    for file in [path, *drop_in_files(path)]:
        try:
            _merge(merged, _read_toml(file), file, origins)
        except ConfigError as e:
            problems += e.problems
    if problems:
        raise ConfigError(problems)
    try:
        config = Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(
            [Problem(*_locate(err["loc"], origins, path), error_message(err)) for err in e.errors()]
        ) from None
    cross = config.cross_check()
    if cross:
        raise ConfigError([Problem(*_locate(loc, origins, path), msg) for loc, msg in cross])
    return config


def to_toml(config: Config) -> str:
    """The effective config (defaults filled in) as TOML; absent host overrides are left out."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
