"""Telling why a backup run failed (pure): an SSH login the host refused or a
host key that is unknown or changed needs a person (an `auth` alert); an
unreachable host may come back by itself.

Decided only from what the local ssh client itself reports (`ssh -E FILE`:
its own messages, in a file of bkd's, apart from the remote side's stderr),
one whole line at a time in ssh's own wording. Text a host prints — or a file
name quoted in an rsync error — may say "Permission denied (publickey)" too,
but it never reaches that file."""

from __future__ import annotations

import re

_HOST_KEY = re.compile(r"Host key verification failed\."
                       r"|@ +WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! +@"
                       r"|No \S+ host key is known for \S+ and you have requested strict checking\."
                       r"|Host key for \S+ has changed and you have requested strict checking\.")
_METHODS = r"(?:publickey|password|keyboard-interactive|hostbased|gssapi-with-mic|gssapi-keyex)"
_LOGIN = re.compile(rf"\S+: Permission denied \({_METHODS}(?:,{_METHODS})*\)\."
                    r"|Received disconnect from \S+ port \d+:\d+: Too many authentication failures.*"
                    r"|Authentication failed\.")

HOST_KEY = "host key"
LOGIN = "login"


def ssh_refusal(ssh_said: list[str]) -> str | None:
    """HOST_KEY, LOGIN, or None when ssh's own messages (ssh -E) report
    something else (a host that cannot be reached) or nothing at all."""
    lines = [line.strip() for line in ssh_said]
    if any(_HOST_KEY.fullmatch(line) for line in lines):
        return HOST_KEY
    if any(_LOGIN.fullmatch(line) for line in lines):
        return LOGIN
    return None


def auth_message(refusal: str) -> str:
    """For every role: what happened and what to do, without the command's output."""
    if refusal == HOST_KEY:
        return ("the host's SSH key is unknown or has changed (host key verification failed): check it, "
                "then update the known_hosts file; bkd never accepts a host key by itself")
    return "the host refused bkd's SSH login (authentication failed): check bkd's key on the host"
