"""Colour only where it can be seen and is wanted: on a terminal, without
NO_COLOR (no-color.org) and not with TERM=dumb — for bkctl's output and for
the daemon's console log alike (fmt.colour_allowed, the one rule)."""

from __future__ import annotations

import os
import pty

import pytest
import structlog

from bkctl import fmt
from bkd.infra import logs


@pytest.fixture
def terminal():
    """A pseudo-terminal: the file its writer sees, and what was written to it."""
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w", encoding="utf-8")

    def written() -> str:
        stream.flush()
        return os.read(master, 65536).decode()

    yield stream, written
    stream.close()
    os.close(master)


@pytest.mark.parametrize("env, coloured", [
    ({"TERM": "xterm-256color"}, True),
    ({"TERM": "dumb"}, False),
    ({"TERM": "xterm-256color", "NO_COLOR": "1"}, False),
    ({"TERM": "xterm-256color", "NO_COLOR": ""}, True),  # set but empty: no-color.org says it does not count
])
def test_bkctl_colours_only_a_terminal_that_wants_it(monkeypatch, terminal, env, coloured):
    stream, _ = terminal
    monkeypatch.delenv("NO_COLOR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdout", stream)
    assert (fmt.colour("failed") != "failed") == coloured
    assert fmt.colour_allowed() == coloured


def test_bkctl_never_colours_what_is_not_a_terminal(monkeypatch, tmp_path):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    with open(tmp_path / "out", "w") as stream:
        monkeypatch.setattr("sys.stdout", stream)
        assert fmt.colour("failed") == "failed"


@pytest.mark.parametrize("env, coloured", [
    ({"TERM": "xterm-256color"}, True),
    ({"TERM": "xterm-256color", "NO_COLOR": "1"}, False),
    ({"TERM": "dumb"}, False),
])
def test_the_daemons_console_log_honours_no_color_and_term_dumb(monkeypatch, terminal, env, coloured):
    stream, written = terminal
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        logs.configure("info", stream=stream)
        structlog.get_logger().info("run.finished", host="web1")
        line = written()
    finally:
        structlog.reset_defaults()
    assert "run.finished" in line and "web1" in line
    assert ("\x1b[" in line) == coloured, repr(line)
