"""bkctl's progress on a terminal (live.LiveLines): one line per host updated
in place, its last line printed for good when it ends, other lines above the
live ones; plain lines elsewhere. What a terminal shows is replayed here by a
small screen model of the few controls it writes (\\r, \\n, cursor up and
down, clear to the end of the line and of the screen)."""

from __future__ import annotations

import io
import re

from bkctl.live import LiveLines, fit


class Screen:
    """The visible lines after a stream of text and the controls LiveLines uses."""

    def __init__(self):
        self.rows: list[str] = [""]
        self.row = self.col = 0

    def feed(self, data: str) -> Screen:
        for token in re.findall(r"\x1b\[\d*[ABJK]|.", data, re.S):
            if token == "\r":
                self.col = 0
            elif token == "\n":
                self.row += 1
                self.col = 0
                if self.row == len(self.rows):
                    self.rows.append("")
            elif token.startswith("\x1b["):
                count = int(token[2:-1] or 1)
                if token[-1] == "A":
                    self.row = max(0, self.row - count)
                elif token[-1] == "B":
                    self.row = min(len(self.rows) - 1, self.row + count)
                elif token[-1] == "K":
                    self.rows[self.row] = self.rows[self.row][:self.col]
                else:  # J: this line from the cursor, and every line below
                    self.rows[self.row] = self.rows[self.row][:self.col]
                    del self.rows[self.row + 1:]
            else:
                line = self.rows[self.row].ljust(self.col)
                self.rows[self.row] = line[:self.col] + token + line[self.col + 1:]
                self.col += 1
        return self

    def lines(self) -> list[str]:
        return [row for row in self.rows if row] if self.rows[-1] == "" else self.rows


def live() -> tuple[LiveLines, io.StringIO]:
    out = io.StringIO()
    return LiveLines(out, live=True), out


def test_one_host_updates_one_line_in_place_and_ends_it_with_a_newline():
    lines, out = live()
    lines.print("job 7 started")
    for percent in (10, 55, 90):
        lines.update("web1", f"web1: snapshot {percent}%")
    assert Screen().feed(out.getvalue()).lines() == ["job 7 started", "web1: snapshot 90%"]
    assert "\rweb1" not in out.getvalue().split("10%")[0]  # the first draw starts the line, no \r needed
    assert "\r\x1b[Kweb1: snapshot 55%" in out.getvalue()  # carriage return, clear to the end of the line
    lines.end("web1", "web1: ok snapshot 2026-12-07_131509")
    lines.close()
    assert out.getvalue().endswith("web1: ok snapshot 2026-12-07_131509\n")
    assert Screen().feed(out.getvalue()).lines() == ["job 7 started", "web1: ok snapshot 2026-12-07_131509"]


def test_several_hosts_keep_a_line_each_and_an_ended_host_moves_above_the_live_ones():
    lines, out = live()
    lines.update("web1", "web1: running (snapshot)")
    lines.update("db1", "db1: running (snapshot)")
    lines.update("web1", "web1: snapshot 40%")
    lines.update("mail", "mail: snapshot 5%")
    lines.update("db1", "db1: snapshot 70%")
    assert Screen().feed(out.getvalue()).lines() == ["web1: snapshot 40%", "db1: snapshot 70%", "mail: snapshot 5%"]
    lines.end("db1", "db1: ok")
    lines.print("a line of its own")
    lines.update("web1", "web1: snapshot 99%")
    assert Screen().feed(out.getvalue()).lines() == ["db1: ok", "a line of its own", "web1: snapshot 99%",
                                                     "mail: snapshot 5%"]
    lines.end("web1", "web1: failed: rsync error")
    lines.end("mail", "mail: ok")
    lines.end("never-live", "nohost: skipped")  # a host that ends without a live line
    lines.close()
    assert Screen().feed(out.getvalue()).lines() == ["db1: ok", "a line of its own", "web1: failed: rsync error",
                                                     "mail: ok", "nohost: skipped"]
    assert out.getvalue().endswith("\n")


def test_an_end_without_words_clears_the_hosts_line():
    lines, out = live()
    lines.update("web1", "web1: restore 50%")
    lines.end("web1", None)
    lines.print("restored 3 entries")
    assert Screen().feed(out.getvalue()).lines() == ["restored 3 entries"]


def test_close_keeps_live_lines_and_ends_the_last_one():
    lines, out = live()
    lines.update("web1", "web1: 10%")
    lines.update("db1", "db1: 20%")
    lines.close()
    assert out.getvalue().endswith("db1: 20%\n")
    assert Screen().feed(out.getvalue()).lines() == ["web1: 10%", "db1: 20%"]


def test_a_live_line_never_wraps_and_loses_its_colour():
    assert fit("x" * 100, 40) == "x" * 38 + "…"
    assert fit("日本語のホスト名", 8) == "日本語…"  # two columns each
    assert fit("short", 80) == "short"
    lines, out = live()
    lines.update("web1", "\x1b[36mrunning\x1b[0m " + "y" * 500)
    written = out.getvalue()
    assert "\x1b[36m" not in written and len(written) < 100


def test_without_a_terminal_every_update_is_a_plain_line():
    out = io.StringIO()  # not a terminal
    lines = LiveLines(out)
    assert not lines.live
    lines.update("web1", "web1: snapshot 10%")
    lines.update("web1", "web1: snapshot 20%")
    lines.end("web1", "web1: ok")
    lines.end("db1", None)
    lines.print("job 7: ok")
    lines.close()
    assert out.getvalue() == "web1: snapshot 10%\nweb1: snapshot 20%\nweb1: ok\njob 7: ok\n"


def test_term_dumb_gets_plain_lines(monkeypatch):
    import os
    import pty
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setenv("TERM", "dumb")
        assert not LiveLines(terminal).live
        monkeypatch.setenv("TERM", "xterm")
        assert LiveLines(terminal).live
    os.close(master)
