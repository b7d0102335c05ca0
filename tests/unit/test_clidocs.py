"""The man pages and the bash completion that scripts/clidocs.py generates at
build time: they render without warnings, list what the parsers and the
config schema hold (and nothing hidden), come out the same wherever they are
made, and the completion offers commands, options and choices."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import clidocs
from bkd.config.load import validate
from bkd.config.models import Section

ROOT = Path(__file__).parents[2]
PAGES = ["bkd.8", "bkctl.1", "bkd.toml.5"]
HIDDEN = "restore-transport"  # an internal command bkctl once had: never in the pages


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return clidocs.write(tmp_path_factory.mktemp("generated"))


def man(page: Path) -> subprocess.CompletedProcess:
    if not shutil.which("man"):
        pytest.fail("man is missing: run the README's test command (make test)")
    return subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                          env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""})


def unroff(text: str) -> str:
    """A roff source line as the reader sees it (fonts dropped, escapes undone)."""
    text = re.sub(r"\\f[BIR]", "", text)
    return text.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "").replace("\\:", "").replace("\\(dq", '"')


@pytest.mark.parametrize("page", PAGES)
def test_the_man_pages_render_without_warnings(generated, page):
    result = man(generated / page)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(page.rsplit(".", 1)[0].upper() + "(")


def help_of(parser: argparse.ArgumentParser) -> tuple[list[str], set[str]]:
    """The commands and the options a parser's --help lists."""
    text = parser.format_help()
    listing = text.split("\n  COMMAND\n", 1)[1].split("\n\n")[0] if "\n  COMMAND\n" in text else ""
    # Each command's name and the first word of its help; Python 3.11's argparse lists a
    # command added with help=SUPPRESS as "==SUPPRESS==" (bkctl's restore-transport).
    entries = re.findall(r"^    (\S+)\s*(\S*)", listing, re.M)
    commands = [name for name, first in entries if first != argparse.SUPPRESS]
    options = re.search(r"^options:\n(.*?)(?:\n\n|\Z)", text, re.M | re.S)[1]
    return commands, set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", options))


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


@pytest.mark.parametrize("program, page", [("bkd", "bkd.8"), ("bkctl", "bkctl.1")])
def test_the_man_page_has_every_command_and_option_help_shows(generated, program, page):
    from bkctl.cli import _parser as bkctl_parser

    from bkd.__main__ import _parser as bkd_parser
    parser = {"bkd": bkd_parser, "bkctl": bkctl_parser}[program]()
    source = (generated / page).read_text()
    sections = {unroff(title): unroff(body)
                for title, body in re.findall(r'^\.SS "([^\n]*)"\n(.*?)(?=^\.S[SH] )', source, re.M | re.S)}
    commands, options = help_of(parser)
    assert commands and list(sections) == [f"{program} {c}" for c in commands]
    head = unroff(source.split(".SH COMMANDS")[0])
    assert [o for o in options if not re.search(rf"(?<![\w-]){o}(?![\w-])", head)] == []
    for name in commands:
        _, own = help_of(subparsers(parser)[name])
        text = sections[f"{program} {name}"]
        missing = [o for o in own - options - {"-h", "--help"} if not re.search(rf"(?<![\w-]){o}(?![\w-])", text)]
        assert not missing, f"{program} {name}: {missing} not in its section of {page}"


def test_hidden_commands_are_in_neither_the_man_page_nor_the_completion(generated):
    """What --help hides (help=SUPPRESS) is described nowhere: a parser with a
    hidden command and a hidden option, and the pages of the real ones."""
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("shown", help="a command")
    commands.add_parser("internal", help=argparse.SUPPRESS)
    generator = clidocs.load()
    described = generator.describe(parser)
    assert [c.path[-1] for c in described.commands] == ["shown"]
    assert all("--secret" not in a.flags for a in described.args)
    assert "internal" not in generator.completion(described, hosts_from_daemon=False)
    assert HIDDEN.replace("-", "\\-") not in (generated / "bkctl.1").read_text()
    assert HIDDEN not in (generated / "completions/bkctl").read_text()


def test_generation_is_deterministic(generated, tmp_path):
    """The same bytes from another process, directory, terminal width, locale,
    time zone and hash seed; the date is the newest debian/changelog entry's."""
    env = {"PATH": os.environ["PATH"], "COLUMNS": "37", "LANG": "C", "TZ": "Pacific/Kiritimati",
           "PYTHONHASHSEED": "4242"}
    subprocess.run([sys.executable, str(clidocs.SCRIPT), str(tmp_path / "out")], check=True, env=env, cwd="/")
    files = sorted(p.relative_to(generated) for p in generated.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    for name in files:
        assert (tmp_path / "out" / name).read_bytes() == (generated / name).read_bytes(), name
    trailer = next(line for line in (ROOT / "debian/changelog").read_text().splitlines() if line.startswith(" -- "))
    date = re.search(r"(\d+) (\w+) (\d{4})", trailer).groups()
    from datetime import datetime
    expected = datetime.strptime(" ".join(date), "%d %b %Y").strftime("%Y-%m-%d")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for page in PAGES:
        th = next(line for line in (generated / page).read_text().splitlines() if line.startswith(".TH "))
        assert f'"{expected}" "bkd {version}"' in th, th


def toml_page_keys(source: str) -> dict[str, str]:
    """"table.key" ("key" at the top; "host.schedule" for a table of overrides) -> its line of facts."""
    keys = {}
    part = source.split("\n.SH KEYS\n", 1)[1].split("\n.SH ", 1)[0]
    for index, block in enumerate(part.split("\n.SS ")):
        title, body = ("", block) if index == 0 else block.split("\n", 1)
        table = re.match(r"\[*([\w.]*)", unroff(title.strip('"')))[1]  # [[notify]] with type = "email": notify
        if "." in table and "Any key of" in unroff(body):
            keys[table] = "(inherited)"
        for name, facts in re.findall(r"^\.TP\n\\fB(.+?)\\fR\n(.*)$", body, re.M):
            keys[f"{table}.{unroff(name)}" if table else unroff(name)] = unroff(facts)
    return keys


def test_bkd_toml_page_has_every_key_of_the_schema_with_its_default_and_range(generated):
    """docs/configuration.md's key table is held to the models by test_configuration_docs;
    the page is held to that table here."""
    from test_configuration_docs import documented
    page = toml_page_keys((generated / "bkd.toml.5").read_text())
    documented_keys = documented()
    assert set(page) == set(documented_keys)
    for key, (default, range_) in documented_keys.items():
        facts = page[key]
        if default == "(required)":
            assert "required" in facts, key
        elif default == "(inherited)":
            assert facts == "(inherited)", key
        elif not key.endswith(".type"):
            shown = re.search(r"default (.*)\.$", facts)[1]
            assert tomllib.loads(f"v = {shown}") == tomllib.loads(f"v = {default.strip('`')}"), key
        if match := re.fullmatch(r"([\d.]+)–([\d.]+)", range_):
            assert f"from {match[1]} to {match[2]}" in facts, key


def test_bkd_toml_page_takes_descriptions_from_the_schema():
    """A description added to the schema (Field(description=...), a table's
    docstring) appears in the page without touching the generator."""
    from pydantic import Field

    from bkd.config.schema import Key, table_of
    generator = clidocs.load()

    class Knobs(Section):
        """How the knobs turn."""
        speed: int = Field(3, description="turns per second")
        name: str = ""

    class Demo(Section):
        size: int = Field(1, description="how big")
        knobs: Knobs = Field(default_factory=Knobs)

    top, knobs = generator.schema_sections(table_of(Demo))
    assert top[2][0] == Key("size", "integer", "1", "", "how big")
    assert knobs[:2] == ("[knobs]", "How the knobs turn.")
    assert [(k.name, k.description) for k in knobs[2]] == [("speed", "turns per second"), ("name", "")]


def test_the_toml_example_of_the_page_is_a_valid_config(tmp_path):
    example = clidocs.load().TOML_EXAMPLE
    config, problems = validate(tomllib.loads(example), {}, tmp_path / "bkd.toml")
    assert problems == [] and config.host[0].name == "web1"


def test_help_text_is_shown_as_written_never_read_as_roff(tmp_path):
    """Help that starts with a dot, or holds backslashes and quotes, is text."""
    generator = clidocs.load()
    parser = argparse.ArgumentParser(prog="demo", description=".TH FAKE 1\n'br no break")
    commands = parser.add_subparsers(metavar="COMMAND")
    sub = commands.add_parser('say "hi"', help=".SH NOT A SECTION")
    sub.add_argument("--path", help=r"a \fBbold\fR claim and C:\new, -v --verbose")
    page = generator.command_page(generator.describe(parser), generator.Page(1, "demo", "", {}, ()), "0", "2026-01-01")
    (tmp_path / "demo.1").write_text(page)
    result = man(tmp_path / "demo.1")
    assert (result.returncode, result.stderr) == (0, "")
    text = re.sub(r"\s+", " ", result.stdout)
    for literal in (".TH FAKE 1 'br no break", ".SH NOT A SECTION", r"a \fBbold\fR claim and C:\new, -v --verbose",
                    'demo say "hi"'):
        assert literal in text


def test_an_example_in_an_epilog_keeps_its_lines(tmp_path):
    generator = clidocs.load()
    parser = argparse.ArgumentParser(prog="demo", formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(metavar="COMMAND")
    commands.add_parser("run", help="run it", formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="Example:\n  demo run web1 --wait\n  demo run --kind all\nthen\nmore text.")
    page = generator.command_page(generator.describe(parser), generator.Page(1, "demo", "", {}, ()), "0", "2026-01-01")
    (tmp_path / "demo.1").write_text(page)
    result = man(tmp_path / "demo.1")
    assert (result.returncode, result.stderr) == (0, "")
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[lines.index("Example:") + 2:lines.index("Example:") + 4] == ["demo run web1 --wait",
                                                                            "demo run --kind all"]
    assert "then more text." in lines


# ---- completion, without a daemon (tests/e2e/test_completion.py asks one for host names) ----

def complete(script: Path, *words: str, env: dict | None = None) -> tuple[list[str], str]:
    """What bash's completion function offers for the last word of a command line, and its stderr."""
    program = words[0]
    bash = (f'source "$1"; shift; complete -p {program}; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
            f'_{program}; printf "%s\\n" "${{COMPREPLY[@]}}"')
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", bash, "bash", str(script), *words],
                            capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    registered, *offered = result.stdout.splitlines()
    assert registered == f"complete -o bashdefault -o default -F _{program} {program}"
    return [word for word in offered if word], result.stderr


NO_DAEMON = {"BKD_SOCKET": "/nonexistent/bkd.sock"}


@pytest.mark.parametrize("words, expected", [
    (("bkctl", ""), None),  # every visible command: checked below
    (("bkctl", "re"), ["restore", "replicas", "reload", "report"]),
    (("bkctl", "--json", "al"), ["alerts"]),
    (("bkctl", "run", "--k"), ["--kind"]),
    (("bkctl", "run", "--kind", ""), ["snapshot", "archive", "monthly", "all"]),
    (("bkctl", "alerts", "ack", "--kind", "=", "ru"), ["run_failed"]),  # --kind=ru, split at = by bash
    (("bkctl", "alerts", ""), ["ack", "silence", "unsilence"]),
    (("bkctl", "--timeout", "5", "hosts", ""), ["test", "release"]),
    (("bkctl", "watch", "--topic", "l"), ["log"]),
    (("bkd", ""), None),
    (("bkd", "--log-level", "d"), ["debug"]),
    (("bkd", "--config", "/etc/bkd.toml", "config", ""), ["show", "sample"]),
    (("bkd", "check-config", "--"), ["--help", "--config", "--log-level", "--no-dirs"]),  # global ones too
])
def test_completion_offers_commands_options_and_choices(generated, words, expected):
    offered, stderr = complete(generated / "completions" / words[0], *words, env=NO_DAEMON)
    if expected is None:
        from bkctl.cli import _parser as bkctl_parser

        from bkd.__main__ import _parser as bkd_parser
        expected = help_of({"bkd": bkd_parser, "bkctl": bkctl_parser}[words[0]]())[0]
    assert (offered, stderr) == (expected, "")


def test_completion_of_host_names_is_quietly_empty_without_a_daemon(generated):
    for words in (("bkctl", "run", ""), ("bkctl", "snapshots", "w"), ("bkctl", "jobs", "--host", "")):
        assert complete(generated / "completions/bkctl", *words, env=NO_DAEMON) == ([], "")
