"""Every option and positional of bkd and bkctl says what it is for, and every
command's --help (and so its man page section) ends with an example that the
parser itself accepts."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

import clidocs
from bkctl.cli import _parser as bkctl_parser
from bkd.__main__ import _parser as bkd_parser

PARSERS = {"bkd": bkd_parser, "bkctl": bkctl_parser}


def commands(parser: argparse.ArgumentParser):
    """(parser, how --help lists it) for the program and every command --help shows."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for listed in action._choices_actions:
                if listed.help != argparse.SUPPRESS:
                    yield from commands(action.choices[listed.dest])


def everything() -> list[tuple[str, argparse.ArgumentParser]]:
    return [(command.prog, command) for parser in PARSERS.values() for command in commands(parser())]


def examples(parser: argparse.ArgumentParser) -> list[str]:
    """The example lines that end its --help: indented, after `Example:` (or `Examples:`)."""
    text = parser.format_help().rstrip()
    assert re.search(r"\nExamples?:\n", text), f"{parser.prog} --help has no example"
    block = re.split(r"\nExamples?:\n", text)[-1].splitlines()
    assert block and all(line.startswith("  ") for line in block), f"{parser.prog}: {block}"
    return [line.strip() for line in block]


@pytest.mark.parametrize("prog, parser", everything(), ids=[prog for prog, _ in everything()])
def test_every_option_and_positional_has_help(prog, parser):
    missing = [action.option_strings or [action.dest] for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()]
    assert missing == [], f"{prog}: no help for {missing}"


@pytest.mark.parametrize("prog, parser", everything(), ids=[prog for prog, _ in everything()])
def test_every_commands_help_ends_with_an_example_its_parser_accepts(prog, parser):
    program = prog.split()[0]
    for example in examples(parser):
        words = shlex.split(example.split(" > ")[0].split(" | ")[0])  # the command, not the shell's redirection
        assert words[0] == program and prog.split()[1:] == [w for w in words[1:len(prog.split())]], (prog, example)
        try:
            PARSERS[program]().parse_args(words[1:])
        except (SystemExit, Exception) as e:  # argparse exits (bkd) or raises (bkctl) on a usage error
            raise AssertionError(f"{prog}: the example {example!r} does not parse: {e}") from None


def test_a_parser_without_help_or_example_is_caught():
    """The walk above fails on what it is meant to catch."""
    parser = argparse.ArgumentParser(prog="demo", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example:\n  demo run")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run it")
    run.add_argument("--quiet", action="store_true")
    (_, listed), = [(p.prog, p) for p in commands(parser)][1:]
    assert [a.option_strings for a in listed._actions if not a.help] == [["--quiet"]]
    with pytest.raises(AssertionError, match="has no example"):
        examples(listed)


def test_the_man_pages_carry_the_examples(tmp_path):
    generated = clidocs.write(tmp_path)
    page = (generated / "bkctl.1").read_text()
    assert "bkctl restore web1 latest /etc/nginx \\-\\-to /tmp/restored" in page
    assert "bkd serve \\-\\-log\\-level debug" in (generated / "bkd.8").read_text()
