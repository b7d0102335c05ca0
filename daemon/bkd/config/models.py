"""The configuration schema (SPEC §3): pydantic models with the defaults and
the ranges. Models are strict (a TOML string is not a number), closed
(unknown keys are errors) and frozen (a run keeps the snapshot it started
with; reload swaps the whole object)."""

from __future__ import annotations

import fnmatch
import functools
import math
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time, timedelta, timezone, tzinfo
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal, Optional, Union
from urllib.parse import urlsplit

from bkctl import protocol
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    create_model,
    model_validator,
)

from .patterns import on_host
from .remote import Remote, parse_source

# ---------------------------------------------------------------- durations

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MIN_DURATION = timedelta(seconds=1)
MAX_DURATION = timedelta(days=3650)  # "10 years"; far below timedelta's own limit


def parse_duration(value: object) -> timedelta:
    """'90s', '15m', '1h30m', '7d', '2w' -> timedelta, within 1s ... 3650d.
    Any other input is a ValueError (never an OverflowError)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        text = value.strip() if isinstance(value, str) else None
        if not (text and _DURATION_PART.sub("", text) == ""):
            raise ValueError(
                f"invalid duration {value!r}: use a number and a unit (s, m, h, d, w), "
                "e.g. '90s', '15m', '1h', '7d'"
            )
        # Exact Python ints, so no overflow; a number longer than 12 digits is
        # out of range anyway (and int() refuses more than 4300).
        parts = [(n.lstrip("0") or "0", u) for n, u in _DURATION_PART.findall(text)]
        seconds = math.inf if any(len(n) > 12 for n, _ in parts) else \
            sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not MIN_DURATION.total_seconds() <= seconds <= MAX_DURATION.total_seconds():
        raise ValueError(f"invalid duration {_shorten(value)!r}: must be from 1s to 10 years (3650d)")
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def _parse_optional_duration(value: object) -> timedelta | None:
    return None if value == "" or value is None else parse_duration(value)


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
# "" (stored as None) means "not set"; the key's documentation says what that does.
OptionalDuration = Annotated[
    Optional[timedelta],
    BeforeValidator(_parse_optional_duration),
    PlainSerializer(lambda v: "" if v is None else format_duration(v), return_type=str),
]

# ------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of a number (low excluded when low_open). Kept in the
    field's metadata so docs/configuration.md can be checked against it."""

    low: float
    high: float
    low_open: bool = False

    def __call__(self, value: float) -> float:
        low_ok = value > self.low if self.low_open else value >= self.low
        if not (low_ok and value <= self.high):  # also false for nan
            raise ValueError(f"must be {self.describe()}, not {value!r}")
        return value

    def describe(self) -> str:
        if self.low_open:
            return f"more than {self.low:g} and at most {self.high:g}"
        return f"from {self.low:g} to {self.high:g}"


def ranged(kind: type, low: float, high: float, low_open: bool = False):
    bounds = Range(low, high, low_open)
    return Annotated[kind, bounds, AfterValidator(bounds)]


# ------------------------------------------------------------------ strings


def _shorten(value: object, limit: int = 40) -> object:
    return value[:limit] + "…" if isinstance(value, str) and len(value) > limit else value


HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")
HOST_NAME_MAX = 64  # it names directories and archive files; 250 broke every archive
REPLICA_NAME = re.compile(r"[A-Za-z0-9_-]+")  # no dots: its hosts are named REPLICA.HOST
REPLICA_NAME_MAX = 32


@dataclass(frozen=True)
class NameRule:
    pattern: re.Pattern
    allowed: str  # the characters, as people read them
    longest: int


HOST_RULE = NameRule(HOST_NAME, "letters, digits, '.', '_' and '-'", HOST_NAME_MAX)
REPLICA_RULE = NameRule(REPLICA_NAME, "letters, digits, '_' and '-' (no dots: its hosts are named NAME.HOST here)",
                        REPLICA_NAME_MAX)


def _check_name(name: str, what: str = "host name", rule: NameRule = HOST_RULE) -> str:
    if not name:
        raise ValueError(f"a {what} cannot be empty")
    if not rule.pattern.fullmatch(name):
        raise ValueError(f"invalid {what} {_shorten(name)!r}: use only {rule.allowed}")
    if name.startswith("."):
        raise ValueError(f"invalid {what} {name!r}: names starting with '.' are reserved for bkd")
    if len(name) > rule.longest:
        raise ValueError(f"invalid {what} {_shorten(name)!r}: at most {rule.longest} characters, "
                         f"not {len(name)}")
    return name


def _follows(name: object, what: str, rule: NameRule) -> bool:
    try:
        return isinstance(name, str) and _check_name(name, what, rule) == name
    except ValueError:
        return False


def valid_host_name(name: object) -> bool:
    """The host-name rule of the config, for every host parameter that arrives over RPC."""
    return _follows(name, "host name", HOST_RULE)


def valid_replica_name(name: object) -> bool:
    return _follows(name, "replica name", REPLICA_RULE)


HostName = Annotated[str, AfterValidator(_check_name)]
SinkName = Annotated[str, AfterValidator(lambda n: _check_name(n, "sink name"))]
ReplicaName = Annotated[str, AfterValidator(lambda n: _check_name(n, "replica name", REPLICA_RULE))]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_source(source: str, local: str | None = None) -> str:
    """A source: [user@]host:/path, or an absolute local path unless `local`
    says why one is refused."""
    if _CONTROL.search(source):
        problem = "it contains control characters"
    elif local is not None and (source.startswith("/") or ":" not in source.split("/", 1)[0]):
        problem = local  # a local path where only a remote one will do
    else:
        try:
            parse_source(source)
            return source
        except ValueError as e:
            problem = str(e)
    raise ValueError(f"invalid source {source!r}: {problem}")


def _check_primary(source: str) -> str:
    """A [[replica]] source: the primary's backup root over SSH (never a local path)."""
    return _check_source(source, "a replica pulls from another bkd server over SSH: use [user@]host:/path of its "
                                 "backup_root")


def _check_glob(pattern: str) -> str:
    if not pattern or _CONTROL.search(pattern) or "/" in pattern:
        raise ValueError(f"invalid host pattern {_shorten(pattern)!r}: a shell glob on a host name "
                         "(e.g. \"*\" or \"web*\"), without '/' or control characters")
    return pattern


def _check_absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, not {str(path)!r}")
    if "\0" in str(path):
        raise ValueError("a path cannot contain a NUL character")
    return path


def _check_optional_path(text: str) -> str:
    return text and str(_check_absolute(Path(text)))


def _check_one_line(text: str) -> str:
    if _CONTROL.search(text):
        raise ValueError(f"control characters are not allowed: {text!r}")
    return text


def _check_server_name(text: str) -> str:
    if len(text) > 253:  # a DNS name's limit; it goes into mail subjects
        raise ValueError(f"at most 253 characters, not {len(text)}")
    return _check_one_line(text)


# Paths accept TOML strings even though the models are strict.
AbsolutePath = Annotated[Path, Field(strict=False), AfterValidator(_check_absolute)]
# "" (unset) or an absolute path; kept a string so `if value:` reads naturally.
OptionalPath = Annotated[str, AfterValidator(_check_optional_path)]
OneLine = Annotated[str, AfterValidator(_check_one_line)]


@dataclass(frozen=True)
class NamedFile:
    """In the metadata of a key that names a file, so that check-config finds
    every such key: "read" (bkd or ssh reads it), "secret" (read, and no one
    else should), "key" (an ssh private key: ssh ignores one that others may
    read), "written" (bkd writes it: its directory must exist), "source" (a
    host's source: a local one is a directory)."""

    role: Literal["read", "secret", "key", "written", "source"]


ReadFile = Annotated[OptionalPath, NamedFile("read")]
SecretFile = Annotated[OptionalPath, NamedFile("secret")]
PrivateKey = Annotated[OptionalPath, NamedFile("key")]
WrittenFile = Annotated[OptionalPath, NamedFile("written")]


# --------------------------------------------------------------------- URLs

REDACTED = "...redacted..."


def redact_url(url: str) -> str:
    """A URL that may carry a token in its path, query or userinfo, safe to
    show: scheme, host and port kept, everything after replaced by REDACTED,
    still a valid URL (so `config show` output loads again). '' stays ''."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    host = parts.netloc.rpartition("@")[2]
    if not parts.scheme or not host:
        return REDACTED
    has_secret = parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc
    return f"{parts.scheme}://{host}/{REDACTED}" if has_secret else f"{parts.scheme}://{host}"


def _check_url(url: str) -> str:
    if url == "":
        return url
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a bad port
    except ValueError:
        parts = None
    if _CONTROL.search(url) or " " in url:
        problem = "it contains spaces or control characters"
    elif parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        problem = "use http://HOST/PATH or https://HOST/PATH"
    else:
        return url
    # The URL itself may hold a token: the message shows it redacted.
    raise ValueError(f"invalid URL {redact_url(url)!r}: {problem}")


# Shown redacted wherever the config is dumped (config show, hosts, logs).
Url = Annotated[str, AfterValidator(_check_url), PlainSerializer(redact_url, return_type=str)]


def _nonempty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


# ------------------------------------------------------------------- alerts

ALERT_KINDS = tuple(str(kind) for kind in protocol.AlertKind)


def _check_kind(kind: str) -> str:
    if kind not in ALERT_KINDS:
        raise ValueError(f"unknown alert kind {kind!r}: use one of {', '.join(ALERT_KINDS)}")
    return kind


AlertKind = Annotated[str, AfterValidator(_check_kind)]


def _check_time_of_day(value: object) -> time:
    if isinstance(value, time) and value.second == value.microsecond == 0 and value.tzinfo is None:
        return value  # a TOML local time, 07:00:00
    match = re.fullmatch(r"(\d\d):(\d\d)", value) if isinstance(value, str) else None
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        shown = value.isoformat() if isinstance(value, time) else value
        raise ValueError(f"invalid time of day {shown!r}: use HH:MM, 00:00 to 23:59")
    return time(int(match[1]), int(match[2]))


TimeOfDay = Annotated[
    time, BeforeValidator(_check_time_of_day), PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str)
]


def zone(name: str) -> tzinfo:
    """The time zone of a valid name. UTC needs no tzdata (minimal systems lack it)."""
    if name == "UTC":
        return timezone.utc
    return zoneinfo.ZoneInfo(name)


def _check_zone(name: str) -> str:
    try:
        zone(name)
    except (ValueError, KeyError, OSError):  # KeyError: ZoneInfoNotFoundError
        raise ValueError(f"unknown time zone {name!r}: use a name like 'UTC' or 'Europe/Berlin'") from None
    return name


_ADDRESS = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+")


def _check_address(address: str) -> str:
    if not _ADDRESS.fullmatch(address):
        raise ValueError(f"invalid mail address {address!r}: use user@domain")
    return address


_BWLIMIT = re.compile(r"(\d+(\.\d+)?|\.\d+)([kmgtp](i?b)?|b)?", re.IGNORECASE)


def _check_bwlimit(value: str) -> str:
    if value and not _BWLIMIT.fullmatch(value):
        raise ValueError(f"invalid bandwidth limit {value!r}: use a number with an optional unit, e.g. '10m'")
    return value


# ----------------------------------------------------------------- defaults

# Added to every host's excludes while [rsync] exclude_defaults is true.
# Patterns starting with '/' are paths on the host, anchored for each source
# by default_excludes; the others match at any depth. 'dir/*' forms keep the
# directory itself (a mount point) while skipping its contents.
DEFAULT_EXCLUDES = (
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
)


def default_excludes(source_path: str) -> list[str]:
    """DEFAULT_EXCLUDES as rsync gets them for a source at source_path (on its
    host): the host paths the source holds anchored at its root, the rest as
    they are."""
    patterns = (on_host(p, source_path) if p.startswith("/") else p for p in DEFAULT_EXCLUDES)
    return [p for p in patterns if p is not None]


DEFAULT_SSH_OPTIONS = (
    "ConnectTimeout=10",
    "ServerAliveInterval=15",
    "ServerAliveCountMax=3",
    "Ciphers=aes128-gcm@openssh.com,chacha20-poly1305@openssh.com",
)

# ----------------------------------------------------------------- sections
#
# Every key has a one-line description and every table a docstring: `bkd
# config sample`, `bkd init` and the bkd.toml(5) man page are written from
# them (config/schema.py). A table with required keys gives example values
# for them (example()), which the sample shows.


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def example(**values: object) -> ConfigDict:
    """A table's example values for its required keys, as `bkd config sample` shows them."""
    return ConfigDict(json_schema_extra={"examples": [values]})


class History(Section):
    """Job history in the state database, and the copy of that database in the backup root."""

    keep: Duration = Field(timedelta(days=400), description=(
        "job history older than this is pruned in the background (counts are kept)"))
    copy_every: Duration = Field(timedelta(minutes=5), description=(
        "a copy of the state database for replicas, in {backup_root}/.bkd-state/: at most this often"))


class Rpc(Section):
    """Limits of the control socket."""

    max_connections: ranged(int, 1, 65536) = Field(256, description=(
        "socket connections in total; further ones are refused at once"))
    max_connections_per_uid: ranged(int, 1, 65536) = Field(32, description=(
        "socket connections per client uid; at most max_connections"))
    idle_timeout: Duration = Field(timedelta(minutes=10), description=(
        "a connection with no request and no subscription is closed after this"))
    max_in_flight: ranged(int, 1, 1024) = Field(8, description=(
        "requests of one connection answered at once; more wait unread (backpressure)"))
    unread_grace: Duration = Field(timedelta(seconds=30), description=(
        "a connection that leaves its answers or events unread this long is closed"))


class Schedule(Section):
    """When work runs; a host may override any of these in its [host.schedule]."""

    enabled: bool = Field(True, description="false: only manual runs (for tests and maintenance)")
    snapshot_every: Duration = Field(timedelta(hours=1), description="the interval between snapshots of a host")
    archive_every: Duration = Field(timedelta(hours=4), description=(
        "an archive of the newest snapshot once the newest archive's snapshot is this old"))
    monthly_day: ranged(int, 1, 31) = Field(1, description=(
        "the day of the month for the golden copy (the month's last day if shorter)"))
    stale_factor: ranged(float, 1, 1000) = Field(2.0, description=(
        "a host is stale when its newest snapshot is older than this many snapshot_every"))


class Retention(Section):
    """Which snapshots are kept: tiered, in one oldest-first pass; a host may override any of these in its
    [host.retention]."""

    hourly_hours: ranged(int, 0, 876000) = Field(720, description="keep every snapshot younger than this many hours")
    daily_days: ranged(int, 0, 36500) = Field(180, description=(
        "then the earliest snapshot of each (UTC) day younger than this many days"))
    monthly_months: ranged(int, 0, 1200) = Field(24, description=(
        "then the earliest of each month younger than this many months; older ones are deleted"))


class Archive(Section):
    """Compressed tar archives of the newest snapshot; a host may override any of these in its [host.archive]."""

    enabled: bool = Field(True, description="make archives (old ones expire by keep_days either way)")
    compression: Literal["gzip", "pigz", "zstd"] = Field("zstd", description=(
        "tar piped into gzip, pigz (all cores) or zstd -T0 (all cores)"))
    level: ranged(int, 1, 19) = Field(3, description=(  # gzip and pigz: 1-9, a cross-field check
        "the compression level; gzip and pigz take 1-9"))
    keep_days: ranged(int, 0, 36500) = Field(5, description=(
        "archives older than this many days are removed (the newest is kept)"))


class Monthly(Section):
    """Monthly golden hardlink copies of a snapshot."""

    enabled: bool = Field(True, description="make monthly copies")
    keep_months: ranged(int, 0, 1200) = Field(24, description=(
        "copies older than this many months are removed (the newest is kept)"))


class Rsync(Section):
    """How rsync pulls the sources; a host may override any of these in its [host.rsync]."""

    exclude_defaults: bool = Field(True, description=(  # add DEFAULT_EXCLUDES
        "add the built-in excludes: caches, build outputs, VCS dirs, VM images, temp files, pseudo-fs"))
    exclude: list[str] = Field(default_factory=list, description=(
        "your own rsync patterns, added to the defaults; a leading / anchors one at the source's root"))
    bwlimit: Annotated[str, AfterValidator(_check_bwlimit)] = Field("", description=(
        'passed to rsync --bwlimit when set, e.g. "10m"'))
    timeout: Duration = Field(timedelta(minutes=5), description="rsync --timeout: no I/O for this long fails the run")


class Ssh(Section):
    """How ssh reaches the sources: BatchMode=yes and StrictHostKeyChecking=yes are always passed."""

    config_file: ReadFile = Field("", description="an ssh_config file (host aliases, ports, users), passed as ssh -F")
    identity_file: PrivateKey = Field("", description="the private key bkd logs in with, passed as ssh -i")
    known_hosts_file: ReadFile = Field("", description=(
        "the host keys bkd trusts (UserKnownHostsFile); a host key is never accepted unseen"))
    restore_identity_file: PrivateKey = Field("", description=(
        "the key restores to host:path log in with (the backup key is read-only); \"\" = none"))
    options: list[OneLine] = Field(default_factory=lambda: list(DEFAULT_SSH_OPTIONS), description=(
        "each passed as ssh -o VALUE"))


class Verify(Section):
    """The background pass that re-hashes a sample of each host's latest snapshot against its manifest."""

    every: Duration = Field(timedelta(days=1), description="how often the pass runs")
    sample_percent: ranged(float, 0, 100, low_open=True) = Field(1.0, description=(
        "the share of files per pass, least recently verified first; a mismatch raises an alert"))


class Anomaly(Section):
    """Ransomware and mass-change detection: each snapshot's change profile against the host's own
    baseline (docs/watching.md); a host may override any of these in its [host.anomaly]."""

    enabled: bool = Field(True, description=(
        "judge every snapshot; false: profiles are still recorded, nothing is judged"))
    baseline: ranged(int, 3, 1000) = Field(30, description=(
        "compare each snapshot with this many earlier ones of the host (suspect ones never count)"))
    min_files: ranged(int, 1, 10**9) = Field(200, description=(
        "a signal involving fewer files than this is never an anomaly"))
    factor: ranged(float, 2, 1000) = Field(10.0, description=(
        "a spike is above the baseline's median by this many times its spread (MAD, with a floor)"))
    hold: bool = Field(True, description=(
        "after an anomaly, delete nothing of the host's until an admin runs bkctl hosts release"))


class Metrics(Section):
    """Prometheus metrics as a node-exporter textfile (bkctl metrics prints them too)."""

    textfile: WrittenFile = Field("", description=(
        'the .prom file, rewritten atomically within seconds of a change and every minute; "" = none'))


class Alerts(Section):
    """When alerts open, and how often their notifications are repeated."""

    failures_before_alert: ranged(int, 1, 1000) = Field(1, description=(
        "consecutive failed runs before run_failed opens"))
    hung_after: OptionalDuration = Field(None, description=(  # None: a run is hung once past its next slot
        'a run still going after this long is hung; "" = once it is past its next slot'))
    disk_free_percent: ranged(float, 0, 100) = Field(10.0, description=(
        "a disk alert when the backup root's free space or free inodes fall below this share"))
    disk_full_days: ranged(int, 1, 3650) = Field(14, description=(
        "... or when the growth trend fills the backup root within this many days"))
    remind_every: Duration = Field(timedelta(days=1), description=(
        "repeat the notification of an open, unacknowledged alert this often"))
    retry_after: Duration = Field(timedelta(seconds=30), description=(
        "a failed notification's first retry; then twice as long each time (at most 1h), for a day"))


class Sink(Section):
    """A notification sink: any number of [[notify]] tables; type decides which keys a sink takes."""

    name: SinkName = Field(description="unique; what report.notify and bkctl notify test SINK use")
    type: str = Field(description="email or webhook: which keys the sink takes")
    kinds: list[AlertKind] = Field(default_factory=list, description=(
        "alert kinds this sink receives; [] = every kind"))
    hosts: list[HostName] = Field(default_factory=list, description=(
        "hosts whose alerts this sink receives; [] = every host"))


class EmailSink(Sink):
    """An email sink: alerts as mail through an SMTP server."""

    model_config = example(name="ops-mail", type="email", to=["ops@example.org"])

    type: Literal["email"]
    smtp_host: Annotated[OneLine, AfterValidator(_nonempty)] = Field("localhost", description="the SMTP server")
    smtp_port: ranged(int, 1, 65535) = Field(25, description="its port")
    security: Literal["none", "starttls", "tls"] = Field("none", description="transport security")
    username: OneLine = Field("", description="the SMTP login; needs password_file")
    password_file: SecretFile = Field("", description="the file holding the SMTP password")
    from_: Annotated[str, AfterValidator(lambda a: a and _check_address(a))] = Field(
        "", alias="from", description='the sender; "" = bkd@ and the server name')
    to: list[Annotated[str, AfterValidator(_check_address)]] = Field(min_length=1, description="the recipients")


class WebhookSink(Sink):
    """A webhook sink: alerts as JSON POSTed to a URL."""

    model_config = example(name="chat", type="webhook", url="https://hooks.example.org/bkd")

    type: Literal["webhook"]
    url: Annotated[Url, AfterValidator(_nonempty)] = Field(description=(
        "where the alert's JSON is POSTed; shown redacted"))
    secret_file: SecretFile = Field("", description=(
        'the file holding the HMAC-SHA256 key for X-Bkd-Signature; "" = unsigned'))


NotifySink = Annotated[Union[EmailSink, WebhookSink], Field(discriminator="type")]
SINK_TYPES = ("email", "webhook")


class Heartbeat(Section):
    """The backup server's own dead-man switch."""

    url: Url = Field("", description='pinged every `every` while the daemon is healthy (shown redacted); "" = none')
    every: Duration = Field(timedelta(minutes=5), description="the interval of the pings")


class Report(Section):
    """The daily fleet digest."""

    enabled: bool = Field(False, description="send the digest every day")
    at: TimeOfDay = Field(time(7, 0), description="the time of day to send it, in timezone")
    timezone: Annotated[str, AfterValidator(_check_zone)] = Field("UTC", description=(
        'a zoneinfo name, e.g. "Europe/Berlin"'))
    notify: list[str] = Field(default_factory=list, description=(  # sink names
        "the [[notify]] sinks that receive the digest; at least one when enabled"))

    @property
    def zone(self) -> tzinfo:
        return zone(self.timezone)


class Access(Section):
    """Which Unix groups get which role on the socket; root and bkd's own uid are admins."""

    viewers: list[str] = Field(default_factory=lambda: ["bkd"], description=(
        "groups whose members may read status, lists and alerts"))
    operators: list[str] = Field(default_factory=lambda: ["bkd-operator"], description=(
        "groups whose members may also run, cancel, verify, acknowledge and silence"))
    admins: list[str] = Field(default_factory=lambda: ["bkd-admin"], description=(
        "groups whose members may do everything: browse, restore, prune, reload"))
    remote_restorers: list[str] = Field(default_factory=list, description=(
        "groups that may restore to host:path (written with bkd's SSH key: root on the sources)"))

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
AnomalyOverride = _override_of(Anomaly)

OVERRIDABLE = ("schedule", "retention", "archive", "rsync", "anomaly")


class Host(Section):
    """A host to back up: any number of [[host]] tables, here or in conf.d/*.toml."""

    model_config = example(name="web1", source="web1:/home/")

    name: HostName = Field(description="names {backup_root}/{name}/ and the archives; unique")
    source: Annotated[str, AfterValidator(_check_source), NamedFile("source")] = Field(description=(
        "what to back up: [user@]host:/path over SSH, or an absolute local path"))
    exclude: list[str] = Field(default_factory=list, description=(
        "rsync patterns added to the defaults and rsync.exclude, anchored at the source's root"))
    ping_url: Url = Field("", description=(
        'a healthchecks-style dead-man URL: URL/start, URL, URL/fail (shown redacted); "" = none'))
    pre: str = Field("", description="a shell command before a snapshot run; failing or timing out fails the run")
    post: str = Field("", description="a shell command after the run, told its result in BKD_STATUS")
    hook_timeout: Duration = Field(timedelta(minutes=15), description=(
        "each hook's limit; its process group is stopped after it"))
    rsync_path: OneLine = Field("", description=(
        "the command that starts rsync on the host (--rsync-path), e.g. \"sudo -n rsync\"; \"\" = rsync"))
    schedule: Optional[ScheduleOverride] = None
    retention: Optional[RetentionOverride] = None
    archive: Optional[ArchiveOverride] = None
    rsync: Optional[RsyncOverride] = None
    anomaly: Optional[AnomalyOverride] = None

    @property
    def remote(self) -> Remote | None:
        """Where the source is over SSH; None for a local path."""
        return parse_source(self.source)

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    @property
    def path(self) -> str:
        """The source's path on its host (this machine for a local source)."""
        remote = self.remote
        return remote.path if remote else self.source


class HostSettings(Section):
    """One host's effective settings: the global sections with its overrides applied."""

    host: Host
    schedule: Schedule
    retention: Retention
    archive: Archive
    rsync: Rsync
    anomaly: Anomaly
    excludes: list[str]  # what rsync gets: default_excludes (if enabled), rsync.exclude, the host's exclude


class Replica(Section):
    """Another bkd server (a primary) whose hosts' snapshots this server keeps a second copy of, pulled over
    SSH: any number of [[replica]] tables. Its hosts are named NAME.HOST here, each with its own schedule lane,
    retention and alerts; the primary grants a read-only key and holds nothing of this server's."""

    model_config = example(name="primary1", source="bkd-primary:/srv/bkd/")

    name: ReplicaName = Field(description=(
        "names its hosts here as NAME.HOST: 1-32 letters, digits, '_' and '-', no dots; unique"))
    source: Annotated[str, AfterValidator(_check_primary)] = Field(description=(
        "the primary's backup_root over SSH: [user@]host:/path ([ssh] rules apply)"))
    hosts: list[Annotated[str, AfterValidator(_check_glob)]] = Field(
        default_factory=lambda: ["*"], min_length=1, description=(
            "which of the primary's hosts to copy: shell globs on the host name"))
    every: Duration = Field(timedelta(hours=1), description=(
        "how often each of its hosts is pulled, and its host list and state database read"))
    lag_after: OptionalDuration = Field(None, description=(
        'replica_lag opens when a host\'s copies are this far behind the primary; "" = 2 x every'))
    retention: Optional[RetentionOverride] = None

    @property
    def remote(self) -> Remote:
        return Remote.parse(self.source)

    @property
    def lag_limit(self) -> timedelta:
        return self.lag_after if self.lag_after is not None else 2 * self.every

    def covers(self, host: str) -> bool:
        """Whether the primary's host of that name is copied here."""
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts)

    def host_name(self, upstream: str) -> str:
        return f"{self.name}.{upstream}"

    def host_path(self, upstream: str, *below: str) -> str:
        """A path under the primary's directory of host upstream (its backup root's {upstream}/), with a
        trailing slash: the contents of that directory."""
        return "/".join([self.remote.path.rstrip("/"), upstream, *below]) + "/"

    def host(self, upstream: str) -> Host | None:
        """The host this server keeps of the primary's host upstream: a host whose source is the primary's
        directory of it, pulled every `every`, kept by the replica's own retention, nothing excluded (a
        snapshot is copied as it is). None for a name that cannot be a host here (too long, say)."""
        name = self.host_name(upstream)
        if not (valid_host_name(upstream) and valid_host_name(name) and self.covers(upstream)):
            return None
        return Host(name=name, source=self.remote.at(self.host_path(upstream)),
                    schedule=ScheduleOverride(snapshot_every=self.every), retention=self.retention,
                    rsync=RsyncOverride(exclude_defaults=False, exclude=[]))


class Config(Section):
    """Where bkd keeps its data and how much it does at once; then a table per subject."""

    model_config = example(backup_root="/srv/bkd")

    backup_root: AbsolutePath = Field(description=(
        "snapshots, archives and monthly copies, in {backup_root}/{host}/ (created 0700)"))
    state_dir: AbsolutePath = Field(Path("/var/lib/bkd"), description=(
        "the SQLite history and the daemon's state (created 0700)"))
    socket: AbsolutePath = Field(Path("/run/bkd/bkd.sock"), description="the control socket bkctl talks to")
    max_parallel_hosts: ranged(int, 1, 1000) = Field(4, description="snapshot runs at once")
    max_parallel_heavy: ranged(int, 1, 1000) = Field(1, description=(
        "archive and monthly work at once (it competes for the same disks and cores)"))
    server_name: Annotated[str, AfterValidator(_check_server_name)] = Field("", description=(
        'how notifications name this server; "" = the machine\'s hostname'))
    history: History = Field(default_factory=History)
    rpc: Rpc = Field(default_factory=Rpc)
    schedule: Schedule = Field(default_factory=Schedule)
    retention: Retention = Field(default_factory=Retention)
    archive: Archive = Field(default_factory=Archive)
    monthly: Monthly = Field(default_factory=Monthly)
    rsync: Rsync = Field(default_factory=Rsync)
    ssh: Ssh = Field(default_factory=Ssh)
    verify: Verify = Field(default_factory=Verify)
    anomaly: Anomaly = Field(default_factory=Anomaly)
    metrics: Metrics = Field(default_factory=Metrics)
    alerts: Alerts = Field(default_factory=Alerts)
    notify: list[NotifySink] = Field(default_factory=list)
    heartbeat: Heartbeat = Field(default_factory=Heartbeat)
    report: Report = Field(default_factory=Report)
    access: Access = Field(default_factory=Access)
    host: list[Host] = Field(default_factory=list)
    replica: list[Replica] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_fields(self, info: ValidationInfo) -> Config:
        # load_config runs cross_check on the raw data itself, so that these
        # problems are reported together with per-key ones; anyone else
        # building a Config gets them here.
        if not (info.context or {}).get("cross_checked"):
            problems = cross_check(self.model_dump(mode="json", by_alias=True, exclude_none=True))
            if problems:
                raise ValueError("; ".join(f"{format_key(loc)}: {msg}" for loc, msg in problems))
        return self

    @functools.cached_property
    def hosts(self) -> Mapping[str, HostSettings]:
        """Each host's effective settings by name, in config order: the global
        sections with its overrides applied. Built once per config (a config
        is frozen; reload makes a new one), since `status`, the schedule and
        every run ask for them; a host the config does not have is not in it."""
        return MappingProxyType({host.name: self._settings_of(host) for host in self.host})

    def _settings_of(self, host: Host) -> HostSettings:
        merged = {}
        for section in OVERRIDABLE:
            base = getattr(self, section)
            override = getattr(host, section)
            # Iterate, not model_dump(): dumping would serialise durations to strings.
            update = {k: v for k, v in override if v is not None} if override else {}
            merged[section] = base.model_copy(update=update)
        rsync = merged["rsync"]
        defaults = default_excludes(host.path) if rsync.exclude_defaults else []
        return HostSettings(host=host, excludes=defaults + rsync.exclude + host.exclude, **merged)

    def model_copy(self, *, update: Mapping | None = None, deep: bool = False) -> Config:
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("hosts", None)  # built again from the copy's own sections and hosts
        return copy

    def find_sink(self, name: str) -> EmailSink | WebhookSink | None:
        return next((s for s in self.notify if s.name == name), None)

    def find_replica(self, name: str) -> Replica | None:
        return next((r for r in self.replica if r.name == name), None)

    def upstream_of(self, host: str) -> tuple[Replica, str] | None:
        """For a replicated host (NAME.HOST of a configured [[replica]]): the replica and the primary's
        name of the host; None for any other host."""
        prefix, dot, upstream = host.partition(".")
        replica = self.find_replica(prefix) if dot and upstream else None
        return (replica, upstream) if replica is not None else None

    def with_replicated(self, known: Mapping[str, object]) -> Config:
        """This config with the hosts of each [[replica]] that are known (replica name → the primary's host
        names, as listed there or found here) added after the configured ones."""
        added = [host for replica in self.replica for upstream in sorted(set(known.get(replica.name, ())))
                 if (host := replica.host(upstream)) is not None]
        return self.model_copy(update={"host": [*self.host, *added]}) if added else self


def format_key(loc: tuple) -> str:
    """('host', 1, 'name') -> 'host[1].name'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _table(data: Mapping, key: str) -> Mapping:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _tables(data: Mapping, key: str) -> list[tuple[int, Mapping]]:
    value = data.get(key)
    items = value if isinstance(value, list) else []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, Mapping)]


def _strings(value: object) -> list[tuple[int, str]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)] if isinstance(value, list) else []


def _duplicates(items: list[tuple[int, Mapping]], prefix: str, what: str, valid, refer) -> list[tuple[tuple, str]]:
    problems, first = [], {}
    for index, item in items:
        name = item.get("name")
        if not valid(name):
            continue  # reported by the per-key check
        if name in first:
            here = (prefix, index, "name")
            problems.append((here, f"duplicate {what} {name!r} "
                                   f"(first defined at {refer((prefix, first[name]), here)})"))
        else:
            first.setdefault(name, index)
    return problems


def _same_file(ref: tuple, at: tuple) -> str:
    return format_key(ref)


def cross_check(data: Mapping, refer=_same_file) -> list[tuple[tuple, str]]:
    """Checks that span keys, as (location, message). They read the raw
    merged TOML and skip values of the wrong type (the per-key checks report
    those), so both kinds of problem are reported in one pass. A message that
    points at another key names it with refer(that key, location), which the
    loader makes name the file too when it differs."""
    problems: list[tuple[tuple, str]] = []
    hosts = _tables(data, "host")
    sinks = _tables(data, "notify")
    problems += _duplicates(hosts, "host", "host name", valid_host_name, refer)
    problems += _duplicates(sinks, "notify", "sink name", valid_host_name, refer)

    # gzip and pigz take levels 1-9. A host is checked only where it sets the
    # compression or the level, so a bad global level is reported once.
    archive = _table(data, "archive")
    scopes = [((), archive, archive)] + [
        (("host", i), {**archive, **_table(h, "archive")}, _table(h, "archive")) for i, h in hosts
    ]
    for prefix, effective, own in scopes:
        compression, level = effective.get("compression"), effective.get("level")
        if (compression in ("gzip", "pigz") and type(level) is int and 9 < level <= 19
                and ("level" in own or "compression" in own)):
            key = "level" if "level" in own else "compression"
            problems.append((prefix + ("archive", key), f"{compression} levels are 1-9, not {level}"))

    rpc = _table(data, "rpc")
    total, per_uid = rpc.get("max_connections", 256), rpc.get("max_connections_per_uid", 32)
    if type(total) is int and type(per_uid) is int and 1 <= total < per_uid:
        key = "max_connections_per_uid" if "max_connections_per_uid" in rpc else "max_connections"
        problems.append((("rpc", key), f"max_connections_per_uid ({per_uid}) is more than "
                                       f"max_connections ({total})"))

    for index, host in hosts:
        source, rsync_path = host.get("source"), host.get("rsync_path")
        if isinstance(source, str) and source.startswith("/") and isinstance(rsync_path, str) and rsync_path:
            problems.append((("host", index, "rsync_path"), "the source is a local path, copied by this "
                                                            "machine's rsync: remove rsync_path"))

    replicas = _tables(data, "replica")
    problems += _duplicates(replicas, "replica", "replica name", valid_replica_name, refer)
    replica_names = {r.get("name"): index for index, r in replicas if valid_replica_name(r.get("name"))}
    for index, host in hosts:
        name = host.get("name")
        prefix = name.partition(".")[0] if valid_host_name(name) and "." in name else None
        if prefix in replica_names:
            here = ("host", index, "name")
            problems.append((here, f"{name!r} is the name the primary's host {name.partition('.')[2]!r} gets "
                                   f"here from [[replica]] {prefix!r} ({refer(('replica', replica_names[prefix]), here)})"
                                   ": rename the host"))

    host_names = {h.get("name") for _, h in hosts}
    for index, sink in sinks:
        for j, name in _strings(sink.get("hosts")):
            if valid_host_name(name) and name not in host_names and name.partition(".")[0] not in replica_names:
                problems.append((("notify", index, "hosts", j), f"no host is named {name!r}"))
        if sink.get("type") == "email" and sink.get("username") and not sink.get("password_file"):
            problems.append((("notify", index, "password_file"),
                             "username is set, so the SMTP login needs a password_file"))

    report = _table(data, "report")
    sink_names = {s.get("name") for _, s in sinks}
    for j, name in _strings(report.get("notify")):
        if name not in sink_names:
            problems.append((("report", "notify", j), f"no [[notify]] sink is named {name!r}"))
    if report.get("enabled") is True and report.get("notify", []) == []:
        problems.append((("report", "notify"), "the daily report is enabled but sent to no sink: "
                                               "name one here, or set enabled = false"))
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
