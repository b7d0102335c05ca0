"""`bkd audit reanchor`: after the state database was rebuilt on purpose (moved
aside, restored from a copy), make the audit log's head record name the
database's newest entry again. Run with the daemon stopped: it takes the
same locks the daemon holds. The re-anchoring is itself an audit entry
(who, when, the old head and what the database held), so it cannot be done
quietly; a log whose hash chain is broken is refused."""

from __future__ import annotations

import json
import os

from ..config import Config
from ..infra import clock, logs
from ..infra.errors import StartupError
from ..infra.users import user_name
from ..state.audit import HEAD_NAME
from ..state.store import DATABASE_NAME, Store, StoreUnusable
from ..tree.ownership import lock_dir


async def reanchor(config: Config) -> str:
    """Re-anchor; the line to print. Raises StartupError with one line on failure."""
    for directory in (config.state_dir, config.backup_root):
        # As anyone else, the files it writes (the head record, SQLite's WAL) would lock the daemon out.
        owner = directory.stat().st_uid if directory.exists() else os.geteuid()
        if owner != os.geteuid():
            raise StartupError(f"{directory} belongs to {user_name(owner)}: run this as the user bkd runs "
                               f"as (sudo -u {user_name(owner)} bkd audit reanchor)")
    locks = [lock_dir(config.backup_root, "backup root")]  # the daemon must be stopped
    try:
        locks.append(lock_dir(config.state_dir, "state_dir"))
        try:
            store = await Store.open(config.state_dir / DATABASE_NAME)
        except StoreUnusable as e:
            raise StartupError(str(e)) from None
        try:
            uid = os.getuid()
            entry = await store.audit.reanchor(config.backup_root / HEAD_NAME, uid, user_name(uid),
                                               os.getpid(), clock.iso(clock.now()))
        except ValueError as e:
            raise StartupError(str(e)) from None
        finally:
            await store.close()
    finally:
        for fd in locks:
            os.close(fd)
    # The journal is the chain's witness: this entry starts a new chain there (auditwitness.py).
    logs.to_journal({"event": "audit.entry", "level": "info", "id": entry["id"], "hash": entry["hash"], "uid": uid,
                     "method": "audit.reanchor", "outcome": "ok", "anchor": (config.backup_root / HEAD_NAME).as_posix()})
    params = json.loads(entry["params"])
    old = params["previous_head"]
    return (f"re-anchored the audit log at entry {entry['id']} (the head record named "
            f"{'entry ' + str(old['id']) if old else 'nothing: it was missing'}; "
            f"the database ended at entry {params['database_head']['id']})")
