"""bkd [--config PATH] COMMAND: serve | check-config | init | config show | config sample | host add | audit reanchor."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, Problem, check_config, config_path, load_config, to_toml
from .config.load import validate
from .config.sample import INIT_TITLE, render


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bkd", description="bkd backup daemon")
    parser.add_argument("--config", help="config file (default: $BKD_CONFIG or /etc/bkd/bkd.toml)")
    parser.add_argument("--version", action="version", version=f"bkd {__version__}")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"], help="(serve) log level")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the daemon in the foreground (the default)")
    check = commands.add_parser("check-config", help="validate the config; print every problem")
    check.add_argument("--no-dirs", action="store_true",
                       help="skip the checks against this machine: backup_root, state_dir and host "
                            "directories, the files keys name, local sources (for a config meant for "
                            "another machine)")
    init = commands.add_parser("init", help="write a starter config")
    init.add_argument("--backup-root", required=True, help="where snapshots go")
    init.add_argument("--host", action="append", default=[], metavar="NAME=SOURCE",
                      help="a host to back up (repeatable), e.g. web1=web1:/home/")
    init.add_argument("--output", help="write here instead of the config path; - for stdout")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    show = commands.add_parser("config", help="config tools")
    show.add_argument("action", choices=["show", "sample"],
                      help="show: print the effective config; sample: print every key with its default, "
                           "range and description, as comments (what /etc/bkd/bkd.toml.example holds)")
    host = commands.add_parser(
        "host", help="enrol a source host (root on the server): bkd's key, the host key pinned, the "
                     "authorized_keys line, readiness checks, then conf.d/NAME.toml and a reload",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Nothing is written before the checks pass (but bkd's key and the host key you confirmed):\n"
               "run it, put the printed line on the host, run it again.\n\n"
               "Examples:\n"
               "  bkd host add web1 web1.example.org --path /srv\n"
               "  bkd host add db1 bkd@db1.example.org:2222 --sudo --from 192.0.2.10 --yes")
    host.add_argument("action", choices=["add"], help="add: enrol the host NAME reached at TARGET")
    host.add_argument("name", metavar="NAME", help="the host's name in bkd (its directory, its ssh Host alias)")
    host.add_argument("target", metavar="TARGET",
                      help="[user@]host[:port], an IPv6 address in brackets; without a user, root")
    host.add_argument("--path", default="/", metavar="DIR",
                      help="what to back up on the host (default /): the one directory bkd's key may read")
    host.add_argument("--sudo", action="store_true",
                      help="TARGET's user is not root: its key runs `sudo -n rrsync -ro DIR`; prints the sudoers "
                           "lines to add on the host")
    host.add_argument("--from", dest="from_", metavar="ADDR",
                      help="this server's address as the host sees it, for the key's from= (default: the "
                           "address this server reaches the host from)")
    host.add_argument("--yes", action="store_true",
                      help="pin the host key without asking (it is still shown): once you have compared it")
    host.add_argument("--restore-key", action="store_true",
                      help="also make bkd's restore key ([ssh] restore_identity_file) and print its "
                           "authorized_keys line: restores to NAME:/path need it")
    audit = commands.add_parser("audit", help="audit log tools (with the daemon stopped)")
    audit.add_argument("action", choices=["reanchor"],
                       help="reanchor: after rebuilding the state database on purpose, make the audit "
                            "head record name its newest entry (recorded as an audit entry)")
    return parser


def _print_problems(problems: list[Problem]) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1


def _init(args, path: Path) -> int:
    hosts = []
    for spec in args.host:
        name, sep, source = spec.partition("=")
        if not sep:
            print(f"bkd init: --host {spec!r}: use NAME=SOURCE", file=sys.stderr)
            return 2
        hosts.append({"name": name, "source": source})
    starter = {"backup_root": str(Path(args.backup_root).absolute()), "host": hosts}
    target = "-" if args.output == "-" else Path(args.output) if args.output else path
    _, problems = validate(starter, {}, Path(str(target)))
    if problems:
        return _print_problems(problems)
    text = render(starter, INIT_TITLE)
    if target == "-":
        sys.stdout.write(text)
        return 0
    if target.exists() and not args.force:
        print(f"bkd init: {target} exists; use --force to overwrite it", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = config_path(args.config)
    command = args.command or "serve"
    if command == "init":
        return _init(args, path)
    if command == "host":
        from .cli.enrol import add
        return add(args, path)
    if command == "config" and args.action == "sample":
        sys.stdout.write(render())  # from the schema alone: no config needed
        return 0
    if command == "check-config":
        problems = check_config(path, directories=not args.no_dirs)
        _print_problems(problems)
        # Warnings alone: the daemon starts with this config (the unit's ExecStartPre runs check-config).
        return 1 if any(not p.warning for p in problems) else 0
    try:
        config = load_config(path)
    except ConfigError as e:
        return _print_problems(e.problems)
    if command == "config":
        sys.stdout.write(to_toml(config))
        return 0
    if command == "audit":
        from .infra import logs
        from .cli.audit import reanchor
        from .infra.errors import StartupError
        logs.configure(args.log_level)  # the new entry goes to the journal like every other
        try:
            print(asyncio.run(reanchor(config)))
        except StartupError as e:
            print(f"bkd audit reanchor: {e}", file=sys.stderr)
            return 1
        return 0

    from .infra import logs
    from .app import serve
    from .infra.errors import StartupError

    logs.configure(args.log_level)
    try:
        asyncio.run(serve(path, config))
    except StartupError as e:
        print(f"bkd: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
