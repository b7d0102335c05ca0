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


LOG_LEVELS = ["debug", "info", "warning", "error"]


def _parser() -> argparse.ArgumentParser:
    # Global options work before or after the command (`bkd --log-level debug serve`,
    # `bkd serve --log-level debug`), as bkctl's do: each command repeats them with
    # SUPPRESS defaults, so a value given on either side is kept.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="config file (default: $BKD_CONFIG or /etc/bkd/bkd.toml)")
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS,
                        help="the least severe log events written (default info); serve and audit log")
    parser = argparse.ArgumentParser(
        prog="bkd", parents=[common], description="bkd backup daemon",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  bkd --config /etc/bkd/bkd.toml serve --log-level debug")
    parser.add_argument("--version", action="version", version=f"bkd {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help_text, description=help_text,
                                   epilog=f"Example:\n  {example}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    add("serve", "run the daemon in the foreground (the default)", "bkd serve --log-level debug")
    check = add("check-config", "validate the config; print every problem",
                "bkd check-config --config /etc/bkd/bkd.toml")
    check.add_argument("--no-dirs", action="store_true",
                       help="skip the checks against this machine: backup_root, state_dir and host "
                            "directories, the files keys name, local sources (for a config meant for "
                            "another machine)")
    init = add("init", "write a starter config",
               "bkd init --backup-root /srv/bkd --host web1=root@web1:/ --output -")
    init.add_argument("--backup-root", required=True, metavar="DIR", help="where snapshots go")
    init.add_argument("--host", action="append", default=[], metavar="NAME=SOURCE",
                      help="a host to back up (repeatable), e.g. web1=web1:/home/")
    init.add_argument("--output", metavar="PATH", help="write here instead of the config path; - for stdout")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    show = add("config", "config tools: print the effective config, or a sample of every key",
               "bkd config sample > /etc/bkd/bkd.toml.example")
    show.add_argument("action", choices=["show", "sample"],
                      help="show: print the effective config; sample: print every key with its default, "
                           "range and description, as comments (what /etc/bkd/bkd.toml.example holds)")
    host = commands.add_parser(
        "host", parents=[common], help="enrol a source host (root on the server): bkd's key, the host key pinned, the "
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
    audit = add("audit", "audit log tools (with the daemon stopped)", "bkd audit reanchor")
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
    path = config_path(getattr(args, "config", None))
    log_level = getattr(args, "log_level", "info")
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
        logs.configure(log_level)  # the new entry goes to the journal like every other
        try:
            print(asyncio.run(reanchor(config)))
        except StartupError as e:
            print(f"bkd audit reanchor: {e}", file=sys.stderr)
            return 1
        return 0

    from .infra import logs
    from .app import serve
    from .infra.errors import StartupError

    logs.configure(log_level)
    try:
        asyncio.run(serve(path, config))
    except StartupError as e:
        print(f"bkd: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
