"""Who may call what (SPEC §5): the caller's uid and groups, from SO_PEERCRED
and the kernel's view of that process, mapped to a role by [access]."""

from __future__ import annotations

import grp
import os
import pwd

from .config.models import Access

RANKS = {"viewer": 1, "operator": 2, "admin": 3}


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_ids(pid: int, gid: int) -> set[int]:
    """The primary and supplementary groups the calling process has now."""
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return groups


def group_names(gids: set[int]) -> set[str]:
    names = set()
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names


def role_of(uid: int, gid: int, pid: int, access: Access) -> str | None:
    """Root and the daemon's own uid are admins; otherwise the highest role any
    of the caller's groups maps to; None for anyone else."""
    if uid in (0, os.getuid()):
        return "admin"
    names = group_names(group_ids(pid, gid))
    for role in ("admin", "operator", "viewer"):
        if names & set(getattr(access, f"{role}s")):
            return role
    return None


def may_restore_remotely(uid: int, gid: int, pid: int, access: Access) -> bool:
    """A restore to host:path writes with the daemon's own SSH identity (root
    on the sources, as a rule): root, the daemon's uid, or a member of a group
    in `remote_restorers` (SPEC §5) — not every admin."""
    if uid in (0, os.getuid()):
        return True
    return bool(group_names(group_ids(pid, gid)) & set(access.remote_restorers))


def allowed(role: str | None, needed: str) -> bool:
    return role is not None and RANKS[role] >= RANKS[needed]
