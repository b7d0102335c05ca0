"""Who may call what (SPEC §5): the caller's identity, taken once from the
socket when the connection is accepted, mapped to a role by [access] at
each call (a reload may change [access], never who the caller is).

The identity is the kernel's record of the connecting process's
credentials at connect(): SO_PEERCRED (uid, gid) and SO_PEERGROUPS (its
supplementary groups). Nothing is ever looked up by pid: a pid can belong
to another process by the time a request arrives."""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from .config.models import Access

RANKS = {"viewer": 1, "operator": 2, "admin": 3}
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux ≥ 4.13; Python has no name for it
GROUPS_BUFFER = 64 * 4  # bytes for 64 groups; on ERANGE the kernel says how many it needs
MAX_GROUPS_BUFFER = 65536 * 4  # NGROUPS_MAX groups of 4 bytes
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Identity:
    """The caller, as the kernel recorded it when it connected. `pid` is kept
    for the record (audit, logs) only: no decision rests on it."""

    uid: int
    gid: int
    groups: frozenset[int]  # the primary group and the supplementary ones
    pid: int


def identity_of(sock: socket.socket) -> Identity:
    """The peer's credentials as of its connect(); OSError if the kernel has none."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Identity(uid, gid, frozenset({gid, *_peer_groups(sock)}), pid)


def _peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """SO_PEERGROUPS through libc: Python's getsockopt takes at most 1,024
    bytes (256 groups), and a caller may have up to 65,536."""
    size = ctypes.c_uint32(GROUPS_BUFFER)
    while True:
        groups = (ctypes.c_uint32 * (size.value // 4))()
        if _libc.getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_PEERGROUPS, groups, ctypes.byref(size)) == 0:
            return tuple(groups[:size.value // 4])
        error = ctypes.get_errno()
        if error != errno.ERANGE or size.value > MAX_GROUPS_BUFFER:
            raise OSError(error, os.strerror(error))
        # Too small: the kernel has put the size it needs into size.


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_names(gids: frozenset[int]) -> set[str]:
    names = set()
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names


def _privileged(who: Identity) -> bool:
    return who.uid in (0, os.getuid())


def role_of(who: Identity, access: Access) -> str | None:
    """Root and the daemon's own uid are admins; otherwise the highest role any
    of the caller's groups maps to; None for anyone else."""
    if _privileged(who):
        return "admin"
    names = group_names(who.groups)
    for role in ("admin", "operator", "viewer"):
        if names & set(getattr(access, f"{role}s")):
            return role
    return None


def may_restore_remotely(who: Identity, access: Access) -> bool:
    """A restore to host:path writes with bkd's restore key (root on the
    sources, as a rule): root, the daemon's uid, or a member of a group
    in `remote_restorers` (SPEC §5) — not every admin."""
    return _privileged(who) or bool(group_names(who.groups) & set(access.remote_restorers))


def allowed(role: str | None, needed: str) -> bool:
    return role is not None and RANKS[role] >= RANKS[needed]
