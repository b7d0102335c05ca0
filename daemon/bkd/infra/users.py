"""Unix users and groups by name, as messages and the audit log name them."""

from __future__ import annotations

import grp
import pwd


def user_name(uid: int) -> str:
    """The user's name, or the uid itself when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_names(gids: frozenset[int]) -> set[str]:
    """The names of those groups that have one."""
    names = set()
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names
