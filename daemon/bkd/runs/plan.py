"""Planning a run: a pure function from (what was asked, the config of that
moment) to a frozen plan. A run is planned once, when it leaves the queue;
nothing it does afterwards reads the live config, so a reload never changes
a running plan."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bkctl.protocol import Kind

from ..config.models import Config, HostSettings, Replica
from ..restore.request import RestoreTarget


class Stage(StrEnum):
    PRE = "pre"
    SNAPSHOT = "snapshot"
    REPLICATE = "replicate"  # a replicated host's snapshot: pulled from its primary (replica/pull.py)
    PRUNE = "prune"
    POST = "post"
    ARCHIVE = "archive"
    MONTHLY = "monthly"
    RESTORE = "restore"


class Trigger(StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"


class Lane(StrEnum):
    """Busy means the same lane on the same host: a host's snapshot, its heavy
    work (archive, monthly copy) and a restore never wait for each other."""

    SNAPSHOT = "snapshot"
    HEAVY = "heavy"
    RESTORE = "restore"


LANES: dict[Kind, tuple[Lane, ...]] = {
    Kind.SNAPSHOT: (Lane.SNAPSHOT,),
    Kind.ARCHIVE: (Lane.HEAVY,),
    Kind.MONTHLY: (Lane.HEAVY,),
    Kind.ALL: (Lane.SNAPSHOT, Lane.HEAVY),
    Kind.RESTORE: (Lane.RESTORE,),
}

HEAVY_STAGES = frozenset({Stage.ARCHIVE, Stage.MONTHLY})


@dataclass(frozen=True)
class Request:
    """What was asked for one host, before it is planned."""

    host: str
    kind: Kind
    trigger: Trigger
    dry_run: bool = False
    restore: RestoreTarget | None = None
    snapshot: str | None = None  # heavy work: the complete snapshot it reads


@dataclass(frozen=True)
class Phase:
    """Stages that run under one lane's concurrency limit."""

    lane: Lane
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class RunPlan:
    job_id: int
    request: Request
    config: Config  # the whole config of the moment the run started (never mutated; reload swaps it)
    settings: HostSettings | None  # None only for a restore from a host the config no longer has
    phases: tuple[Phase, ...]
    upstream: tuple[Replica, str] | None = None  # a replicated host: its [[replica]] and the primary's host name

    @property
    def host(self) -> str:
        return self.request.host

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(stage for phase in self.phases for stage in phase.stages)


def stages_for(kind: Kind, dry_run: bool, pre: bool, post: bool, replicated: bool = False) -> tuple[Phase, ...]:
    """The phases of a run of kind. Hooks wrap a snapshot, not heavy work; a
    dry run only asks rsync what it would do. A replicated host's snapshot
    is pulled from its primary (replicate)."""
    take = Stage.REPLICATE if replicated else Stage.SNAPSHOT
    if kind is Kind.RESTORE:
        return (Phase(Lane.RESTORE, (Stage.RESTORE,)),)
    if kind is Kind.ARCHIVE:
        return (Phase(Lane.HEAVY, (Stage.ARCHIVE,)),)
    if kind is Kind.MONTHLY:
        return (Phase(Lane.HEAVY, (Stage.MONTHLY,)),)
    if dry_run:
        return (Phase(Lane.SNAPSHOT, (take,)),)
    snapshot = ((Stage.PRE,) if pre else ()) + (take, Stage.PRUNE) + ((Stage.POST,) if post else ())
    phases = (Phase(Lane.SNAPSHOT, snapshot),)
    if kind is Kind.ALL:
        phases += (Phase(Lane.HEAVY, (Stage.ARCHIVE, Stage.MONTHLY)),)
    return phases


def plan_run(job_id: int, request: Request, config: Config) -> RunPlan | None:
    """The plan of one host's run under config, or None when config no longer
    has the host (reload removed it while the run was queued: it is skipped)."""
    settings = config.hosts.get(request.host)
    if settings is None:
        if request.kind is Kind.RESTORE:  # a removed host's snapshots can still be restored
            return RunPlan(job_id, request, config, None, stages_for(Kind.RESTORE, False, False, False))
        return None
    host = settings.host
    upstream = config.upstream_of(host.name)
    phases = stages_for(request.kind, request.dry_run, bool(host.pre), bool(host.post), upstream is not None)
    return RunPlan(job_id, request, config, settings, phases, upstream)
