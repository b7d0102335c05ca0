"""`find` patterns (SPEC §5), as one regular expression over bytes.

A pattern is matched against the whole path inside the snapshot, which
starts with `/`: `*` and `?` match within one name (dot files included),
`**` as a whole name matches any number of names including none, `[…]` is a
class (`[!…]` or `[^…]` its complement; it never matches `/`), `\\` makes the
next character mean itself. A pattern without `/` matches the last name
anywhere (as `find -name`); one with `/` that does not start with it is
anchored at the root all the same. Names are bytes: a pattern's characters
that are not UTF-8 come as surrogate escapes (SPEC §5) and mean their bytes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ...tree import browse

SPECIAL = frozenset(b"*?[\\")


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[bytes]  # over "/" + the path relative to the snapshot's root
    prefix: bytes  # every matching path (relative, no leading "/") starts with it
    exact: bytes | None  # the one path it can match, when it has no wildcard

    def matches(self, path: bytes) -> bool:
        return self.regex.match(b"/" + path) is not None


def _class(raw: bytes, start: int) -> tuple[bytes, int] | None:
    """The class starting at raw[start] ('['): (its regex, the index after
    its ']'), or None when it is not closed (then '[' is itself)."""
    index = start + 1
    negate = index < len(raw) and raw[index] in b"!^"
    if negate:
        index += 1
    members, first = [], True
    while index < len(raw):
        byte = raw[index]
        if byte == ord("]") and not first:
            body = b"".join(members) or b"\\x00-\\x00"
            return (b"[^/" + body + b"]" if negate else b"(?!/)[" + body + b"]"), index + 1
        if byte == ord("\\") and index + 1 < len(raw):
            index += 1
            byte = raw[index]
        if index + 2 < len(raw) and raw[index + 1] == ord("-") and raw[index + 2] != ord("]"):
            end = raw[index + 2]
            if end == ord("\\") and index + 3 < len(raw):
                end, index = raw[index + 3], index + 1
            members.append(re.escape(bytes([byte])) + b"-" + re.escape(bytes([end])))
            index += 3
        else:
            members.append(re.escape(bytes([byte])))
            index += 1
        first = False
    return None


def _name(raw: bytes) -> bytes:
    """The regex of one name's pattern (no '/' in it)."""
    out, index = [], 0
    while index < len(raw):
        byte = raw[index]
        if byte == ord("\\"):
            out.append(re.escape(raw[index + 1:index + 2] or b"\\"))
            index += 2
        elif byte == ord("*"):
            while index < len(raw) and raw[index] == ord("*"):
                index += 1
            out.append(b"[^/]*")
        elif byte == ord("?"):
            out.append(b"[^/]")
            index += 1
        elif byte == ord("[") and (found := _class(raw, index)) is not None:
            out.append(found[0])
            index = found[1]
        else:
            out.append(re.escape(bytes([byte])))
            index += 1
    return b"".join(out)


def _literal(raw: bytes) -> tuple[bytes, bool]:
    """The literal start of a pattern (escapes undone), and whether it is all literal."""
    out, index = bytearray(), 0
    while index < len(raw):
        byte = raw[index]
        if byte == ord("\\") and index + 1 < len(raw):
            out.append(raw[index + 1])
            index += 2
        elif byte in SPECIAL:
            return bytes(out), False
        else:
            out.append(byte)
            index += 1
    return bytes(out), True


def compile_pattern(pattern: str) -> Pattern:
    raw = os.fsencode(pattern)
    if b"/" not in raw:
        return Pattern(re.compile(rb"\A(?:/[^/]+)*/" + _name(raw) + rb"\Z", re.DOTALL), b"", None)
    names = [name for name in raw.split(b"/") if name]
    parts = []
    for name in names:
        parts.append(rb"(?:/[^/]+)*" if name == b"**" else b"/" + _name(name))
    regex = re.compile(rb"\A" + b"".join(parts) + rb"\Z", re.DOTALL) if names else re.compile(rb"(?!)")
    literal, whole = _literal(b"/".join(names))
    if whole:
        return Pattern(regex, literal, literal if names else None)
    # Not up to a '/': `a/**` matches `a` itself (`**` may be no names at all).
    return Pattern(regex, literal.rstrip(b"/"), None)


def exactly(path: str) -> Pattern:
    """What matches path and nothing else, whatever characters it holds (`ls --history`)."""
    relative = b"/".join(browse.components(path))
    return Pattern(re.compile(rb"\A/" + re.escape(relative) + rb"\Z", re.DOTALL), relative, relative)
