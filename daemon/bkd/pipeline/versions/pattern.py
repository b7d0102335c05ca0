"""`find` patterns (SPEC §5), as one regular expression.

A pattern is matched against the whole path inside the snapshot, which
starts with `/`: `*` and `?` match within one name (dot files included; `?`
is one character), `**` as a whole name matches any number of names
including none, `[…]` is a class (`[!…]` or `[^…]` its complement; it never
matches `/`), `\\` makes the next character mean itself. A pattern without
`/` matches the last name anywhere (as `find -name`); one with `/` that does
not start with it is anchored at the root all the same. Names are bytes:
paths and patterns are compared as `os.fsdecode` makes them (a byte that is
not UTF-8 is one surrogate escape, and means itself; SPEC §5).

Each pattern also gives what narrows the index's lookup before the
expression is applied: the literal start of the path (a range of the
index), and a GLOB that SQLite applies in C and that every match satisfies
(a superset: each wildcard and class is a GLOB `*`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ...tree import browse


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]  # over "/" + the path relative to the snapshot's root, fsdecoded
    prefix: bytes  # every matching path (relative, no leading "/") starts with it
    exact: bytes | None  # the one path it can match, when it has no wildcard
    glob: str | None  # an SQLite GLOB every matching path satisfies (None: none that narrows)

    def matches(self, path: bytes) -> bool:
        return self.regex.match("/" + os.fsdecode(path)) is not None


def _class(text: str, start: int) -> tuple[str, int] | None:
    """The class starting at text[start] ('['): (its regex, the index after
    its ']'), or None when it is not closed (then '[' is itself)."""
    index = start + 1
    negate = index < len(text) and text[index] in "!^"
    if negate:
        index += 1
    members, first = [], True
    while index < len(text):
        char = text[index]
        if char == "]" and not first:
            body = "".join(members)
            return (f"[^/{body}]" if negate else f"(?!/)[{body}]"), index + 1
        if char == "\\" and index + 1 < len(text):
            index += 1
            char = text[index]
        if index + 2 < len(text) and text[index + 1] == "-" and text[index + 2] != "]":
            end = text[index + 2]
            if end == "\\" and index + 3 < len(text):
                end, index = text[index + 3], index + 1
            members.append(re.escape(char) + "-" + re.escape(end))
            index += 3
        else:
            members.append(re.escape(char))
            index += 1
        first = False
    return None


def _scan(name: str) -> tuple[str, str, str, bool]:
    """One name's pattern (no '/' in it): (its regex, its GLOB, its literal
    start, whether it is literal through)."""
    regex, glob, literal, index, whole = [], [], [], 0, True
    while index < len(name):
        char = name[index]
        if char == "\\":
            char = name[index + 1:index + 2] or "\\"
            index += 2
        elif char in "*?" or (char == "[" and _class(name, index) is not None):
            if char == "[":
                found, index = _class(name, index)
                regex.append(found)
            else:
                regex.append("[^/]*" if char == "*" else "[^/]")
                index += 1
                while char == "*" and index < len(name) and name[index] == "*":
                    index += 1
            if not glob or glob[-1] != "*":
                glob.append("*")
            whole = False
            continue
        else:
            index += 1
        regex.append(re.escape(char))
        glob.append(f"[{char}]" if char in "*?[" else char)
        if whole:
            literal.append(char)
    return "".join(regex), "".join(glob), "".join(literal), whole


def compile_pattern(pattern: str) -> Pattern:
    narrow = pattern.isascii()  # GLOB reads bytes as UTF-8; a pattern of ASCII alone narrows safely
    if "/" not in pattern:
        regex, glob, _, _ = _scan(pattern)
        return Pattern(re.compile(r"\A(?:/[^/]+)*/" + regex + r"\Z", re.DOTALL), b"", None,
                       "*" + glob if narrow else None)
    names = [name for name in pattern.split("/") if name]
    if not names:
        return Pattern(re.compile(r"(?!)"), b"", None, None)
    regex, globs, literal, literal_through = [], [], [], True
    for name in names:
        if name == "**":
            regex.append(r"(?:/[^/]+)*")
            globs.append(None)  # any names, or none: a GLOB * that takes the '/' on either side with it
            literal_through = False
            continue
        part, part_glob, part_literal, whole = _scan(name)
        regex.append("/" + part)
        globs.append(part_glob)
        if literal_through:
            literal.append(part_literal)
            literal_through = whole
    glob = ""
    for index, part in enumerate(globs):
        joint = "" if index == 0 or part is None or globs[index - 1] is None else "/"
        glob += joint + ("*" if part is None else part)
    prefix = os.fsencode("/".join(literal))
    if literal_through:  # no wildcard at all
        return Pattern(re.compile(r"\A" + "".join(regex) + r"\Z", re.DOTALL), prefix, prefix, None)
    return Pattern(re.compile(r"\A" + "".join(regex) + r"\Z", re.DOTALL), prefix.rstrip(b"/"), None,
                   glob if narrow else None)


def exactly(path: str) -> Pattern:
    """What matches path and nothing else, whatever characters it holds (`ls --history`)."""
    relative = b"/".join(browse.components(path))
    return Pattern(re.compile(r"\A/" + re.escape(os.fsdecode(relative)) + r"\Z", re.DOTALL), relative, relative, None)
