"""On a replica, what the last pull of a replicated host saw of the primary:
`meta/upstream.json` in the host's directory (written atomically by each
pull, read with the host's other facts). How far the copies are behind the
primary — the lag behind `replica_lag`, `bkctl replicas` and
`bkd_replica_lag_seconds` — is computed from it here, in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..infra import clock
from ..infra.fsutil import write_atomic
from .layout import HostDir, SnapshotName


@dataclass(frozen=True)
class Upstream:
    checked: datetime | None = None  # when the primary's snapshots of the host were last listed
    primary_newest: str | None = None  # the newest of them then (not dated in the future)
    caught_up: datetime | None = None  # the listing after which this copy last held everything to pull
    missing: bool = False  # the primary had no directory of the host at `checked`

    def lag(self, added: datetime | None, now: datetime) -> timedelta | None:
        """How long the copies may have been behind the primary: since the
        listing of the last pull that left nothing newer on the primary to
        pull (a primary that cannot be reached lets it grow), or, before
        any, since the host was first seen here; never negative."""
        since = self.caught_up or added
        return max(now - since, timedelta(0)) if since is not None else None


def read(host_dir: HostDir) -> Upstream | None:
    """None where no pull has written one (not a replicated host, or never pulled)."""
    try:
        data = json.loads(host_dir.upstream_file.read_bytes())
        newest = data.get("primary_newest")
        return Upstream(checked=clock.parse(data.get("checked")),
                        primary_newest=newest if isinstance(newest, str) and SnapshotName.parse(newest) else None,
                        caught_up=clock.parse(data.get("caught_up")), missing=data.get("missing") is True)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError):  # not what bkd wrote: as if never pulled
        return Upstream()


def write(host_dir: HostDir, upstream: Upstream) -> None:
    data = {"checked": clock.iso(upstream.checked), "primary_newest": upstream.primary_newest,
            "caught_up": clock.iso(upstream.caught_up), "missing": upstream.missing}
    write_atomic(host_dir.upstream_file, json.dumps(data, indent=1).encode())
