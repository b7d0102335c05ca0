"""`bkctl check`: a monitoring-plugin check (Nagios, Icinga, Checkmk, Sensu)
over the `report` digest. Pure: (digest, thresholds) → (exit code, one line).

Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, as the plugin guidelines say;
the line is `BKD STATE - what | perfdata`, with per host its age, size and
duration as `HOST_age=300s;WARN;CRIT;0` `HOST_size=1234B;;;0`
`HOST_duration=1.5s;;;0` (`U` when unknown).

CRITICAL: a host is stale (older than --crit-age, or by the daemon's own
rule when not given; a host that never succeeded always by the daemon's
rule, counted from when it was added), its directory cannot be read, it is
held after an anomaly (its alert acknowledged or not: until an admin
releases it), or it has a current run_failed, auth, integrity or
replica_lag alert
(acknowledged or not: the host is still failing). WARNING: a host older than --warn-age, or any other
open, unacknowledged alert. Silenced alerts (maintenance) count for
neither. Alerts about no host (disk, notify, internal) count when no HOST
is named."""

from __future__ import annotations

from .fmt import span

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
CRITICAL_KINDS = frozenset({"run_failed", "auth", "integrity", "replica_lag"})


def _alert_level(alert: dict) -> int:
    if alert.get("silenced"):
        return OK
    if alert["kind"] in CRITICAL_KINDS:
        return CRITICAL
    return WARNING if alert["state"] == "open" else OK


def _alert_word(alert: dict) -> str:
    subject = f" {alert['subject']}" if alert.get("subject") else ""
    acked = " (acknowledged)" if alert["state"] == "acked" else ""
    return f"{alert['kind']}{subject} alert{acked}"


def _number(value, unit: str) -> str:
    if value is None:
        return "U"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3f}".rstrip("0").rstrip(".") + unit
    return f"{int(value)}{unit}"


def perfdata(host: dict, warn_age: float | None, crit_age: float | None) -> str:
    name = host["name"]
    crit = crit_age if crit_age is not None else host["stale_after_s"]
    warn = "" if warn_age is None else _number(warn_age, "")
    return (f"{name}_age={_number(host['age_s'], 's')};{warn};{_number(crit, '')};0; "
            f"{name}_size={_number(host['bytes'], 'B')};;;0; "
            f"{name}_duration={_number(host['duration_s'], 's')};;;0;")


def evaluate(digest: dict, named: bool, warn_age: float | None = None,
             crit_age: float | None = None) -> tuple[int, str]:
    """(exit code, the status line). named: the caller asked for some hosts
    (then alerts about no host are left out)."""
    problems: dict[int, list[str]] = {WARNING: [], CRITICAL: []}
    for host in digest["hosts"]:
        name, age = host["name"], host["age_s"]
        if not host.get("readable", True):
            problems[CRITICAL].append(f"{name} directory unreadable")
        if host.get("held"):
            problems[CRITICAL].append(f"{name} held after an anomaly ({len(host.get('suspects') or [])} suspect "
                                      "snapshots; bkctl holds)")
        if age is None:
            if host["stale"]:
                problems[CRITICAL].append(f"{name} never backed up")
        elif (age > crit_age) if crit_age is not None else host["stale"]:
            problems[CRITICAL].append(f"{name} stale (last snapshot {span(age)} ago)")
        elif warn_age is not None and age > warn_age:
            problems[WARNING].append(f"{name} last snapshot {span(age)} ago")
        for alert in host["alerts"]:
            level = _alert_level(alert)
            if level != OK:
                problems[level].append(f"{name} {_alert_word(alert)}")
    if not named:
        for alert in digest["alerts"]["current"]:
            level = _alert_level(alert) if alert["host"] is None else OK
            if level != OK:
                problems[level].append(_alert_word(alert))
    code = CRITICAL if problems[CRITICAL] else WARNING if problems[WARNING] else OK
    hosts = digest["hosts"]
    if code == OK:
        ages = [h["age_s"] for h in hosts if h["age_s"] is not None]
        what = f"{len(hosts)} host{'s' * (len(hosts) != 1)} ok"
        if ages:
            what += f", newest snapshot {span(min(ages))} old, oldest {span(max(ages))} old"
    else:
        parts = [f"{len(problems[level])} {NAMES[level].lower()}: {', '.join(problems[level])}"
                 for level in (CRITICAL, WARNING) if problems[level]]
        what = "; ".join(parts)
    perf = " ".join(perfdata(h, warn_age, crit_age) for h in hosts)
    return code, f"BKD {NAMES[code]} - {what}" + (f" | {perf}" if perf else "")


def unknown(reason: str) -> tuple[int, str]:
    return UNKNOWN, f"BKD UNKNOWN - {reason}"
