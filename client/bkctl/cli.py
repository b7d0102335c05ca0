"""bkctl: the command-line client. Exit codes: 0 ok, 1 the daemon said no or the
job did not succeed, 2 usage error, 3 the daemon cannot be reached."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime, timezone

from . import protocol
from .client import Client, RemoteError, Unreachable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
POLL_SECONDS = 0.5
_COLOURS = {"ok": 32, "warning": 33, "failed": 31, "cancelled": 33, "interrupted": 33, "running": 36}


# ---- formatting -------------------------------------------------------------

def _colour(text: str, status: str | None = None) -> str:
    code = _COLOURS.get(status or text)
    if code and sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        return f"\033[{code}m{text}\033[0m"
    return text


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def span(seconds: float) -> str:
    seconds = int(abs(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def relative(value: str | None, now: datetime | None = None) -> str:
    when = _parse_time(value)
    if when is None:
        return "-"
    delta = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"


def size(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024


def number(value) -> str:
    return "-" if value is None else f"{value:,}"


def progress_text(progress: dict | None) -> str:
    if not progress:
        return "-"
    return f"{progress.get('percent', 0):.0f}%"


def table(headers: list[str], rows: list[list[str]]) -> str:
    # Widths come from the plain text, so colour codes do not skew alignment.
    plain = [[_strip(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in plain)) if plain else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row, plain_row in zip(rows, plain):
        cells = [cell + " " * (w - len(p)) for cell, p, w in zip(row, plain_row, widths)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _strip(text: str) -> str:
    return re.sub(r"\033\[[0-9;]*m", "", text)


# ---- commands ---------------------------------------------------------------

def cmd_status(client: Client, args) -> int:
    result = client.call("status")
    if args.json:
        return _print_json(result)
    rows = []
    for name, host in sorted(result["hosts"].items()):
        state = host["state"]
        rows.append([
            name, _colour(state, state), host["stage"] or "-", progress_text(host["progress"]),
            host["last_snapshot"] or "-", relative(host.get("last_snapshot_time")),
            _colour(host["last_result"] or "-", host["last_result"]), relative(host["next_run"]),
        ])
    if not rows:
        print("no hosts configured")
        return EXIT_OK
    print(table(["HOST", "STATE", "STAGE", "PROGRESS", "LAST SNAPSHOT", "AGE", "RESULT", "NEXT RUN"], rows))
    for name, host in sorted(result["hosts"].items()):
        if host["last_result"] in ("failed", "warning") and host.get("last_error"):
            print(f"{name}: {host['last_error']}")
    return EXIT_OK


def cmd_run(client: Client, args) -> int:
    params = {"kind": args.kind, "dry_run": args.dry_run}
    if args.hosts:
        params["hosts"] = args.hosts
    job_id = client.call("job.start", params)["job_id"]
    if not args.wait:
        if args.json:
            return _print_json({"job_id": job_id})
        print(job_id if job_id is not None else "nothing to run")
        return EXIT_OK
    if not args.json:
        print(f"job {job_id} started")
    return _wait_for_job(client, job_id, args.json)


def _wait_for_job(client: Client, job_id: int, as_json: bool) -> int:
    seen: dict[str, tuple] = {}
    while True:
        job = client.call("job.get", {"job_id": job_id})["job"]
        for host in job["hosts"]:
            key = (host["status"], host["stage"])
            if seen.get(host["host"]) != key:
                seen[host["host"]] = key
                if as_json:
                    print(json.dumps({"event": "host", "job_id": job_id, **host}), flush=True)
                else:
                    print(_host_line(host), flush=True)
        if job["status"] in protocol.FINAL_STATUSES:
            break
        time.sleep(POLL_SECONDS)
    if as_json:
        print(json.dumps({"job": job}), flush=True)
    else:
        print(f"job {job_id}: {_colour(job['status'])}")
    return EXIT_OK if job["status"] in protocol.SUCCESS_STATUSES else EXIT_FAILED


def _host_line(host: dict) -> str:
    line = f"{host['host']}: {_colour(host['status'])}"
    if host["status"] == "running" and host["stage"]:
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
    result = client.call("jobs.list", params)
    if args.json:
        return _print_json(result)
    rows = [[str(j["job_id"]), j["kind"] + (" (dry run)" if j["dry_run"] else ""), _colour(j["status"]),
             j["trigger"], relative(j["started"]), _duration(j), ",".join(h["host"] for h in j["hosts"])]
            for j in result["jobs"]]
    print(table(["ID", "KIND", "STATUS", "TRIGGER", "STARTED", "TOOK", "HOSTS"], rows) if rows else "no jobs yet")
    return EXIT_OK


def _duration(record: dict) -> str:
    start, end = _parse_time(record.get("started")), _parse_time(record.get("finished"))
    return span((end - start).total_seconds()) if start and end else "-"


def cmd_job(client: Client, args) -> int:
    result = client.call("job.get", {"job_id": args.job_id})
    if args.json:
        return _print_json(result)
    job = result["job"]
    print(f"job {job['job_id']}: {job['kind']}{' (dry run)' if job['dry_run'] else ''}, "
          f"{_colour(job['status'])}, {job['trigger']}")
    print(f"started {job['started']}, finished {job['finished'] or '-'}")
    for host in job["hosts"]:
        print("  " + _host_line(host) + (f" (took {_duration(host)})" if host.get("finished") else ""))
    return EXIT_OK if job["status"] in protocol.SUCCESS_STATUSES | {"running", "queued"} else EXIT_FAILED


def cmd_snapshots(client: Client, args) -> int:
    result = client.call("snapshots.list", {"host": args.host})
    if args.json:
        return _print_json(result)
    rows = [[s["name"], relative(s["time"]), s["tier"], number(s["files"]), size(s["bytes"]),
             number(s["changed_files"]), number(s["deleted_files"])] for s in result["snapshots"]]
    print(table(["NAME", "AGE", "TIER", "FILES", "SIZE", "CHANGED", "DELETED"], rows)
          if rows else f"no snapshots of {args.host} yet")
    return EXIT_OK


def cmd_schedule(client: Client, args) -> int:
    result = client.call("schedule.list")
    if args.json:
        return _print_json(result)
    rows = [[e["host"], e["kind"], e["every"], relative(e["next_run"]) if e["enabled"] else "manual only",
             e["next_run"] or "-"] for e in result["entries"]]
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
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{host}: keep {len(decisions) - deleting}, {verb} {deleting}")
        rows = [[d["snapshot"], d["action"], d["tier"], d["reason"]] for d in decisions
                if args.dry_run or d["action"] == "delete"]
        if rows:
            print(table(["  SNAPSHOT", "ACTION", "TIER", "REASON"], [["  " + r[0], *r[1:]] for r in rows]))
    return EXIT_OK


def _print_json(result: dict) -> int:
    print(json.dumps(result, indent=None))
    return EXIT_OK


# ---- argument parsing -------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    # Global options work before or after the command (`bkctl --json status`,
    # `bkctl status --json`): subcommands repeat them with SUPPRESS defaults.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help=f"daemon socket (default: $BKD_SOCKET or {protocol.DEFAULT_SOCKET})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's answer as JSON")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="S",
                        help="seconds to wait for each answer (default 30)")
    parser = argparse.ArgumentParser(prog="bkctl", parents=[common],
                                     description="control and query the bkd backup daemon")
    parser.add_argument("--version", action="store_true", help="print the client version")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, func, help_text):
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(func=func)
        return sub

    add("status", cmd_status, "daemon and per-host state")
    run = add("run", cmd_run, "start a job now (default: every host, a snapshot)")
    run.add_argument("hosts", nargs="*", metavar="HOST")
    run.add_argument("--kind", default="snapshot", choices=["snapshot", "archive", "monthly", "all"])
    run.add_argument("--dry-run", action="store_true", help="test connectivity and rsync; write nothing")
    run.add_argument("--wait", action="store_true", help="follow the job and exit with its result")
    cancel = add("cancel", cmd_cancel, "stop running work; its partial output is removed")
    cancel.add_argument("hosts", nargs="*", metavar="HOST")
    cancel.add_argument("--job", type=int, metavar="ID")
    jobs = add("jobs", cmd_jobs, "job history")
    jobs.add_argument("--host")
    jobs.add_argument("--limit", type=int, default=20)
    job = add("job", cmd_job, "one job in detail")
    job.add_argument("job_id", type=int, metavar="ID")
    snapshots = add("snapshots", cmd_snapshots, "a host's snapshots")
    snapshots.add_argument("host", metavar="HOST")
    add("schedule", cmd_schedule, "scheduled work and its next run time")
    prune = add("prune", cmd_prune, "apply retention now (deleted snapshots go to the trash first)")
    prune.add_argument("hosts", nargs="*", metavar="HOST")
    prune.add_argument("--dry-run", action="store_true", help="print the plan: keep/delete, tier and reason")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    if args.version:
        print(f"bkctl {_client_version()} (protocol {protocol.PROTOCOL_VERSION})")
        return EXIT_OK
    if not args.command:
        parser.print_usage(sys.stderr)
        print("bkctl: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    path = getattr(args, "socket", None) or protocol.default_socket()
    try:
        with Client(path, getattr(args, "timeout", 30.0)) as client:
            return args.func(client, args)
    except Unreachable as e:
        print(f"bkctl: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RemoteError as e:
        print(f"bkctl: {e.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("bkd")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
