"""bkctl: the command-line client. Exit codes: 0 ok, 1 the daemon said no or the
job did not succeed, 2 usage error, 3 the daemon cannot be reached.

Human output renders what the daemon sends through a Client that escapes
every string (fmt.safe: a host's stderr, another user's note, a file name
never reach the terminal raw); --json prints exact values, and errors as
one JSON line on stderr."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time

from . import protocol
from .client import Client, RemoteError, Unreachable
from .live import LiveLines
from . import fmt
from .fmt import (can_print, colour, number, parse_span, parse_time, progress_text, relative, safe, size, span,
                  table, timestamp)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_PLUGIN_UNKNOWN = 3  # bkctl check: the monitoring-plugin code for "cannot tell"
POLL_SECONDS = 0.5
RECEIVER_GRACE = 10.0  # seconds a restore's receiver may take to end after its job did


class UsageError(Exception):
    """A command line that parses but does not make sense (exit code 2)."""


class _ArgumentError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """Raises instead of exiting, so that `bkctl check` can say UNKNOWN (3)
    where every other command exits 2."""

    def error(self, message: str):
        raise _ArgumentError(self, message)


# ---- commands ---------------------------------------------------------------

def cmd_status(client: Client, args) -> int:
    result = client.call("status")
    if args.json:
        return _print_json(result)
    rows = []
    for name, host in sorted(result["hosts"].items()):
        state = host["state"]
        rows.append([
            name, colour(state, state), host["stage"] or "-", progress_text(host["progress"]),
            host["last_snapshot"] or "-", relative(host.get("last_snapshot_time")),
            colour(host["last_result"] or "-", host["last_result"]), relative(host["next_run"]),
            ",".join(host.get("alert_kinds") or []) or "-",
        ])
    if not rows:
        print("no hosts configured")
        print(alerts_summary(result.get("alerts")))
        return EXIT_OK
    print(table(["HOST", "STATE", "STAGE", "PROGRESS", "LAST SNAPSHOT", "AGE", "RESULT", "NEXT RUN", "ALERTS"], rows))
    print(alerts_summary(result.get("alerts")))
    if result.get("deletion_queue"):
        print(f"deleting in the background: {len(result['deletion_queue'])} "
              f"({', '.join(result['deletion_queue'][:3])}{' …' if len(result['deletion_queue']) > 3 else ''})")
    for name, host in sorted(result["hosts"].items()):
        if host["last_result"] in ("failed", "warning") and host.get("last_error"):
            print(f"{name}: {host['last_error']}")
    for name, host in sorted(result["hosts"].items()):
        if host.get("suspects"):
            print(f"{name}: {_held_words(host['held'], host['suspects'])} (bkctl holds)")
    return EXIT_OK


def _held_words(held: bool, suspects: list[str]) -> str:
    what = f"{len(suspects)} suspect snapshot{'s' * (len(suspects) != 1)} ({', '.join(suspects[-3:])})"
    return f"HELD after an anomaly: {what}, nothing of it is deleted" if held else f"{what}, not held"


def alerts_summary(alerts: dict | None) -> str:
    """One line: `alerts: 3 current (2 unacknowledged, 1 silenced): run_failed 2, stale 1`."""
    if not alerts or not alerts.get("open"):
        return "alerts: none"
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(alerts["by_kind"].items()))
    extra = [f"{alerts[k]} {k}" for k in ("unacknowledged", "silenced") if alerts.get(k)]
    return f"alerts: {alerts['open']} current" + (f" ({', '.join(extra)})" if extra else "") + f": {kinds}" + \
        " (bkctl alerts)"


def cmd_run(client: Client, args) -> int:
    params = {"kind": args.kind, "dry_run": args.dry_run}
    if args.hosts:
        params["hosts"] = args.hosts
    if args.wait:  # subscribe first, so not one event of the job is missed
        client.subscribe(["job", "host", "progress"])
    job_id = client.call("job.start", params)["job_id"]
    if job_id is None:
        print(json.dumps({"job_id": None}) if args.json else "nothing to run: every host is busy")
        return EXIT_OK
    if not args.wait:
        print(json.dumps({"job_id": job_id}) if args.json else job_id)
        return EXIT_OK
    if not args.json:
        print(f"job {job_id} started", flush=True)
    return conclude_job(follow_job(client, job_id, args.json), args.json)


def follow_job(client: Client, job_id: int, as_json: bool, told_at_end: bool = False) -> dict:
    """Print a subscribed job's events as they arrive — on a terminal one line
    per host, updated in place — and return the job's final record as this
    caller may see it. Falls back to polling if the daemon drops this
    subscriber. told_at_end: a host's successful end is not printed (the
    caller concludes with what it did)."""
    lines = LiveLines(sys.stdout)
    try:
        for event in client.events():
            if event["topic"] == "dropped":
                break
            if event.get("job_id") != job_id:
                continue
            if as_json:
                print(json.dumps(event), flush=True)
            elif event["topic"] == "progress":
                lines.update(event["host"], _progress_line(event))
            elif event["topic"] == "host" and event["status"] not in protocol.FINAL_STATUSES:
                lines.update(event["host"], _host_line(event))
            elif event["topic"] == "host":
                quiet = told_at_end and event["status"] in protocol.SUCCESS_STATUSES
                lines.end(event["host"], None if quiet else _host_line(event))
            if event["topic"] == "job" and event["status"] in protocol.FINAL_STATUSES:
                break
    finally:
        lines.close()
    while True:  # the record as this caller may see it (with the detail, for admins)
        job = client.call("job.get", {"job_id": job_id})["job"]
        if job["status"] in protocol.FINAL_STATUSES:
            return job
        time.sleep(POLL_SECONDS)


def conclude_job(job: dict, as_json: bool, summary: str | None = None) -> int:
    """The job's last words and its exit code: its record (--json), or each
    host's detail and the job's status — or summary, when given, for a job
    that succeeded."""
    succeeded = job["status"] in protocol.SUCCESS_STATUSES
    if as_json:
        print(json.dumps({"job": job}), flush=True)
    elif summary is not None and succeeded:
        print(summary)
    else:
        for host in job["hosts"]:
            _print_detail(host)
        print(f"job {job['job_id']}: {colour(job['status'])}")
    return EXIT_OK if succeeded else EXIT_FAILED


def _print_detail(host: dict) -> None:
    """A run's full message, indented under it (the daemon sends it to admins only)."""
    if host.get("detail") and host["detail"] != host.get("error"):
        print(f"    {host['detail']}")


def _progress_line(event: dict) -> str:
    progress = event["progress"]
    eta = f", eta {span(progress['eta_s'])}" if progress.get("eta_s") else ""
    phase = f" ({progress['phase']})" if progress.get("phase") else ""  # a snapshot compares, then transfers
    return (f"{event['host']}: {event.get('stage') or ''}{phase} {progress_text(progress)} "
            f"{size(progress['bytes'])} at {size(progress['rate'])}/s{eta}")


def _host_line(host: dict) -> str:
    line = f"{host['host']}: {colour(host['status'])}"
    if host["status"] == "running" and host.get("stage"):
        line += f" ({host['stage']})"
    if host.get("snapshot"):
        line += f" snapshot {host['snapshot']}"
    stats = host.get("stats") or {}
    if stats.get("files") is not None:
        line += f", {number(stats['files'])} files, {number(stats.get('changed_files'))} changed"
    if host.get("error"):
        line += f": {host['error']}"
    return line


def cmd_cancel(client: Client, args) -> int:
    if bool(args.hosts) == (args.job is not None):
        print("bkctl cancel: give HOST... or --job ID", file=sys.stderr)
        return EXIT_USAGE
    params = {"hosts": args.hosts} if args.hosts else {"job_id": args.job}
    result = client.call("job.cancel", params)
    if args.json:
        return _print_json(result)
    print(f"cancelled: {', '.join(result['cancelled'])}" if result["cancelled"] else "nothing was running")
    return EXIT_OK


def cmd_jobs(client: Client, args) -> int:
    params = {"limit": args.limit}
    if args.host:
        params["host"] = args.host
    if args.before is not None:
        params["before"] = args.before
    result = client.call("jobs.list", params)
    if args.json:
        return _print_json(result)
    rows = [[str(j["job_id"]), j["kind"] + (" (dry run)" if j["dry_run"] else ""), colour(j["status"]),
             j["trigger"], relative(j["started"]), _duration(j), ",".join(h["host"] for h in j["hosts"])]
            for j in result["jobs"]]
    print(table(["ID", "KIND", "STATUS", "TRIGGER", "STARTED", "TOOK", "HOSTS"], rows) if rows else
          ("no older jobs" if args.before is not None else "no jobs yet"))
    if result.get("truncated"):
        print(f"(at most {len(result['jobs'])} jobs per page)")
    if result.get("next_before") is not None:
        more = ["bkctl", "jobs", *(["--host", args.host] if args.host else []), "--limit", str(len(result["jobs"])),
                "--before", str(result["next_before"])]
        print(f"older jobs: {' '.join(more)}")
    return EXIT_OK


def _duration(record: dict) -> str:
    start, end = parse_time(record.get("started")), parse_time(record.get("finished"))
    return span((end - start).total_seconds()) if start and end else "-"


def cmd_job(client: Client, args) -> int:
    result = client.call("job.get", {"job_id": args.job_id})
    if args.json:
        return _print_json(result)
    job = result["job"]
    print(f"job {job['job_id']}: {job['kind']}{' (dry run)' if job['dry_run'] else ''}, "
          f"{colour(job['status'])}, {job['trigger']}")
    print(f"started {timestamp(job['started'])}, finished {timestamp(job['finished'])}")
    for host in job["hosts"]:
        print("  " + _host_line(host) + (f" (took {_duration(host)})" if host.get("finished") else ""))
        _print_detail(host)
    return EXIT_OK if job["status"] in protocol.SUCCESS_STATUSES | {"running", "queued"} else EXIT_FAILED


def cmd_snapshots(client: Client, args) -> int:
    params = {"host": args.host, "kind": args.kind}
    if not args.all:
        params["limit"] = args.limit
    result = client.call("snapshots.list", params)
    if args.json:
        return _print_json(result)
    rows = []
    for s in result["snapshots"]:
        profile = s.get("profile") or {}  # snapshots made before bkd recorded profiles have none
        rows.append([s["name"], relative(s["time"]), s["tier"], number(s["files"]), size(s["bytes"]),
                     number(profile.get("new")), number(profile.get("changed", s["changed_files"])),
                     number(profile.get("deleted", s["deleted_files"])), number(profile.get("became_random")),
                     "SUSPECT" if s.get("suspect") else ("held" if s.get("held") else "")])
    if not rows:
        what = {"hourly": "snapshots", "monthly": "monthly copies", "archive": "archives"}.get(args.kind, "copies")
        print(f"no {what} of {args.host} yet")
        return EXIT_OK
    print(table(["NAME", "AGE", "TIER", "FILES", "SIZE", "NEW", "CHANGED", "DELETED", "RANDOM", ""], rows))
    if result.get("next_before"):
        print(f"(the newest {len(rows)} of {result['total']}; --all for every one)")
    for s in result["snapshots"]:
        if s.get("suspect"):
            print(f"{s['name']} is suspect: {_signals_text(s['anomaly']['signals'])}")
            _print_examples(s.get("examples"))
    return EXIT_OK


SIGNAL_WORDS = {"became_random": "files became random", "deleted": "files deleted (less new ones)",
                "renamed": "files renamed to another extension", "note": "existing directories with one new name"}


def _signals_text(signals: list[dict]) -> str:
    """The spikes, with the numbers that made them (anomaly signals; watching.md)."""
    def figure(value) -> str:  # 10.0 → 10, 12.5 → 12.5
        return number(int(value)) if float(value).is_integer() else f"{value:,.3g}"

    return "; ".join(f"{figure(s['value'])} {SIGNAL_WORDS.get(s['signal'], s['signal'])} "
                     f"(baseline {figure(s['baseline'])}, threshold {figure(s['threshold'])}, "
                     f"{figure(s['files'])} files)" for s in signals if s.get("spike", True))


def _print_examples(examples: dict | None) -> None:
    """The names behind a profile's numbers (the daemon sends them to admins only)."""
    for key, values in (examples or {}).items():
        if values:
            shown = ", ".join(" → ".join(map(safe, v)) if key == "renamed" else f"{safe(v[0])} ({v[1]})"
                              if isinstance(v, list) else safe(v) for v in values)
            print(f"    {key}: {shown}")


def cmd_schedule(client: Client, args) -> int:
    result = client.call("schedule.list")
    if args.json:
        return _print_json(result)
    rows = [[e["host"], e["kind"], e["every"], relative(e["next_run"]) if e["enabled"] else "manual only",
             timestamp(e["next_run"])] for e in result["entries"]]
    print(table(["HOST", "KIND", "EVERY", "NEXT RUN", "AT"], rows) if rows else "no hosts configured")
    return EXIT_OK


def cmd_prune(client: Client, args) -> int:
    params = {"dry_run": args.dry_run}
    if args.hosts:
        params["hosts"] = args.hosts
    result = client.call("prune", params)
    if args.json:
        return _print_json(result)
    for host, decisions in sorted(result["plan"].items()):
        deleting = sum(d["action"] == "delete" for d in decisions)
        held = sum(bool(d.get("held")) for d in decisions)
        verb = "would delete" if args.dry_run else "deleted"
        frees = (result.get("frees") or {}).get(host)
        freeing = f", freeing {size(frees)}" if frees is not None and deleting else ""
        print(f"{host}: keep {len(decisions) - deleting}{f' ({held} held)' if held else ''}, {verb} {deleting}"
              f"{freeing}")
        rows = [[d["snapshot"], "keep (held)" if d.get("held") else d["action"], d["tier"], d["reason"]]
                for d in decisions if args.dry_run or d["action"] == "delete"]
        if rows:
            print(table(["  SNAPSHOT", "ACTION", "TIER", "REASON"], [["  " + r[0], *r[1:]] for r in rows]))
    return EXIT_OK


def cmd_hosts(client: Client, args) -> int:
    if args.action == "test":
        return _hosts_test(client, args)
    if args.action == "release":
        if len(args.names) != 1:
            raise UsageError("bkctl hosts release HOST [--note TEXT]")
        result = client.call("hosts.release", {"host": args.names[0],
                                               **({"note": args.note} if args.note is not None else {})})
        if args.json:
            return _print_json(result)
        print(f"{result['host']}: released ({len(result['snapshots'])} suspect snapshot(s): "
              f"{', '.join(result['snapshots'])}); its pruning goes on")
        return EXIT_OK
    if args.note is not None:
        raise UsageError("--note goes with bkctl hosts release HOST")
    if args.names:
        raise UsageError("bkctl hosts takes no host names; did you mean `bkctl hosts test HOST...`?")
    result = client.call("hosts.list")
    if args.json:
        return _print_json(result)
    rows = [[h["name"], h["source"], "ssh" if h["remote"] else "local",
             h["schedule"]["snapshot_every"] if h["schedule"]["enabled"] else "manual"]
            for h in result["hosts"]]
    print(table(["HOST", "SOURCE", "VIA", "EVERY"], rows) if rows else "no hosts configured")
    return EXIT_OK


def cmd_holds(client: Client, args) -> int:
    result = client.call("holds.list")
    if args.json:
        return _print_json(result)
    if not result["holds"]:
        print("no holds: no host has an unreleased suspect snapshot")
        return EXIT_OK
    rows = [[h["host"], "held" if h["held"] else "not held", relative(h["since"]) if h["since"] else "-",
             ", ".join(h["snapshots"]) or "-"] for h in result["holds"]]
    print(table(["HOST", "PRUNING", "SINCE", "SUSPECT SNAPSHOTS"], rows))
    for hold in result["holds"]:
        if hold.get("problem"):
            print(f"{hold['host']}: {hold['problem']}")
        for snapshot in hold["snapshots"]:
            signals = [s for s in hold["signals"] if s["snapshot"] == snapshot]
            print(f"{hold['host']} {snapshot}: {_signals_text(signals) or 'no signal recorded'}")
            _print_examples((hold.get("examples") or {}).get(snapshot))
    print("once checked (bkctl snapshots HOST, bkctl ls HOST SNAPSHOT): bkctl hosts release HOST [--note TEXT]")
    return EXIT_OK


def cmd_replicas(client: Client, args) -> int:
    result = client.call("replicas.list")
    if args.json:
        return _print_json(result)
    if not result["upstreams"]:
        print("no [[replica]] is configured: this server keeps no copy of another's")
        return EXIT_OK
    for index, upstream in enumerate(result["upstreams"]):
        visited = "not visited yet" if upstream["visited"] is None else (
            f"visited {relative(upstream['visited'])}: " +
            (colour("ok", "ok") if upstream["ok"] else colour(f"failed: {safe(upstream['error'])}", "failed")))
        print(("\n" if index else "") + f"{upstream['name']} <- {upstream['source']} (every {upstream['every']}, "
              f"lag after {upstream['lag_after']}; {visited})")
        if upstream.get("detail"):  # what rsync and ssh said (admins only)
            print(f"  detail: {safe(upstream['detail'])}")
        state = upstream["state"]
        if state is None:
            print("  state database: no copy yet")
        else:
            verdict = colour("audit chain ok", "ok") if state["ok"] else colour(safe(state['problem']), "failed")
            print(f"  state database: generation {state['generation']} ({state['generations']} kept, "
                  f"{number(state['audit_entries'])} audit entries): {verdict}")
        rows = [[h["host"], h["newest"] or "-", h["primary_newest"] or "-",
                 colour(span(h["lag_s"]), "failed" if h["behind"] else "ok") if h["lag_s"] is not None else "-",
                 relative(h["checked"]), colour(h["last_result"] or "-", h["last_result"]),
                 "" if h["on_primary"] else "gone from the primary"] for h in upstream["hosts"]]
        print(table(["  HOST", "NEWEST COPY", "PRIMARY'S NEWEST", "LAG", "LISTED", "RESULT", ""],
                    [["  " + r[0], *r[1:]] for r in rows]) if rows else "  no hosts yet")
    return EXIT_OK


def _hosts_test(client: Client, args) -> int:
    params = {"hosts": args.names} if args.names else {}
    result = client.call("hosts.test", params)
    ok = all(r["ok"] for r in result["results"].values())
    if args.json:
        _print_json(result)
    else:
        for host, outcome in result["results"].items():
            verdict = colour("ok", "ok") if outcome["ok"] else colour("failed", "failed")
            error = f": {safe(outcome['error'])}" if outcome["error"] else ""
            print(f"{host}: {verdict} ({outcome['seconds']}s){error}")
            for check in outcome.get("checks", []):
                if check["fix"]:
                    print(f"  fix: {safe(check['fix'])}")
            if outcome.get("detail"):  # what rsync and the host printed (admins only)
                print(f"  detail: {safe(outcome['detail'])}")
    return EXIT_OK if ok else EXIT_FAILED


def cmd_reload(client: Client, args) -> int:
    result = client.call("config.reload")
    if args.json:
        _print_json(result)
    elif result["ok"]:
        print("reloaded: " + ("; ".join(result["changes"]) if result["changes"] else "no changes"))
    else:
        print("config not reloaded; bkd keeps running on the previous one:", file=sys.stderr)
        for error in result["errors"]:
            print(f"  {error}", file=sys.stderr)
    return EXIT_OK if result["ok"] else EXIT_FAILED


def cmd_watch(client: Client, args) -> int:
    client.subscribe(args.topic or None)
    for event in client.events():
        print(json.dumps(event) if args.json else event_line(event), flush=True)
        if event["topic"] == "dropped":
            return EXIT_FAILED
    raise Unreachable(f"bkd at {safe(client.path)} closed the connection")


def event_line(event: dict) -> str:
    """One event as one human line: time, topic, who, what."""
    stamp = timestamp(event.get("time") or event.get("timestamp"))
    who = " ".join(f"{k}={event[k]}" for k in ("host", "job_id") if event.get(k) is not None)
    topic = event["topic"]
    if topic == "log":
        skip = {"topic", "seq", "time", "timestamp", "event", "level", "host", "job_id"}
        rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
        what = f"{event.get('level', '')} {event.get('event', '')} {rest}"
    elif topic == "progress":
        what = _progress_line(event).split(": ", 1)[1]
    elif topic == "host":
        what = _host_line(event).split(": ", 1)[1]
    elif topic == "job":
        what = f"job {event['job_id']} {event['status']}"
    else:
        what = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("topic", "seq", "time"))
    return f"{stamp} {topic:<8} {who} {what}".replace("  ", " ").rstrip()


# A SNAPSHOT argument (SPEC §2): latest, an hourly name, a monthly copy, an archive. A PATH that
# looks like one is written with a leading /.
_SNAPSHOT_NAME = re.compile(rf"{protocol.SNAPSHOT_NAME}|latest|monthly/\d{{4}}-\d{{2}}|archive/[^/]+")


def cmd_ls(client: Client, args) -> int:
    rest = list(args.args)
    if args.history:
        if len(rest) != 1:
            raise UsageError("bkctl ls --history HOST PATH")
        return _history(client, args, rest[0])
    snapshot = rest.pop(0) if rest and _SNAPSHOT_NAME.fullmatch(rest[0]) else None
    if len(rest) > 1:
        raise UsageError("bkctl ls HOST [SNAPSHOT] [PATH]")
    params = {"host": args.host, "path": rest[0] if rest else "/", "offset": args.offset}
    if snapshot:
        params["snapshot"] = snapshot
    if args.limit:
        params["limit"] = args.limit
    page = client.call("snapshots.browse", params)
    if args.json:
        return _print_json(page)
    print(f"{args.host} {page['snapshot']}:{safe(params['path'])}"
          + ("  [SUSPECT: an anomaly; bkctl snapshots, bkctl holds]" if page.get("suspect") else ""))
    while True:
        for entry in page["entries"]:
            target = f" -> {entry['target']}" if entry.get("target") is not None else ""
            print(f"{entry['mode']} {entry['size']:>12} {timestamp(entry['mtime'])}  {entry['name']}{target}")
        if page["next_offset"] is None or args.limit:
            break
        page = client.call("snapshots.browse", {**params, "offset": page["next_offset"]})
    return EXIT_OK


def _history(client: Client, args, path: str) -> int:
    """`ls --history HOST PATH`: find of that one path."""
    result = client.call("find", {"host": args.host, "path": path, "limit": 100_000})
    if args.json:
        return _print_json(result)
    if not result["versions"]:
        print(f"{safe(path)} is in no copy of {safe(args.host)}")
        return EXIT_OK
    _print_versions(result, with_path=False)
    return EXIT_OK


def _print_versions(result: dict, with_path: bool = True) -> None:
    # Names are the source host's: any byte but / and NUL, escaped for the terminal.
    rows = [[*([safe(v["path"])] if with_path else []), v["type"], size(v["size"]), timestamp(v["mtime"]),
             (v["sha256"] or "-")[:12], v["first"], v["last"], number(v["count"])] for v in result["versions"]]
    print(table([*(["PATH"] if with_path else []), "TYPE", "SIZE", "MTIME", "SHA256", "FIRST", "LAST", "COPIES"],
                rows))
    if result.get("truncated"):
        print(f"(the newest {len(rows)} versions; --limit N for more)")


def cmd_find(client: Client, args) -> int:
    params = {"host": args.host, "pattern": args.pattern, "limit": args.limit}
    if args.since:
        params["since"] = args.since
    result = client.call("find", params)
    if args.json:
        return _print_json(result)
    if not result["versions"]:
        print(f"no path of {safe(args.host)} matches {safe(args.pattern)}")
        return EXIT_OK
    _print_versions(result)
    return EXIT_OK


def cmd_du(client: Client, args) -> int:
    params = {"snapshots": args.snapshots, **({"hosts": args.hosts} if args.hosts else {})}
    result = client.call("du", params)
    if args.json:
        return _print_json(result)
    rows = [[host, size(space["unique_bytes"]), size(space["total_bytes"])]
            for host, space in sorted(result["hosts"].items())]
    print(table(["HOST", "ON DISK", "REFERENCED"], rows) if rows else "no hosts configured")
    for host, space in sorted(result["hosts"].items()) if args.snapshots else []:
        print(f"\n{host}: what deleting each copy alone would free")
        print(table(["  COPY", "KIND", "FREES"], [["  " + c["name"], c["kind"], size(c["freed_bytes"])]
                                                   for c in space["snapshots"]]))
    return EXIT_OK


def cmd_restore(client: Client, args) -> int:
    from . import restore
    remote = not args.to.startswith("/") and ":" in args.to.split("/", 1)[0]
    dest = args.to if remote else os.path.abspath(args.to)
    params = {"host": args.host, "snapshot": args.snapshot, "path": args.path, "dest": dest,
              "overwrite": args.overwrite, "dry_run": args.dry_run}
    destination = None
    if not remote:
        try:
            destination = restore.look(dest, restore.components(args.path))
        except OSError as e:
            print(f"bkctl: cannot look at {safe(dest)}: {e.strerror}", file=sys.stderr)
            return EXIT_FAILED
        params["receiver"] = destination.receiver()
    if not args.no_wait:
        client.subscribe(["job", "host", "progress"])
    answer = client.call("restore", params, exact=True)  # the receiver's options and paths, used as they are
    job_id = answer["job_id"]
    receiving, received = None, {}
    if "receive" in answer:  # a local DEST: this process receives, as the caller
        if args.no_wait and os.fork() != 0:
            print(json.dumps({"job_id": job_id}) if args.json else job_id)
            return EXIT_OK
        receiving = threading.Thread(target=_receive, args=(client.path, answer["receive"], destination,
                                                            args.dry_run, received), daemon=not args.no_wait)
        receiving.start()
        if args.no_wait:  # the detached child: receive, and say nothing
            os.setsid()
            receiving.join()
            return EXIT_OK
    elif args.no_wait:
        print(json.dumps({"job_id": job_id}) if args.json else job_id)
        return EXIT_OK
    if not args.json:
        print(f"job {job_id}: restoring {args.host} {args.snapshot}:{safe(args.path)} "
              f"to {safe(dest)}", flush=True)
    job = follow_job(client, job_id, args.json, told_at_end=True)
    received_ok = True
    if receiving is not None:
        receiving.join(RECEIVER_GRACE)
        if receiving.is_alive() and received.get("proc"):  # the restore is over: a receiver still there is stuck
            received["proc"].kill()
        receiving.join()
        # The receiver is ours: its outcome is ours to tell.
        received_ok = received.get("returncode") in (0, 24)
    if args.dry_run and not args.json:
        for name in next((h.get("listing") for h in job["hosts"]), None) or []:
            print(f"would write {safe(name)}")
    code = conclude_job(job, args.json, _restored(job, args, dest) if received_ok else None)
    if not received_ok:
        code = EXIT_FAILED
        if not args.json:
            _print_receiver(received)
    return code


def _restored(job: dict, args, dest: str) -> str:
    """What a restore did, in one line: `restored 1,234 entries (56.7 MiB) of web1
    2026-12-07_131509:/etc to /tmp/x/etc`; the entries it left alone in DEST, said too."""
    host = job["hosts"][0] if job["hosts"] else {}
    stats = host.get("stats") or {}
    written = stats.get("entries_to_write" if args.dry_run else "entries_written")
    inside = args.path.strip("/")
    target = (dest.rstrip("/") + "/" + inside) if inside else dest
    line = (f"{'would restore' if args.dry_run else 'restored'} {number(written)} "
            f"entr{'y' if written == 1 else 'ies'} ({size(stats.get('transferred_bytes'))}) of {safe(args.host)} "
            f"{host.get('snapshot') or args.snapshot}:{safe(args.path)} to {safe(target)}")
    unwritten = (stats.get("entries") or 0) - (written or 0)
    if unwritten > 0:  # rsync leaves alone what is there: the same (--overwrite), or anything (without)
        line += (f"; {number(unwritten)} already up to date" if args.overwrite else
                 f"; {number(unwritten)} already there, kept (--overwrite replaces them)")
    return line


def _receive(socket_path: str, spec: dict, destination, dry_run: bool, received: dict) -> None:
    """Run the receiving rsync on the restore's connection (its outcome is the daemon's sender's to say)."""
    from . import restore
    try:
        received.update(restore.receive(socket_path, spec, destination, dry_run,
                                        on_start=lambda proc: received.update(proc=proc)))
    except restore.ReceiveFailed as e:
        received.update(returncode=None, error=str(e))
    finally:
        destination.close()


def _print_receiver(received: dict) -> None:
    if received.get("returncode") is None:
        print(f"bkctl: {safe(received.get('error') or 'the receiving rsync did not run')}", file=sys.stderr)
        return
    print(f"the receiving rsync exited with code {received['returncode']}")
    for line in received.get("stderr", []):
        print(f"    {safe(line)}")


def cmd_verify(client: Client, args) -> int:
    params = {"host": args.host, "all": args.all, "sample": args.sample}
    if args.snapshot:
        params["snapshot"] = args.snapshot
    client.set_timeout(None)  # re-hashing a large snapshot takes as long as it takes
    result = client.call("verify", params)
    if args.json:
        _print_json(result)
    else:
        for problem in result["mismatches"]:
            where = f"{problem['snapshot']}:" if problem.get("snapshot") else ""
            print(f"{problem['problem']:<10} {where}{problem['path']}")
        verdict = "ok" if result["ok"] else f"{len(result['mismatches'])} mismatch(es)"
        gone = result.get("gone") or []
        print(f"{args.host}: {verdict}; checked {result['checked']} files and archives "
              f"in {len(result['snapshots'])} snapshot(s)"
              + (f"; {len(gone)} pruned meanwhile, not checked" if gone else ""))
    return EXIT_OK if result["ok"] else EXIT_FAILED


def _alert_ids(targets: list[str]) -> list[int]:
    try:
        return [int(target) for target in targets]
    except ValueError:
        raise UsageError(f"bkctl alerts ack: alert ids are numbers, not {' '.join(targets)!r}") from None


def _silence(client: Client, args) -> int:
    host = args.targets[0] if args.targets else None
    if len(args.targets) > 1 or not (host or args.kind):
        raise UsageError(f"bkctl alerts {args.action} HOST | --kind K" +
                         (" --for DURATION [--note TEXT]" if args.action == "silence" else ""))
    params = {k: v for k, v in (("host", host), ("kind", args.kind)) if v}
    if args.action == "silence":
        if not args.for_:
            raise UsageError("bkctl alerts silence: give --for DURATION, e.g. --for 2h")
        params["for"] = args.for_
        if args.note:
            params["note"] = args.note
    result = client.call(f"alerts.{args.action}", params)
    if args.json:
        return _print_json(result)
    if args.action == "silence":
        print(f"silenced {_silence_text(result['silence'])}: recorded, not notified")
    else:
        print(f"unsilenced {' and '.join(f'{k} {v}' for k, v in params.items())}")
    return EXIT_OK


def _silence_text(silence: dict) -> str:
    what = " and ".join(f"{k} {silence[k]}" for k in ("host", "kind") if silence.get(k))
    note = f" ({silence['note']})" if silence.get("note") else ""
    return f"{what} until {timestamp(silence['until'])} by {silence['by']}{note}"


def cmd_alerts(client: Client, args) -> int:
    if args.action in ("silence", "unsilence"):
        return _silence(client, args)
    args.ids = _alert_ids(args.targets) if args.action == "ack" else args.targets
    if args.action == "ack":
        params = {"ids": args.ids} if args.ids else {}
        for key in ("host", "kind", "note"):
            if getattr(args, key):
                params[key] = getattr(args, key)
        if args.all:
            params["all"] = True
        if not (args.ids or args.host or args.kind or args.all):
            raise UsageError("bkctl alerts ack ID... | --host H | --kind K | --all [--note TEXT]")
        result = client.call("alerts.ack", params)
        if args.json:
            return _print_json(result)
        acked = result["acked"]
        print(f"acknowledged {len(acked)} alert(s)" + (f": {', '.join(map(str, acked))}" if acked else ""))
        return EXIT_OK
    if args.ids:
        raise UsageError("bkctl alerts [--all] takes no ids; did you mean `bkctl alerts ack ID...`?")
    result = client.call("alerts.list", {"all": args.all})
    if args.json:
        return _print_json(result)
    rows = [[str(a["id"]), a["host"] or "-", a["kind"], str(a["count"]), relative(a["first_seen"]),
             relative(a["last_seen"]),
             colour(a["state"], "failed" if a["state"] == "open" else a["state"])
             + (" (silenced)" if a.get("silenced") else ""),
             a["message"]]
            for a in result["alerts"]]
    print(table(["ID", "HOST", "KIND", "COUNT", "SINCE", "LAST", "STATE", "MESSAGE"], rows)
          if rows else "no open alerts")
    for silence in result.get("silences", []):
        print(f"silenced: {_silence_text(silence)}")
    return EXIT_OK


def cmd_notify(client: Client, args) -> int:
    if args.action == "test":
        params = {"sink": args.sink} if args.sink else {}
        client.set_timeout(None)  # each sink has its own timeout
        result = client.call("notify.test", params)
        if args.json:
            _print_json(result)
        else:
            for name, outcome in result["results"].items():
                verdict = colour("delivered", "ok") if outcome["ok"] else colour("failed", "failed")
                print(f"{name}: {verdict} ({outcome['seconds']}s)" + (f": {outcome['error']}" if outcome["error"] else ""))
            if not result["results"]:
                print("no [[notify]] sinks are configured")
        return EXIT_OK if all(o["ok"] for o in result["results"].values()) and result["results"] else EXIT_FAILED
    if args.sink:
        raise UsageError("bkctl notify takes no sink name; did you mean `bkctl notify test SINK`?")
    result = client.call("notify.status")
    if args.json:
        return _print_json(result)
    rows = [[s["name"], s["type"], colour("ok", "ok") if s["ok"] else colour(f"failing ({s['failing']}x)", "failed"),
             relative(s["last_delivery"]), s["last_error"] or "-", number(s["queued"]), number(s["delivered"]),
             number(s["failed"])] for s in result["sinks"]]
    print(table(["SINK", "TYPE", "STATE", "LAST DELIVERY", "LAST ERROR", "QUEUED", "DELIVERED", "GIVEN UP"], rows)
          if rows else "no [[notify]] sinks are configured")
    return EXIT_OK


def cmd_audit(client: Client, args) -> int:
    result = client.call("audit.list", {"limit": args.limit, "verify": args.verify})
    if args.json:
        _print_json(result)
    else:
        rows = [[str(e["id"]), timestamp(e["time"]), f"{e['user']} ({e['uid']})", e["method"],
                 json.dumps(e["params"], ensure_ascii=False)[:60], e["outcome"][:60]]
                for e in reversed(result["entries"])]
        print(table(["ID", "TIME", "WHO", "METHOD", "PARAMS", "OUTCOME"], rows) if rows else "no audit entries")
        if args.verify and result["chain_ok"]:
            print("hash chain: intact")
        elif args.verify and result.get("broken_at") is not None:
            print(f"hash chain: BROKEN at entry {result['broken_at']} (the log was altered)")
        elif args.verify:
            print(f"hash chain: BROKEN: {result.get('problem')}")
        if args.verify and result.get("journal"):
            print(f"journal: {result['journal']}")
    return EXIT_FAILED if args.verify and not result["chain_ok"] else EXIT_OK


def cmd_report(client: Client, args) -> int:
    from . import report
    params = {"since": args.since} if args.since else {}
    result = client.call("report", params)
    if args.html:
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(report.page_html(result))
        except OSError as e:
            print(f"bkctl: cannot write {safe(args.html)}: {e.strerror}", file=sys.stderr)
            return EXIT_FAILED
    if args.json:
        return _print_json(result)
    if args.html:
        print(f"report written to {safe(args.html)}")
    else:
        rendered = report.text(result)
        print(rendered if can_print(rendered) else report.text(result, ascii=True), end="")
    return EXIT_OK


def cmd_metrics(client: Client, args) -> int:
    result = client.call("metrics", exact=True)  # lines of text: each escaped, the line ends kept
    if args.json:
        return _print_json(result)
    print("\n".join(safe(line) for line in result["text"].split("\n")), end="")
    return EXIT_OK


def run_check(path: str, timeout: float, args) -> int:
    """`bkctl check`: every outcome is one line on stdout and a plugin exit code."""
    from . import check
    try:
        warn_age = parse_span(args.warn_age) if args.warn_age else None
        crit_age = parse_span(args.crit_age) if args.crit_age else None
    except ValueError as e:
        code, line = check.unknown(f"usage: {e}")
    else:
        if warn_age is not None and crit_age is not None and warn_age > crit_age:
            code, line = check.unknown("usage: --warn-age is longer than --crit-age")
        else:
            try:
                with Client(path, timeout, escape=True) as client:
                    _check_protocol(client)
                    params = {"trends": False, **({"hosts": args.hosts} if args.hosts else {})}
                    digest = client.call("report", params)
                code, line = check.evaluate(digest, bool(args.hosts), warn_age, crit_age)
            except Unreachable as e:
                code, line = check.unknown(str(e))
            except RemoteError as e:
                code, line = check.unknown(e.message)
    print(line)
    return code


def _print_json(result: dict) -> int:
    print(json.dumps(result, indent=None))
    return EXIT_OK


# ---- argument parsing -------------------------------------------------------

CHECK_EPILOG = """\
Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the daemon cannot be
reached or refuses, a usage error, --help, --version). It prints one line,
"BKD STATE - what | perfdata", with each host's age, size and duration as
perfdata. What is CRITICAL and what a WARNING: docs/watching.md.

Example:
  bkctl check --warn-age 2h --crit-age 1d web1 db1"""


class _PluginHelp(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        parser.exit(EXIT_PLUGIN_UNKNOWN)


class _PluginVersion(_PluginHelp):
    def __call__(self, parser, namespace, values, option_string=None):
        print(f"bkctl check v{_client_version()} (bkd {_client_version()})")
        parser.exit(EXIT_PLUGIN_UNKNOWN)


def _parser() -> argparse.ArgumentParser:
    # Global options work before or after the command (`bkctl --json status`,
    # `bkctl status --json`): subcommands repeat them with SUPPRESS defaults.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, metavar="PATH",
                        help=f"daemon socket (default: $BKD_SOCKET or {protocol.DEFAULT_SOCKET})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's answer as JSON")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="S",
                        help="seconds to wait for each answer (default 30)")
    common.add_argument("--utc", action="store_true", default=argparse.SUPPRESS,
                        help="show times in UTC (default: local time, with its zone)")
    parser = _Parser(prog="bkctl", parents=[common], description="control and query the bkd backup daemon",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Example:\n  bkctl status\n  bkctl run web1 --wait")
    parser.add_argument("--version", action="store_true", help="print the client version")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, func, help_text, *examples: str):
        """A command whose --help ends with its examples (and so does its man page section)."""
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text,
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  epilog="Example:\n" + "\n".join(f"  bkctl {e}" for e in examples))
        sub.set_defaults(func=func)
        return sub

    add("status", cmd_status, "daemon and per-host state", "status", "status --json")
    run = add("run", cmd_run, "start a job now (default: every host, a snapshot)",
              "run web1 db1 --wait", "run --kind all")
    run.add_argument("hosts", nargs="*", metavar="HOST", help="the hosts to run (default: every host)")
    run.add_argument("--kind", default="snapshot", choices=[str(k) for k in protocol.RUN_KINDS],
                     help="snapshot (default); archive or monthly of the latest snapshot; all: the three in turn")
    run.add_argument("--dry-run", action="store_true", help="test connectivity and rsync; write nothing")
    run.add_argument("--wait", action="store_true", help="follow the job and exit with its result")
    cancel = add("cancel", cmd_cancel, "stop running work; its partial output is removed",
                 "cancel web1", "cancel --job 42")
    cancel.add_argument("hosts", nargs="*", metavar="HOST", help="stop what runs for these hosts")
    cancel.add_argument("--job", type=int, metavar="ID", help="stop every run of this job")
    jobs = add("jobs", cmd_jobs, "job history", "jobs --host web1 --limit 10")
    jobs.add_argument("--host", help="only this host's runs")
    jobs.add_argument("--limit", type=int, default=50, help="the newest N (default 50, at most 1000 a page)")
    jobs.add_argument("--before", type=int, metavar="ID", help="the page of jobs older than job ID")
    job = add("job", cmd_job, "one job in detail", "job 42")
    job.add_argument("job_id", type=int, metavar="ID", help="the job's number (bkctl jobs lists them)")
    snapshots = add("snapshots", cmd_snapshots, "a host's snapshots (the newest 50; --all, --limit N); "
                    "monthly copies and archives with --kind", "snapshots web1 --limit 10", "snapshots web1 --kind all")
    snapshots.add_argument("host", metavar="HOST", help="the host whose snapshots are listed")
    snapshots.add_argument("--kind", default="hourly", choices=["hourly", "monthly", "archive", "all"],
                           help="which copies: hourly snapshots (default), monthly copies, archives, or all")
    snapshots.add_argument("--limit", type=int, default=50, help="the newest N (default 50)")
    snapshots.add_argument("--all", action="store_true", help="every snapshot")
    add("schedule", cmd_schedule, "scheduled work and its next run time", "schedule")
    ls = add("ls", cmd_ls, "browse a snapshot: ls HOST [SNAPSHOT] [PATH]; --history HOST PATH",
             "ls web1 latest /etc", "ls web1 monthly/2026-11 /etc", "ls --history web1 /etc/hosts")
    ls.add_argument("host", metavar="HOST", help="the host whose snapshot is browsed")
    ls.add_argument("args", nargs="*", metavar="SNAPSHOT/PATH",
                    help="a snapshot (default latest; a name, monthly/YYYY-MM or archive/FILE), then a path inside "
                    "it (default /: its root)")
    ls.add_argument("--history", action="store_true", help="every version of PATH and the copies holding it "
                    "(find of that one path)")
    ls.add_argument("--offset", type=int, default=0, help="start at this entry (paging)")
    ls.add_argument("--limit", type=int, default=0, help="at most this many entries (one page)")
    find = add("find", cmd_find, "every version of the paths matching PATTERN, newest first, with the copies "
               "holding each", "find web1 '*.docx'", "find web1 '/home/**/report.txt' --since 7d")
    find.add_argument("host", metavar="HOST", help="the host whose copies are searched")
    find.add_argument("pattern", metavar="PATTERN", help="a glob on the path inside the snapshot: * and ? within "
                      "a name, ** any depth, [...] a class, \\ escapes; without / it matches the last name anywhere")
    find.add_argument("--since", metavar="DURATION", help="only versions a copy this recent holds, e.g. 7d")
    find.add_argument("--limit", type=int, default=1000, help="at most this many versions (default 1000)")
    du = add("du", cmd_du, "real disk use: per host the bytes it takes and the bytes its copies reference; "
             "--snapshots: what deleting each copy would free", "du", "du web1 --snapshots")
    du.add_argument("hosts", nargs="*", metavar="HOST", help="these hosts (default: every host)")
    du.add_argument("--snapshots", action="store_true", help="per snapshot, monthly copy and archive")
    restore = add("restore", cmd_restore, "copy PATH of a snapshot back to DEST/PATH",
                  "restore web1 latest /etc/nginx --to /tmp/restored",
                  "restore web1 2026-12-07_131509 /home/ann --to web1:/ --overwrite",
                  "restore web1 archive/web1_2026-12-01_000000.tar.zst /etc --to /tmp/from-archive")
    restore.add_argument("host", metavar="HOST", help="the host the snapshot is of")
    restore.add_argument("snapshot", metavar="SNAPSHOT",
                         help="latest, a snapshot name, monthly/YYYY-MM or archive/FILE")
    restore.add_argument("path", metavar="PATH", help="inside the snapshot; / is its root")
    restore.add_argument("--to", required=True, metavar="DEST", help="local directory or host:path")
    restore.add_argument("--overwrite", action="store_true", help="replace files that exist in DEST")
    restore.add_argument("--dry-run", action="store_true", help="list what would be written")
    restore.add_argument("--no-wait", action="store_true", help="print the job id and return "
                         "(a local DEST is then received by a detached bkctl)")
    verify = add("verify", cmd_verify, "check snapshots (and their archives) against their checksums",
                 "verify web1", "verify web1 --all", "verify web1 monthly/2026-11")
    verify.add_argument("host", metavar="HOST", help="the host whose snapshots are checked")
    verify.add_argument("snapshot", nargs="?", metavar="SNAPSHOT",
                        help="default: latest; or a snapshot name, monthly/YYYY-MM, archive/FILE")
    verify.add_argument("--all", action="store_true", help="every snapshot, monthly copy and archive")
    verify.add_argument("--sample", action="store_true",
                        help="run the background pass now: a sample, least recently verified first")
    audit = add("audit", cmd_audit, "who did what over the socket; --verify checks the hash chain",
                "audit --limit 20", "audit --verify")
    audit.add_argument("--verify", action="store_true",
                       help="check the hash chain (and the journal's copy of its head); exit 1 if broken")
    audit.add_argument("--limit", type=int, default=50, help="the newest N entries (default 50)")
    alerts = add("alerts", cmd_alerts, "open alerts (--all: resolved ones too); "
                 "alerts ack ID... | --host H | --kind K | --all [--note TEXT]; "
                 "alerts silence HOST | --kind K --for DURATION [--note TEXT]; alerts unsilence HOST | --kind K",
                 "alerts", "alerts ack 12 13 --note 'disk replaced'", "alerts silence web1 --for 2h")
    alerts.add_argument("action", nargs="?", choices=["ack", "silence", "unsilence"],
                        help="ack: acknowledge; silence: record, don't notify, for a while; unsilence: end "
                             "that (default: list)")
    alerts.add_argument("targets", nargs="*", metavar="ID|HOST",
                        help="ack: alert ids (from the list); silence, unsilence: a host")
    alerts.add_argument("--all", action="store_true", help="list: resolved ones too; ack: every open alert")
    alerts.add_argument("--host", help="ack: the open alerts of this host")
    alerts.add_argument("--kind", choices=[str(k) for k in protocol.AlertKind],
                        help="ack: the open alerts of this kind; silence: alerts of this kind")
    alerts.add_argument("--note", help="ack, silence: a note kept with it")
    alerts.add_argument("--for", dest="for_", metavar="DURATION",
                        help="silence: for how long, e.g. 2h, 1d (recorded, not notified)")
    notify = add("notify", cmd_notify, "each notification sink's state; `notify test [SINK]` sends a test message",
                 "notify", "notify test ops-mail")
    notify.add_argument("action", nargs="?", choices=["test"], help="test: send a test message (default: list)")
    notify.add_argument("sink", nargs="?", metavar="SINK", help="test: only this sink (default: every sink)")
    hosts = add("hosts", cmd_hosts, "configured hosts; `hosts test HOST...` checks SSH and rsync, writing nothing; "
                "`hosts release HOST [--note TEXT]` lifts a hold after an anomaly (admin)",
                "hosts", "hosts test web1", "hosts release db1 --note 'checked: the nightly re-encode'")
    hosts.add_argument("action", nargs="?", choices=["test", "release"],
                       help="test: test reachability; release: lift a held host's hold")
    hosts.add_argument("names", nargs="*", metavar="HOST", help="test: these hosts (default: every host); "
                       "release: the one host")
    hosts.add_argument("--note", help="release: why, kept in the audit log")
    add("holds", cmd_holds, "hosts whose pruning is held after an anomaly: since when, the suspect snapshots and why",
        "holds", "holds --json")
    add("replicas", cmd_replicas, "on a replica server: each upstream, and per replicated host its newest copy, "
        "its lag behind the primary and the last result", "replicas", "replicas --json")
    add("reload", cmd_reload, "re-read the config without dropping running work", "reload")
    watch = add("watch", cmd_watch, "stream live events as lines (JSON lines with --json)",
                "watch --topic job --topic host")
    watch.add_argument("--topic", action="append", choices=["job", "host", "progress", "log", "alert"],
                       help="only these topics (repeatable)")
    add("top", None, "full-screen live status (curses)", "top")
    report = add("report", cmd_report, "the fleet digest the daily report sends (--html FILE: a page with charts)",
                 "report --since 7d", "report --html /tmp/report.html")
    report.add_argument("--since", metavar="DURATION", help="runs of this last period (default 1d), e.g. 7d")
    report.add_argument("--html", metavar="FILE", help="write the report as a self-contained HTML page")
    add("metrics", cmd_metrics, "the Prometheus exposition", "metrics")
    check = commands.add_parser("check", parents=[common], add_help=False, help="a monitoring-plugin check: "
                                "exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, one line with perfdata",
                                description="a monitoring-plugin check (Nagios, Icinga, Checkmk)",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CHECK_EPILOG)
    # The plugin guidelines: --help and --version exit 3 (UNKNOWN), like every usage error.
    check.add_argument("-h", "--help", action=_PluginHelp, help="show this help and exit 3 (UNKNOWN)")
    check.add_argument("-V", "--version", action=_PluginVersion, help="print the plugin's version and exit 3 "
                       "(UNKNOWN)")
    check.add_argument("hosts", nargs="*", metavar="HOST", help="only these hosts (default: every host, and "
                       "alerts about no host)")
    check.add_argument("--warn-age", metavar="DURATION", help="WARNING when a host's newest snapshot is older")
    check.add_argument("--crit-age", metavar="DURATION", help="CRITICAL when a host's newest snapshot is older "
                       "(default: the daemon's stale rule)")
    prune = add("prune", cmd_prune, "apply retention now (deleted snapshots go to the trash first)",
                "prune web1 --dry-run")
    prune.add_argument("hosts", nargs="*", metavar="HOST", help="these hosts (default: every host)")
    prune.add_argument("--dry-run", action="store_true", help="print the plan: keep/delete, tier and reason")
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The command word of a command line (after the global options)."""
    words = iter(argv)
    for word in words:
        if word in ("--socket", "--timeout"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(argv)
    except _ArgumentError as e:
        if _command_of(argv) == "check":
            print(f"BKD UNKNOWN - usage: {e}")
            return EXIT_PLUGIN_UNKNOWN
        e.parser.print_usage(sys.stderr)
        print(f"{e.parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    args.json = getattr(args, "json", False)
    fmt.use_utc(getattr(args, "utc", False))
    path = getattr(args, "socket", None) or protocol.default_socket()
    timeout = getattr(args, "timeout", 30.0)
    if args.version:
        return _version(path, timeout)
    if not args.command:
        parser.print_usage(sys.stderr)
        print("bkctl: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        return run_check(path, timeout, args)
    if args.command == "top":
        from .tui import run_top
        return run_top(path, timeout, check=_check_protocol)
    try:
        with Client(path, timeout, escape=not args.json) as client:
            _check_protocol(client)
            return args.func(client, args)
    except UsageError as e:
        print(f"bkctl: {safe(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as e:
        _print_error(args.json, {"code": "unreachable", "message": str(e)})
        return EXIT_UNREACHABLE
    except RemoteError as e:
        _print_error(args.json, {"code": e.code, "message": e.message, "data": e.data})
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _print_error(as_json: bool, error: dict) -> None:
    """An error on stderr: for scripts one JSON line with its code (SPEC §2), else one line for people."""
    print(json.dumps({"error": error}) if as_json else f"bkctl: {safe(error['message'])}", file=sys.stderr)


def _check_protocol(client: Client) -> dict:
    """SPEC §5: bkctl refuses a daemon with another protocol, saying which side to upgrade."""
    info = client.call("daemon.info")
    theirs, ours = info.get("protocol"), protocol.PROTOCOL_VERSION
    if theirs != ours:
        newer = isinstance(theirs, int) and not isinstance(theirs, bool) and theirs > ours
        upgrade = (f"upgrade bkctl to bkd's version ({info.get('version')})" if newer else
                   f"upgrade bkd to bkctl's version ({_client_version()})")
        raise RemoteError(0, f"bkctl {_client_version()} speaks protocol {ours}, but bkd {info.get('version')} "
                             f"at {client.path} speaks protocol {theirs}: {upgrade}")
    return info


def _version(path: str, timeout: float) -> int:
    print(f"bkctl {_client_version()} (protocol {protocol.PROTOCOL_VERSION})")
    try:
        with Client(path, timeout, escape=True) as client:
            info = client.call("daemon.info")
        print(f"bkd {info['version']} (protocol {info['protocol']}) at {path}, pid {info['pid']}")
    except (Unreachable, RemoteError) as e:
        print(f"bkd: not reachable ({e})")
    return EXIT_OK


def _client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("bkd")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
