"""`[user@]host:/path` — a place on another machine reached over SSH (a
source, a restore's DEST). The one parser of that form: the config, the ssh
master connection, self-exclusion and restore all take it from here, so an
IPv6 literal (`user@[fe80::1]:/srv`) means the same host to each of them.
`bkd host add`'s TARGET (`[user@]host[:port]`) is read here too, with the
same rules for the user and the host."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# The host part as rsync reads it: up to the first ':' outside brackets; the
# user is everything before the last '@' in it (rsync and ssh split there too).
_USER_HOST = r"(?:(?P<user>[^/:\[\]]*)@)?(?:\[(?P<v6>[^\]/]*)\]|(?P<name>[^@/:\[\]]*))"
_FORM = re.compile(_USER_HOST + r":(?P<path>.*)", re.DOTALL)
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
FORMS = "[user@]host:/path (an IPv6 address in brackets: [fe80::1]:/path)"


@dataclass(frozen=True)
class Remote:
    user: str | None
    host: str  # a name, an ssh_config alias, or an IP address (IPv6 without brackets)
    path: str  # absolute, as written

    @classmethod
    def parse(cls, text: str) -> Remote:
        """The parts of [user@]host:/path, or ValueError saying what is wrong
        (without quoting text: the caller says where it came from)."""
        if text[:8].lower() == "rsync://":
            raise ValueError(f"rsync daemon URLs are not supported, bkd reaches hosts over SSH: use {FORMS}")
        match = _FORM.fullmatch(text)
        if match is None:
            raise ValueError(f"use {FORMS}")
        user, v6, host, path = match["user"], match["v6"], match["name"], match["path"]
        if v6 is not None:
            host = _bracketed(v6)
        elif _looks_like_ipv6(text):
            raise ValueError("write an IPv6 address in brackets, e.g. [fe80::1]:/path")
        _check_parts(user, host, FORMS)
        if path.startswith(":"):
            raise ValueError(f"host::module (an rsync daemon) is not supported, bkd reaches hosts over SSH: "
                             f"use {FORMS}")
        if not path.startswith("/"):
            raise ValueError("the path after ':' must be absolute (start with '/'): bkd must know where on the host "
                             "it is")
        return cls(user, host, path)

    @property
    def destination(self) -> str:
        """What ssh takes: [user@]host, an IPv6 address without brackets."""
        return f"{self.user}@{self.host}" if self.user is not None else self.host

    @property
    def spec(self) -> str:
        """The host part as rsync takes it: [user@]host, an IPv6 address in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user is not None else host

    def at(self, path: str) -> str:
        """rsync's argument for path on this host."""
        return f"{self.spec}:{path}"

    def __str__(self) -> str:
        return self.at(self.path)


def _check_parts(user: str | None, host: str, forms: str) -> None:
    for what, part in (("user", user), ("host", host)):
        if part is None:
            continue
        if not part:
            raise ValueError(f"the {what} is empty: use {forms}")
        if part.startswith("-"):
            raise ValueError(f"the {what} {part!r} starts with '-' (ssh would read it as an option)")
        if _BAD_CHARS.search(part):
            raise ValueError(f"the {what} {part!r} contains spaces or control characters")


def _bracketed(v6: str) -> str:
    """The address written in brackets, checked to be one."""
    try:
        ipaddress.IPv6Address(v6)
    except ValueError:
        raise ValueError(f"[{v6}] is not an IPv6 address (brackets are only for those)") from None
    return v6


# [user@]host[:port] (TARGET of `bkd host add`).
_TARGET = re.compile(_USER_HOST + r"(?::(?P<port>[^:]*))?", re.DOTALL)
# What bkd writes into an ssh_config block and shows in an authorized_keys hint: nothing to quote.
_PLAIN = re.compile(r"[A-Za-z0-9._-]+")
TARGET_FORMS = "[user@]host[:port] (an IPv6 address in brackets: [fe80::1]:22)"


@dataclass(frozen=True)
class Target:
    """Where `bkd host add` reaches a host: the login, the host and the port
    (None: ssh's own default), written into bkd's ssh_config as a Host block."""

    user: str | None
    host: str  # a name or an IP address (IPv6 without brackets)
    port: int | None

    @classmethod
    def parse(cls, text: str) -> Target:
        """The parts of [user@]host[:port], or ValueError saying what is wrong."""
        if "/" in text:
            raise ValueError(f"use {TARGET_FORMS}, without a path (`bkd host add` takes the directory as --path)")
        if _is_ipv6(text.rpartition("@")[2]):  # its own colons would read as a port
            raise ValueError("write an IPv6 address in brackets, e.g. [fe80::1] or root@[fe80::1]:2222")
        match = _TARGET.fullmatch(text)
        if match is None:
            raise ValueError(f"use {TARGET_FORMS}")
        user, v6, host, port = match["user"], match["v6"], match["name"], match["port"]
        if v6 is not None:
            _bracketed(v6)
            if "%" in v6:  # ssh_config reads % in HostName as one of its tokens
                raise ValueError(f"[{v6}]: a zone (%...) cannot be written into an ssh_config; use a global address")
            host = v6
        _check_parts(user, host, TARGET_FORMS)
        for what, part in (("user", user), ("host", None if v6 is not None else host)):
            if part is not None and not _PLAIN.fullmatch(part):
                raise ValueError(f"the {what} {part!r} may hold only letters, digits, '.', '_' and '-'")
        if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"the port {port!r} is not a number from 1 to 65535")
        return cls(user, host, int(port) if port is not None else None)

    @property
    def address(self) -> str:
        """host[:port] as people write it (an IPv6 address in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host


def _looks_like_ipv6(text: str) -> bool:
    """user@fe80::1:/srv — an address without brackets, whose own colons end the host part early."""
    return _is_ipv6(text.rpartition("@")[2].rpartition(":/")[0])


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def parse_source(source: str) -> Remote | None:
    """A host's source: None for an absolute local path, else the Remote (ValueError when neither)."""
    if source.startswith("/"):
        return None
    return Remote.parse(source)
