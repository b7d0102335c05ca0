"""A host's unreleased anomalies and its prune hold (SPEC §7, §8), kept in
the host's `meta/hold.json`, written atomically: the backup root is the
truth, so a rebuilt database, a restart or a crash keeps the hold in force.

The record lists the suspect snapshots found since the last release, each
with the signals that made it suspect (numbers) and example file names
(admins only). `held` says whether pruning is held: it is when any of them
was found under `[anomaly] hold = true`. While held, nothing of the host
is deleted: no snapshot by retention or `bkctl prune`, no archive or
monthly copy by expiry. `bkctl hosts release` removes the record.

A record that cannot be read holds the host (the safe side) and says why;
a release removes it too."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..infra.fsutil import fsync_dir, write_atomic
from .layout import HostDir

VERSION = 1
MAX_BYTES = 4 * 1024 * 1024  # far above any record bkd writes; a larger file is not read
_locks: dict[Path, threading.Lock] = {}  # per record file: a release never races an anomaly's write
_locks_lock = threading.Lock()


@dataclass(frozen=True)
class Hold:
    held: bool  # pruning of the host is held
    since: str | None  # when the first unreleased suspect was found (ISO-8601)
    suspects: tuple[dict, ...]  # {snapshot, found, held, signals, examples}, oldest first
    problem: str | None = None  # the record could not be read: held, on the safe side

    @property
    def snapshots(self) -> list[str]:
        return [suspect["snapshot"] for suspect in self.suspects]


def _lock(path: Path) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(path, threading.Lock())


def _read(path: Path) -> Hold | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        return Hold(True, None, (), f"cannot read {path.name}: {e.strerror}")
    try:
        record = json.loads(data) if len(data) <= MAX_BYTES else None
        suspects = tuple(record["suspects"])
        if not all(isinstance(s, dict) and isinstance(s.get("snapshot"), str) for s in suspects):
            raise ValueError
        return Hold(bool(record["held"]), record.get("since"), suspects)
    except (ValueError, TypeError, KeyError):
        return Hold(True, None, (), f"{path.name} is not a hold record bkd wrote")


def read(host_dir: HostDir) -> Hold | None:
    """The host's unreleased anomalies, or None when there are none."""
    return _read(host_dir.hold_file)


def is_held(host_dir: HostDir) -> bool:
    hold = read(host_dir)
    return hold is not None and hold.held


def add(host_dir: HostDir, suspect: dict, held: bool, now: str, sync: bool = True) -> Hold:
    """Record a suspect snapshot (its name, signals and examples): the host's
    pruning is held from now on when held. sync=False leaves the flush to a
    syncfs the caller does next (a snapshot's commit)."""
    path = host_dir.hold_file
    with _lock(path):
        current = _read(path)
        suspects = (*(current.suspects if current else ()), {**suspect, "found": now, "held": held})
        hold = Hold(held or bool(current and current.held), current.since if current and current.since else now,
                    suspects)
        record = {"version": VERSION, "held": hold.held, "since": hold.since, "suspects": list(hold.suspects)}
        write_atomic(path, json.dumps(record, indent=1, ensure_ascii=True).encode(), sync=sync)
        return hold


def drop(host_dir: HostDir, snapshot: str) -> None:
    """Forget a suspect whose snapshot never became complete (its commit
    failed); the record goes when nothing else is in it."""
    path = host_dir.hold_file
    with _lock(path):
        current = _read(path)
        if current is None or current.problem or snapshot not in current.snapshots:
            return
        rest = [s for s in current.suspects if s["snapshot"] != snapshot]
        if not rest:
            path.unlink(missing_ok=True)
            return
        record = {"version": VERSION, "held": any(s.get("held") for s in rest), "since": rest[0]["found"],
                  "suspects": rest}
        write_atomic(path, json.dumps(record, indent=1, ensure_ascii=True).encode())


def release(host_dir: HostDir) -> Hold | None:
    """Lift the hold and forget the unreleased suspects (they stay marked
    suspect in their own records); what was released, or None."""
    path = host_dir.hold_file
    with _lock(path):
        current = _read(path)
        if current is None:
            return None
        os.unlink(path)
        fsync_dir(path.parent)
        return current
