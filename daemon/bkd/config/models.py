"""The configuration schema (SPEC §3): pydantic models with the defaults."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    create_model,
)

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    text = value.strip() if isinstance(value, str) else None
    if text and _DURATION_PART.sub("", text) == "":
        seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
        if seconds > 0:
            return timedelta(seconds=seconds)
    raise ValueError(
        f"invalid duration {value!r}: use a number and a unit (s, m, h, d, w), "
        "e.g. '90s', '15m', '1h', '7d'"
    )


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]

HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")
# [user@]host:path — host may not contain '/' (that would be a local path) or ':'.
_REMOTE_SOURCE = re.compile(r"(?:[^@/:\s]+@)?(?:[^@/:\s\[\]]+|\[[0-9A-Fa-f:.]+\]):.+")


def _check_host_name(name: str) -> str:
    if not HOST_NAME.fullmatch(name):
        raise ValueError(f"invalid host name {name!r}: use only letters, digits, '.', '_' and '-'")
    if name.startswith("."):
        raise ValueError(f"invalid host name {name!r}: names starting with '.' are reserved for bkd")
    return name


def _check_source(source: str) -> str:
    if source.startswith("/") or _REMOTE_SOURCE.fullmatch(source):
        return source
    raise ValueError(
        f"invalid source {source!r}: use an absolute local path or [user@]host:path"
    )


def _check_absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, not {str(path)!r}")
    return path


AbsolutePath = Annotated[Path, AfterValidator(_check_absolute)]

# Excluded from every host unless [rsync].exclude is set. Patterns anchored
# with '/' are relative to the source root; 'dir/***'-free forms keep the
# directory itself (a mount point) while skipping its contents.
DEFAULT_EXCLUDES = [
    # pseudo-filesystems and mount points (when the source is '/')
    "/proc/*", "/sys/*", "/dev/*", "/run/*", "/mnt/*", "/media/*", "/lost+found",
    # temporary files and logs
    "/tmp/*", "/var/tmp/*", "/var/cache/*", "/var/log/journal/*", "*.tmp", "*.swp", "*~",
    # caches and build outputs that can be regenerated
    ".cache/", "__pycache__/", "*.pyc", "node_modules/", ".tox/", ".mypy_cache/",
    ".pytest_cache/", ".gradle/", ".ccache/",
    # version-control metadata
    ".git/", ".hg/", ".svn/",
    # virtual machine and container images
    "*.qcow2", "*.vmdk", "*.vdi", "*.vhdx", "/var/lib/docker/*", "/var/lib/libvirt/images/*",
]

DEFAULT_SSH_OPTIONS = [
    "ConnectTimeout=10",
    "ServerAliveInterval=15",
    "ServerAliveCountMax=3",
    "Ciphers=aes128-gcm@openssh.com,chacha20-poly1305@openssh.com",
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Schedule(Section):
    enabled: bool = True
    snapshot_every: Duration = timedelta(hours=1)
    archive_every: Duration = timedelta(hours=4)
    monthly_day: int = Field(1, ge=1, le=31)
    stale_factor: float = Field(2.0, gt=1)  # stale: newest snapshot older than this many intervals


class Retention(Section):
    hourly_hours: int = Field(720, ge=0)
    daily_days: int = Field(180, ge=0)
    monthly_months: int = Field(24, ge=0)


class Archive(Section):
    enabled: bool = True
    compression: Literal["gzip", "pigz", "zstd"] = "zstd"
    level: int = Field(3, ge=1, le=19)
    keep_days: int = Field(5, ge=0)


class Monthly(Section):
    enabled: bool = True
    keep_months: int = Field(24, ge=0)


class Rsync(Section):
    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDES))
    bwlimit: str = ""
    timeout: Duration = timedelta(minutes=5)


class Ssh(Section):
    config_file: str = ""
    identity_file: str = ""
    known_hosts_file: str = ""
    options: list[str] = Field(default_factory=lambda: list(DEFAULT_SSH_OPTIONS))


class Verify(Section):
    every: Duration = timedelta(days=1)  # the background pass over a sample of each host's latest snapshot
    sample_percent: float = Field(1.0, gt=0, le=100)  # of the files, least recently verified first


class Metrics(Section):
    textfile: str = ""  # node-exporter textfile (.prom), rewritten atomically after every run


class Alerts(Section):
    failures_before_alert: int = Field(1, ge=1, le=10000)  # consecutive failed runs before run_failed opens


class Access(Section):
    viewers: list[str] = Field(default_factory=lambda: ["bkd"])
    operators: list[str] = Field(default_factory=lambda: ["bkd-operator"])
    admins: list[str] = Field(default_factory=lambda: ["bkd-admin"])


def _override_of(model: type[Section]) -> type[Section]:
    """The same section with every key optional: a host's partial override."""
    fields = {}
    for name, field in model.model_fields.items():
        kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        fields[name] = (Optional[kind], None)
    return create_model(f"{model.__name__}Override", __base__=Section, **fields)


ScheduleOverride = _override_of(Schedule)
RetentionOverride = _override_of(Retention)
ArchiveOverride = _override_of(Archive)
RsyncOverride = _override_of(Rsync)

OVERRIDABLE = ("schedule", "retention", "archive", "rsync")


class Host(Section):
    name: Annotated[str, AfterValidator(_check_host_name)]
    source: Annotated[str, AfterValidator(_check_source)]
    exclude: list[str] = Field(default_factory=list)
    pre: str = ""  # shell command run before the snapshot; failing or timing out fails the run
    post: str = ""  # shell command run after the run, with its result in BKD_STATUS etc.
    hook_timeout: Duration = timedelta(minutes=15)
    schedule: Optional[ScheduleOverride] = None
    retention: Optional[RetentionOverride] = None
    archive: Optional[ArchiveOverride] = None
    rsync: Optional[RsyncOverride] = None

    @property
    def is_remote(self) -> bool:
        return not self.source.startswith("/")


class HostSettings(BaseModel):
    """One host's effective settings: the global sections with its overrides applied."""

    host: Host
    schedule: Schedule
    retention: Retention
    archive: Archive
    rsync: Rsync
    excludes: list[str]


class Config(Section):
    backup_root: AbsolutePath
    state_dir: AbsolutePath = Path("/var/lib/bkd")
    socket: AbsolutePath = Path("/run/bkd/bkd.sock")
    max_parallel_hosts: int = Field(4, ge=1)
    max_parallel_heavy: int = Field(1, ge=1)
    schedule: Schedule = Field(default_factory=Schedule)
    retention: Retention = Field(default_factory=Retention)
    archive: Archive = Field(default_factory=Archive)
    monthly: Monthly = Field(default_factory=Monthly)
    rsync: Rsync = Field(default_factory=Rsync)
    ssh: Ssh = Field(default_factory=Ssh)
    verify: Verify = Field(default_factory=Verify)
    metrics: Metrics = Field(default_factory=Metrics)
    alerts: Alerts = Field(default_factory=Alerts)
    access: Access = Field(default_factory=Access)
    host: list[Host] = Field(default_factory=list)

    def settings(self, host: Host) -> HostSettings:
        merged = {}
        for section in OVERRIDABLE:
            base = getattr(self, section)
            override = getattr(host, section)
            # Iterate, not model_dump(): dumping would serialise durations to strings.
            update = {k: v for k, v in override if v is not None} if override else {}
            merged[section] = base.model_copy(update=update)
        return HostSettings(host=host, excludes=merged["rsync"].exclude + host.exclude, **merged)

    def find_host(self, name: str) -> Host | None:
        return next((h for h in self.host if h.name == name), None)

    def cross_check(self) -> list[tuple[tuple, str]]:
        """Checks that span fields: (location, message) for each problem."""
        problems: list[tuple[tuple, str]] = []
        first_index: dict[str, int] = {}
        for index, host in enumerate(self.host):
            if host.name in first_index:
                problems.append(
                    (("host", index, "name"),
                     f"duplicate host name {host.name!r} (first defined at host[{first_index[host.name]}])")
                )
            else:
                first_index[host.name] = index
        # A host's archive is checked only where it overrides it, so a bad
        # global level is reported once, not once per host.
        scopes = [((), self.archive)] + [
            (("host", i), self.settings(h).archive) for i, h in enumerate(self.host) if h.archive
        ]
        for prefix, archive in scopes:
            if archive.compression in ("gzip", "pigz") and archive.level > 9:
                problems.append(
                    (prefix + ("archive", "level"),
                     f"{archive.compression} levels are 1-9, not {archive.level}")
                )
        return problems


RESTART_ONLY = ("backup_root", "state_dir", "socket")


def describe_changes(old: Config, new: Config) -> list[str]:
    """What a reload changes, one line each, for the caller and the log."""
    old_hosts = {h.name: h for h in old.host}
    new_hosts = {h.name: h for h in new.host}
    changes = [f"host {name} added" for name in new_hosts if name not in old_hosts]
    changes += [f"host {name} removed" for name in old_hosts if name not in new_hosts]
    changes += [f"host {name} changed" for name in new_hosts
                if name in old_hosts and new_hosts[name] != old_hosts[name]]
    changes += [f"{key} changed" for key in Config.model_fields
                if key != "host" and getattr(old, key) != getattr(new, key)]
    return changes
