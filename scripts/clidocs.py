#!/usr/bin/python3
"""Man pages and bash completion for bkd and bkctl, generated from their
argparse parsers; bkd.toml(5) and the sample config from the config schema
(build time only: nothing here is installed or imported at run time).

    scripts/clidocs.py [--tree TREE] OUTDIR

writes OUTDIR/bkd.8, OUTDIR/bkctl.1, OUTDIR/bkd.toml.5,
OUTDIR/completions/{bkd,bkctl} and OUTDIR/bkd.toml.example (what `bkd
config sample` prints). TREE is a package's private Python tree (the
/usr/lib/bkd layout debian/bundle-python fills): the package build
documents the bkd it packages. Without it, the bkd importable here (`make
man` uses the venv's). The output depends only on the source: the date is
that of debian/changelog's newest entry."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANUAL = "bkd manual"
# bkd and bkctl are imported inside the functions below: --tree decides where from.


# ---- what a parser accepts ---------------------------------------------------

@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]  # () for a positional
    metavar: str  # "" for an option that takes no value
    nargs: object
    choices: tuple[str, ...]
    help: str
    required: bool = False

    @property
    def takes_value(self) -> bool:
        return bool(self.metavar)

    @property
    def wants_host(self) -> bool:
        """HOST in the metavar, alone or as one alternative (`ID|HOST`): completed with host names."""
        return "HOST" in re.split(r"[|/ ]", self.metavar)


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # ("bkctl", "alerts")
    help: str  # the line the parent's --help lists it with
    description: str
    epilog: str
    args: tuple[Arg, ...]
    commands: tuple[Command, ...]

    @property
    def name(self) -> str:
        return " ".join(self.path)

    def walk(self):
        yield self
        for command in self.commands:
            yield from command.walk()


def _format_value(metavar: str, nargs) -> str:
    """What argparse's usage shows for the values of one argument."""
    if nargs is None:
        return metavar
    if nargs == "?":
        return f"[{metavar}]"
    if nargs == "*":
        return f"[{metavar} ...]"
    if nargs == "+":
        return f"{metavar} [{metavar} ...]"
    if nargs == argparse.REMAINDER:
        return "..."
    return " ".join([metavar] * int(nargs))


def describe(parser: argparse.ArgumentParser, path: tuple[str, ...] | None = None, help: str = "") -> Command:
    """The arguments and subcommands `--help` shows. What it hides (help=SUPPRESS:
    internal commands such as bkctl's restore-transport) is left out."""
    formatter = parser._get_formatter()
    args, commands = [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for listed in action._choices_actions:
                if listed.help != argparse.SUPPRESS:
                    commands.append(describe(action.choices[listed.dest], (*(path or (parser.prog,)), listed.dest),
                                             listed.help or ""))
            continue
        if action.help == argparse.SUPPRESS:
            continue
        choices = tuple(str(c) for c in action.choices or ())
        if action.nargs == 0:
            metavar = ""
        elif action.metavar is not None:
            metavar = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
        elif choices:
            metavar = "{" + ",".join(choices) + "}"
        else:
            metavar = action.dest.upper() if action.option_strings else action.dest
        # Whitespace collapsed as argparse's own help does: a line of help is a paragraph.
        text = " ".join(formatter._expand_help(action).split()) if action.help else ""
        args.append(Arg(tuple(action.option_strings), metavar, action.nargs, choices, text,
                        bool(action.option_strings) and action.required))
    return Command(path or (parser.prog,), help, parser.description or "", parser.epilog or "",
                   tuple(args), tuple(commands))


# ---- roff ---------------------------------------------------------------------

def roff(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def bold(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def italic(text: str) -> str:
    # A break point after each comma: a long list of choices may wrap.
    return f"\\fI{roff(text)}\\fR".replace(",", ",\\:")


def prose(text: str) -> list[str]:
    """Paragraphs of a description or an epilog: indented lines (examples) kept
    line by line, the rest filled; a blank line or a change of indentation
    starts a new paragraph."""
    lines = []
    blocks = itertools.groupby(text.split("\n"), key=lambda row: "blank" if not row.strip()
                               else "example" if row[:1].isspace() else "text")
    for kind, rows in blocks:
        rows = list(rows)
        if kind == "example":
            indent = min(len(row) - len(row.lstrip()) for row in rows)
            lines += [".PP", ".RS 4", ".nf", *(roff(row[indent:]) for row in rows), ".fi", ".RE"]
        elif kind == "text":
            lines += [".PP", roff(" ".join(row.strip() for row in rows))]
    return lines


def _argument(arg: Arg) -> str:
    value = _format_value(arg.metavar, arg.nargs)
    if not arg.flags:
        return italic(value)
    flags = ", ".join(bold(flag) for flag in arg.flags)
    return f"{flags} {italic(value)}" if value else flags


def _usage(arg: Arg) -> str:
    """One argument as the synopsis shows it."""
    if not arg.flags:
        return italic(_format_value(arg.metavar, arg.nargs))
    usage = bold(max(arg.flags, key=len)) + (" " + italic(_format_value(arg.metavar, arg.nargs)) if arg.metavar else "")
    return usage if arg.required else f"[{usage}]"


def _is_help(arg: Arg) -> bool:
    return arg.flags == ("-h", "--help")


def _items(args) -> list[str]:
    lines = []
    for arg in args:
        lines += [".TP", _argument(arg), roff(arg.help) if arg.help else "\\&"]
    return lines


@dataclass(frozen=True)
class Page:
    """What a man page says besides its parser: the sections argparse knows nothing of."""
    section: int
    summary: str  # NAME: what it is, in a few words
    intro: str  # DESCRIPTION, after the parser's own description
    sections: dict[str, list[str]]  # heading -> roff lines (EXIT STATUS, ENVIRONMENT, FILES)
    see_also: tuple[str, ...]


def header(name: str, section: int, version: str, date: str) -> list[str]:
    # Left-aligned and never hyphenated: options, keys and values are copied from here.
    return [f'.\\" Generated by scripts/clidocs.py from the source of bkd {version}; do not edit.',
            f'.TH "{name.upper()}" "{section}" "{date}" "bkd {version}" "{MANUAL}"', ".nh", ".ad l"]


def heading(text: str) -> str:
    """A subsection heading: one macro argument, whatever it holds."""
    return '.SS "' + roff(text).replace('"', "\\(dq") + '"'


def command_page(program: Command, page: Page, version: str, date: str) -> str:
    """A program's man page: its options, then each command with its own."""
    globals_ = [a for a in program.args if a.flags]
    lines = header(program.name, page.section, version, date)
    lines += [".SH NAME", f"{roff(program.name)} \\- {roff(page.summary)}", ".SH SYNOPSIS",
              bold(program.name) + " " + " ".join(_usage(a) for a in globals_ if not _is_help(a))
              + (" " + italic("COMMAND") + " [" + italic("ARGS") + "]" if program.commands else ""),
              ".SH DESCRIPTION"]
    lines += prose(program.description) + prose(page.intro) + prose(program.epilog)
    lines += [".SH OPTIONS", *_items(globals_)]
    if program.commands:
        lines += [".SH COMMANDS"]
        shared = {a.flags for a in globals_}
        for command in list(program.walk())[1:]:
            own = [a for a in command.args if a.flags not in shared and not _is_help(a)]
            lines += [heading(command.name)]
            if own or command.commands:
                lines += [bold(command.name) + "".join(" " + _usage(a) for a in own if a.flags)
                          + "".join(" " + _usage(a) for a in own if not a.flags)
                          + (" " + italic("COMMAND") if command.commands else "")]
            lines += prose(command.description or command.help)
            lines += _items(own)
            if command.epilog:
                lines += prose(command.epilog)
    for title, body in page.sections.items():
        lines += [f".SH {title}", *body]
    lines += [".SH SEE ALSO", ",\n".join(_reference(ref) for ref in page.see_also)]
    return "\n".join(lines) + "\n"


def _reference(ref: str) -> str:
    """`bkctl(1)` as man pages cross-reference, a path in italics."""
    match = re.fullmatch(r"(.+)\((\d)\)", ref)
    return f"{bold(match[1])}({match[2]})" if match else italic(ref)


def _table(rows: list[tuple[str, str]]) -> list[str]:
    """Tagged paragraphs; a tag is roff already (bold, italic), the text is not."""
    lines = []
    for term, text in rows:
        lines += [".TP", term, roff(text)]
    return lines


BKD_INTRO = """\
bkd pulls files from a fleet of Linux hosts with rsync over SSH (or from
local paths) into hardlink snapshots, prunes them by a tiered retention
policy, and makes compressed archives and monthly copies. bkd serve (also
plain bkd) runs the daemon in the foreground, logging to standard error or
the journal: it is what bkd.service starts. bkctl(1) controls it over its
Unix socket; bkd.toml(5) describes the configuration."""

BKCTL_INTRO = """\
bkctl talks to a running bkd(8) over its Unix socket, as the user who runs
it: the daemon decides from that user's groups what it may do (viewer,
operator or admin). The global options work before or after the command;
--json prints the daemon's answer as JSON (JSON lines for the streaming
commands)."""


def bkd_page() -> Page:
    from bkd.config.load import DEFAULT_PATH
    return Page(8, "pull-based hardlink snapshot backup daemon", BKD_INTRO, {
        "EXIT STATUS": _table([("0", "success (check-config: the daemon would start with this config; "
                                     "warnings, if any, are printed as FILE:KEY: warning: message)"),
                               ("1", "the config is invalid (every problem is printed on standard error as "
                                     "FILE:KEY: message), or the daemon could not start"),
                               ("2", "usage error")]),
        "ENVIRONMENT": _table([(bold("BKD_CONFIG"), f"the config file when --config is not given "
                                                    f"(default {DEFAULT_PATH})"),
                               (bold("http_proxy") + ", " + bold("https_proxy") + ", " + bold("no_proxy"),
                                "the proxy for webhooks, pings and the heartbeat, as curl reads them "
                                "(an http:// proxy; https through a CONNECT tunnel)"),
                               (bold("NO_COLOR") + ", " + bold("TERM"),
                                "the log on a terminal is coloured unless NO_COLOR is set or TERM is dumb")]),
        "FILES": _table([(italic(str(DEFAULT_PATH)), "the main config file; see bkd.toml(5)"),
                         (italic(str(DEFAULT_PATH.parent / "conf.d") + "/*.toml"),
                          "drop-ins, merged after it in name order"),
                         (italic("/usr/share/doc/bkd/"), "the full documentation")]),
    }, ("bkctl(1)", "bkd.toml(5)", "rsync(1)", "systemctl(1)", "journalctl(1)"))


def bkctl_page() -> Page:
    from bkctl import cli, protocol
    return Page(1, "control and query the bkd backup daemon", BKCTL_INTRO, {
        "EXIT STATUS": _table([(str(cli.EXIT_OK), "success"),
                               (str(cli.EXIT_FAILED), "the daemon answered with an error (with --json: one JSON "
                                                      "line on standard error), or the job did not succeed"),
                               (str(cli.EXIT_USAGE), "usage error"),
                               (str(cli.EXIT_UNREACHABLE), "the daemon cannot be reached: the message names the "
                                                           "socket and the reason")])
        + [".PP", roff("bkctl check follows the monitoring-plugin rules instead: 0 OK, 1 WARNING, 2 CRITICAL, "
                       "3 UNKNOWN (also for a usage error, --help and --version).")],
        "ENVIRONMENT": _table([(bold("BKD_SOCKET"), f"the daemon's socket when --socket is not given "
                                                    f"(default {protocol.DEFAULT_SOCKET})"),
                               (bold("NO_COLOR"), "when set, no colour"),
                               (bold("TERM"), "dumb: no colour, and progress as a line per event instead of "
                                              "one line per host updated in place"),
                               (bold("TZ"), "the local time zone times are shown in (--utc: UTC)")]),
        "FILES": _table([(italic(protocol.DEFAULT_SOCKET), "the daemon's control socket (mode 0660, group bkd)"),
                         (italic("/usr/share/doc/bkd/"), "the full documentation")]),
    }, ("bkd(8)", "bkd.toml(5)"))


# ---- bkd.toml(5) from the schema -----------------------------------------------

def schema_sections(table, title: str = "", path: str = "") -> list[tuple[str, str, tuple]]:
    """The schema's tables (bkd.config.schema.table_of) as the page lists them:
    (heading, description, keys); a tagged array's members after the keys they
    share, each with its own keys only."""
    sections = [(title, table.description, table.keys)]
    shared = {key.name for key in table.keys}
    for value, member in table.members:
        own = tuple(key for key in member.keys if key.name not in shared)
        sections.append((f"{title} with {table.tag} = {json.dumps(value)}", member.description, own))
    for sub in table.tables:
        name = f"{path}.{sub.name}" if path else sub.name
        sections += schema_sections(sub, f"[[{name}]]" if sub.array else f"[{name}]", name)
    return sections


TOML_INTRO = """\
bkd reads one TOML file, then every conf.d/*.toml beside it in name order.
Tables merge key by key and a later file wins; a list value is replaced as a
whole; the arrays of tables [[host]] and [[notify]] are concatenated, so a
drop-in can add hosts and notification sinks.

Unknown keys are errors and values are typed: a string where a number
belongs is refused, not converted. bkd check-config prints every problem as
FILE:KEY: message and exits 1; the daemon refuses to start on such a config,
and a reload that meets one keeps the running config.

A duration is a number and a unit, optionally combined: 90s, 15m, 1h, 7d,
2w, 1h30m. Paths are absolute. Ranges are inclusive.

bkd config show prints the effective config, with every default filled in."""


# The page's example (a test loads it with bkd's own loader).
TOML_EXAMPLE = """\
backup_root = "/srv/bkd"

[schedule]
snapshot_every = "1h"

[[host]]
name = "web1"
source = "root@web1:/home/"
exclude = ["*.iso"]

[host.retention]
daily_days = 30
"""


def toml_page(version: str, date: str) -> str:
    from bkd.config.load import DEFAULT_PATH
    from bkd.config.models import Config
    from bkd.config.schema import table_of
    lines = header("bkd.toml", 5, version, date)
    lines += [".SH NAME", "bkd.toml \\- configuration of the bkd backup daemon", ".SH SYNOPSIS",
              italic(str(DEFAULT_PATH)), ".br", italic(str(DEFAULT_PATH.parent / "conf.d") + "/*.toml"),
              ".SH DESCRIPTION", *prose(TOML_INTRO), ".SH KEYS"]
    for title, description, keys in schema_sections(table_of(Config)):
        if title:
            lines += [heading(title)]
        if description:
            lines += prose(description)
        for key in keys:
            facts = [key.type, *([key.range] if key.range else []),
                     f"default {key.default}" if key.default else "required"]
            lines += [".TP", bold(key.name), roff("; ".join(facts) + ".")]
            if key.description:
                lines += [".br", roff(key.description)]
    lines += [".SH EXAMPLE", *prose("\n".join("    " + line for line in TOML_EXAMPLE.splitlines())),
              ".SH FILES", *_table([(italic(str(DEFAULT_PATH)), "the main file (a conffile: bkd never rewrites it)"),
                                    (italic(str(DEFAULT_PATH.parent / "conf.d") + "/"), "drop-ins"),
                                    (italic("/usr/share/doc/bkd/configuration.md"), "every key explained")]),
              ".SH SEE ALSO", ",\n".join(_reference(r) for r in ("bkd(8)", "bkctl(1)", "rsync(1)", "ssh_config(5)"))]
    return "\n".join(lines) + "\n"


# ---- bash completion -------------------------------------------------------------

HOSTS = "@hosts"  # in a list of candidates: the daemon's host names

# The completion function; @NAME@ stands for the program's name as a shell
# identifier, the case lines of the three lookups are generated from the parser.
COMPLETION = """\
# bash completion for @PROGRAM@: generated by scripts/clidocs.py from its argparse parser; do not edit.
@HOSTS@
_@NAME@_commands() {  # COMMAND: its subcommands
    case $1 in
@COMMANDS@
    esac
}

_@NAME@_values() {  # COMMAND -: its options; COMMAND OPTION: that option's values (fails: it takes none)
    case "$1 $2" in
@VALUES@
        *) return 1 ;;
    esac
}

_@NAME@_positional() {  # COMMAND N: the values of its Nth positional argument
    local -a specs=()
    local repeat=0 n=$2
    case $1 in
@POSITIONALS@
    esac
    if ((n >= ${#specs[@]})); then
        ((repeat)) || return 0
        n=$((${#specs[@]} - 1))
    fi
    echo "${specs[n]}"
}

_@NAME@() {
    local cur=${COMP_WORDS[COMP_CWORD]} command= option= socket= word words i n=0
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ -n $option ]]; then
            [[ $word == = ]] && continue  # --option=value, split at the = by bash
            [[ $option == --socket ]] && socket=$word
            option=
        elif [[ $word == -?* ]]; then
            _@NAME@_values "$command" "$word" >/dev/null && option=$word
        elif ((n == 0)) && [[ " $(_@NAME@_commands "$command") " == *" $word "* ]]; then
            command=${command:+$command }$word
        else
            n=$((n + 1))
        fi
    done
    [[ $cur == = ]] && cur=
    if [[ -n $option ]]; then
        words=$(_@NAME@_values "$command" "$option")
    elif [[ $cur == -* ]]; then
        words=$(_@NAME@_values "$command" -)
    elif ((n == 0)) && [[ -n $(_@NAME@_commands "$command") ]]; then
        words=$(_@NAME@_commands "$command")
    else
        words=$(_@NAME@_positional "$command" $n)
    fi
@ASK@    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}

complete -o bashdefault -o default -F _@NAME@ @PROGRAM@
"""

# Host names from the daemon the command line would reach: only names that
# follow the config's host-name rule reach compgen, which expands what it is given.
HOST_NAMES = """
_@NAME@_hosts() {  # PROGRAM SOCKET: the daemon's host names; nothing, quietly, when it cannot be reached
    "$1" ${2:+--socket "$2"} --json --timeout 3 hosts 2>/dev/null | python3 -I -c '
import json, re, sys
try:
    names = [host["name"] for host in json.load(sys.stdin)["hosts"]]
except Exception:
    names = []
print("\\n".join(n for n in names if isinstance(n, str) and re.fullmatch("@RULE@", n)))
' 2>/dev/null
}
"""


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def completion(program: Command, hosts_from_daemon: bool) -> str:
    """A bash completion script: commands, options, choices and, for HOST
    arguments when hosts_from_daemon, the host names of the daemon that the
    program being completed reaches (through `--json hosts`)."""
    from bkd.config.models import HOST_NAME

    def candidates(arg: Arg) -> str:
        return HOSTS if arg.wants_host and hosts_from_daemon else " ".join(arg.choices)

    def case(patterns: list[str], action: str) -> str:
        return f"        {'|'.join(_quote(p) for p in patterns)}) {action} ;;"

    commands, values, positionals = [], [], []
    for command in program.walk():
        key = " ".join(command.path[1:])
        if command.commands:
            commands.append(case([key], "echo " + _quote(" ".join(c.path[-1] for c in command.commands))))
        values.append(case([f"{key} -"], "echo " + _quote(" ".join(f for a in command.args for f in a.flags))))
        values += [case([f"{key} {flag}" for flag in arg.flags], "echo " + _quote(candidates(arg)))
                   for arg in command.args if arg.flags and arg.takes_value]
        specs = [a for a in command.args if not a.flags]
        if specs and not command.commands:
            repeat = int(specs[-1].nargs in ("*", "+", argparse.REMAINDER))
            positionals.append(case([key], f"specs=({' '.join(_quote(candidates(a)) for a in specs)}) repeat={repeat}"))
    assert "'" not in HOST_NAME.pattern and '"' not in HOST_NAME.pattern  # it goes inside the quotes above
    ask = f'    [[ $words == {HOSTS} ]] && words=$(_@NAME@_hosts "${{COMP_WORDS[0]}}" "$socket")\n'
    script = COMPLETION.replace("@HOSTS@", HOST_NAMES if hosts_from_daemon else "")
    script = script.replace("@ASK@", ask if hosts_from_daemon else "")
    for mark, lines in (("@COMMANDS@", commands), ("@VALUES@", values), ("@POSITIONALS@", positionals)):
        script = script.replace(mark, "\n".join(lines))
    return (script.replace("@NAME@", re.sub(r"\W", "_", program.name)).replace("@PROGRAM@", program.name)
            .replace("@RULE@", HOST_NAME.pattern))


# ---- the files -----------------------------------------------------------------

def changelog_date(changelog: Path = ROOT / "debian" / "changelog") -> str:
    """The date of the newest entry of a Debian changelog, as YYYY-MM-DD."""
    trailer = next(line for line in changelog.read_text().splitlines() if line.startswith(" -- "))
    return datetime.strptime(trailer.split("  ", 1)[1].strip(), "%a, %d %b %Y %H:%M:%S %z").strftime("%Y-%m-%d")


def generate() -> dict[str, str]:
    """File name -> content."""
    from bkctl.cli import _parser as bkctl_parser

    from bkd import __version__
    from bkd.__main__ import _parser as bkd_parser
    from bkd.config.sample import render
    date = changelog_date()
    bkd, bkctl = describe(bkd_parser()), describe(bkctl_parser())
    return {
        "bkd.8": command_page(bkd, bkd_page(), __version__, date),
        "bkctl.1": command_page(bkctl, bkctl_page(), __version__, date),
        "bkd.toml.5": toml_page(__version__, date),
        "completions/bkd": completion(bkd, hosts_from_daemon=False),
        "completions/bkctl": completion(bkctl, hosts_from_daemon=True),
        "bkd.toml.example": render(),  # what `bkd config sample` prints
    }


def use_tree(tree: Path) -> None:
    """Import bkd from a package's private tree, as its launcher does."""
    python = tree / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not python.is_dir():
        sys.exit(f"clidocs: {tree} has no build for this Python ({python.name})")
    sys.path[:0] = [str(python), str(tree / "site-packages")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clidocs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="a package's private Python tree to take bkd from")
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    sys.dont_write_bytecode = True  # never a __pycache__ in the tree being packaged
    if args.tree:
        use_tree(args.tree)
    for name, text in generate().items():
        path = args.outdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
