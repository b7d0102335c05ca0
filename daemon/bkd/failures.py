"""Telling why a backup run failed, from its message (pure): an SSH login the
host refused or a host key that is unknown or changed needs a person (an
`auth` alert); an unreachable host may come back by itself."""

from __future__ import annotations

import re

_HOST_KEY = re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED"
                       r"|No \S+ host key is known for|Host key for \S+ has changed")
_LOGIN = re.compile(r"Permission denied \((?:publickey|password|keyboard-interactive|hostbased|gssapi)"
                    r"|Too many authentication failures|Authentication failed\.")

HOST_KEY = "host key"
LOGIN = "login"


def ssh_refusal(message: str) -> str | None:
    """HOST_KEY, LOGIN, or None when the failure is something else (a host that
    cannot be reached, a full disk, a file that cannot be read, …)."""
    if _HOST_KEY.search(message):
        return HOST_KEY
    if _LOGIN.search(message):
        return LOGIN
    return None


def auth_message(refusal: str) -> str:
    """For every role: what happened and what to do, without the command's output."""
    if refusal == HOST_KEY:
        return ("the host's SSH key is unknown or has changed (host key verification failed): check it, "
                "then update the known_hosts file; bkd never accepts a host key by itself")
    return "the host refused bkd's SSH login (authentication failed): check bkd's key on the host"
