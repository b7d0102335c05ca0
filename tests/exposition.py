"""A strict reader of the Prometheus text format (version 0.0.4), for tests:
it refuses what Prometheus would refuse and what the naming conventions
advise against, with the line and the reason."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
LABEL_VALUE = re.compile(r'"((?:[^"\\\n]|\\[\\"n])*)"')
VALUE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class Invalid(AssertionError):
    pass


@dataclass
class Family:
    name: str
    help: str
    type: str
    samples: list[tuple[dict[str, str], float, str]] = field(default_factory=list)  # labels, value, as written

    def value(self, **labels: str) -> float:
        found = [v for l, v, _ in self.samples if l == labels]
        if len(found) != 1:
            raise KeyError(f"{self.name}{labels}: {len(found)} samples")
        return found[0]

    def written(self, **labels: str) -> str:
        return next(raw for l, _, raw in self.samples if l == labels)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), text)


def _labels(text: str, where: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        name = LABEL_NAME.match(text, pos)
        if not name or text[name.end():name.end() + 1] != "=":
            raise Invalid(f"{where}: bad label name at {text[pos:]!r}")
        if name[0].startswith("__"):
            raise Invalid(f"{where}: label names starting with __ are reserved")
        value = LABEL_VALUE.match(text, name.end() + 1)
        if not value:
            raise Invalid(f"{where}: bad label value at {text[name.end() + 1:]!r}")
        if name[0] in labels:
            raise Invalid(f"{where}: label {name[0]} twice")
        labels[name[0]] = _unescape(value[1])
        pos = value.end()
        if pos < len(text):
            if text[pos] != ",":
                raise Invalid(f"{where}: expected ',' at {text[pos:]!r}")
            pos += 1
    return labels


def parse(text: str, prefix: str = "bkd_") -> dict[str, Family]:
    if not text.endswith("\n"):
        raise Invalid("the exposition must end with a newline")
    families: dict[str, Family] = {}
    pending_help: dict[str, str] = {}
    current: str | None = None
    seen: set[tuple] = set()
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number} {line!r}"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            if not NAME.fullmatch(name) or name in families or name in pending_help:
                raise Invalid(f"{where}: HELP of an unknown, bad or repeated name")
            if not help_text:
                raise Invalid(f"{where}: empty HELP")
            pending_help[name] = _unescape(help_text)
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            if name not in pending_help:
                raise Invalid(f"{where}: TYPE must follow the family's HELP")
            if kind not in TYPES:
                raise Invalid(f"{where}: unknown type {kind!r}")
            families[name] = Family(name, pending_help.pop(name), kind)
            current = name
        elif line.startswith("#") or not line.strip():
            raise Invalid(f"{where}: bkd writes no comments and no blank lines")
        else:
            match = re.fullmatch(r"([^{ ]+)(?:\{(.*)\})? (\S+)", line)
            if not match:
                raise Invalid(f"{where}: not `name{{labels}} value`")
            name, labels_text, raw = match.groups()
            if name != current:
                raise Invalid(f"{where}: a sample outside its family's HELP/TYPE block")
            if not VALUE.fullmatch(raw):
                raise Invalid(f"{where}: bad value {raw!r}")
            labels = _labels(labels_text or "", where)
            key = (name, tuple(sorted(labels.items())))
            if key in seen:
                raise Invalid(f"{where}: the same series twice")
            seen.add(key)
            value = float(raw.replace("Inf", "inf"))
            families[name].samples.append((labels, value, raw))
    if pending_help:
        raise Invalid(f"HELP without TYPE: {sorted(pending_help)}")
    for family in families.values():
        if not family.name.startswith(prefix):
            raise Invalid(f"{family.name}: not in the {prefix} namespace")
        if (family.type == "counter") != family.name.endswith("_total"):
            raise Invalid(f"{family.name}: counters, and only counters, end in _total")
        for unit in ("milliseconds", "minutes", "hours", "days", "kilobytes", "megabytes", "bits", "percent"):
            if unit in family.name.split("_"):
                raise Invalid(f"{family.name}: use base units (seconds, bytes, ratios)")
        for _, value, raw in family.samples:
            if "e" in raw.lower() and math.isfinite(value):
                raise Invalid(f"{family.name}: {raw} is written with an exponent (rounded?)")
    return families
