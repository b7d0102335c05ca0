"""`bkctl top`: a live status screen. A pure view model (tested without curses)
fed by pushed events, and a thin curses shell around it."""

from __future__ import annotations

import curses
import locale
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import protocol
from .client import Client, RemoteError, Unreachable
from .fmt import number, parse_time, relative, size, span, sparkline
from .report import size_key

REDRAW_EVERY = 0.25  # seconds: at most four redraws a second, however fast events come
RECONNECT_EVERY = 1.0
REPORT_EVERY = 60.0  # seconds: the cards' digest (a month of statistics) is fetched again this often
CARD_WIDTH = 42
HELP = [
    "up/down, j/k   select a host",
    "r              run a snapshot of the selected host now",
    "c              cancel the selected host's run (asks first)",
    "a              acknowledge the selected host's open alerts (asks first)",
    "v              host cards (tiers, archives, size and its 30 days) / the table",
    "/              filter hosts by name (empty: all)",
    "?              this help",
    "q              quit",
]


@dataclass
class ViewModel:
    hosts: dict[str, dict] = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    selected: int = 0
    filter: str = ""
    message: str = ""
    connected: bool = False
    detail: dict = field(default_factory=dict)  # the selected host's recent runs and snapshots
    alert_records: dict[int, dict] = field(default_factory=dict)  # current episodes by id
    cards: dict[str, dict] = field(default_factory=dict)  # each host's part of the `report` digest
    view: str = "table"  # or "cards"
    unicode: bool = True  # the terminal shows block characters (sparklines, borders)

    @property
    def alerts(self) -> dict[str, int]:
        """Current alerts per host."""
        counts: dict[str, int] = {}
        for alert in self.alert_records.values():
            if alert.get("host"):
                counts[alert["host"]] = counts.get(alert["host"], 0) + 1
        return counts

    def apply_report(self, digest: dict) -> None:
        self.cards = {host["name"]: host for host in digest["hosts"]}

    def apply_alerts(self, alerts: list[dict]) -> None:
        self.alert_records = {alert["id"]: alert for alert in alerts}

    # ---- what changes the model ----

    def apply_status(self, status: dict) -> None:
        self.status = status
        self.hosts = {name: dict(host) for name, host in status["hosts"].items()}
        self.connected = True
        self.clamp()

    def apply_event(self, event: dict) -> bool:
        """Fold one event in; True when a fresh `status` is worth fetching (a run ended)."""
        host = self.hosts.get(event.get("host", ""))
        topic = event["topic"]
        if topic == "progress" and host is not None:
            host["progress"] = event["progress"]
            host["stage"] = event.get("stage")
        elif topic == "host" and host is not None:
            status = event.get("status")
            if status in ("queued", "running"):
                host.update(state=status, stage=event.get("stage"), job_id=event.get("job_id"))
            else:
                host.update(state="idle", stage=None, progress=None, last_result=status,
                            last_error=event.get("error"))
                return True
        elif topic == "job" and event.get("status") in protocol.FINAL_STATUSES:
            return True
        elif topic == "alert" and event.get("id") is not None:
            if event.get("event") == "resolved":
                self.alert_records.pop(event["id"], None)
            elif event.get("event") in ("opened", "repeated", "acked"):
                self.alert_records[event["id"]] = {k: v for k, v in event.items()
                                                   if k not in ("topic", "seq", "time", "event")}
            return event.get("kind") == "anomaly"  # a hold came or went: `held` is in status
        return False

    # ---- navigation ----

    def visible(self) -> list[str]:
        return [name for name in sorted(self.hosts) if self.filter.lower() in name.lower()]

    def clamp(self) -> None:
        self.selected = max(0, min(self.selected, len(self.visible()) - 1))

    def move(self, delta: int) -> None:
        self.selected += delta
        self.clamp()

    def current(self) -> str | None:
        names = self.visible()
        return names[self.selected] if names else None

    # ---- what is shown ----

    def header(self, now: datetime) -> str:
        if not self.connected:
            return "bkd: not connected — retrying …"
        started = parse_time(self.status.get("started"))
        uptime = span((now - started).total_seconds()) if started else "?"
        disk = self.status.get("disk") or {}
        running = sum(1 for h in self.hosts.values() if h["state"] == "running")
        upcoming = [h["next_run"] for h in self.hosts.values() if h.get("next_run")]
        next_run = relative(min(upcoming), now) if upcoming else "-"
        return (f"bkd {self.status.get('version', '')}  up {uptime}  "
                f"free {size(disk.get('free_bytes'))} of {size(disk.get('total_bytes'))}  "
                f"running {running}/{len(self.hosts)}  next {next_run}")

    def rows(self, now: datetime, width: int = 80) -> list[str]:
        """The host table, fitted to width: the progress bar takes what is left,
        and the result comes last so that only it is cut on a narrow screen."""
        bar_width = max(4, width - 78)
        lines = [f"{'HOST':<12} {'STATE':<7} {'STAGE':<8} {'PROGRESS':<{bar_width + 7}} "
                 f"{'RATE':>9} {'ETA':>5} {'AGE':>5} {'ALERTS':<6} RESULT"]
        for name in self.visible():
            host = self.hosts[name]
            progress = host.get("progress") or {}
            percent = progress.get("percent")
            bar = (progress_bar(percent, bar_width) + f" {percent:3d}%") if percent is not None else ""
            rate = f"{size(progress['rate'])}/s".replace("iB/s", "/s") if progress.get("rate") else ""
            eta = span(progress["eta_s"]) if progress.get("eta_s") else ""
            age = relative(host.get("last_snapshot_time"), now).replace(" ago", "")
            lines.append(f"{name[:12]:<12} {host['state'][:7]:<7} {(host.get('stage') or '-')[:8]:<8} "
                         f"{bar:<{bar_width + 7}} {rate:>9} {eta:>5} {age:>5} "
                         f"{str(self.alerts.get(name, 0) or '-'):<6} {host.get('last_result') or '-'}"
                         + (" HELD" if host.get("held") else ""))
        return lines

    def alert_lines(self, now: datetime, limit: int = 6) -> list[str]:
        """The alerts pane: current alerts, unacknowledged first, newest first."""
        if not self.alert_records:
            return ["alerts: none"]
        ordered = sorted(self.alert_records.values(), key=lambda a: (a["state"] != "open", -a["id"]))
        lines = [f"alerts: {len(ordered)} current, {sum(a['state'] == 'open' for a in ordered)} unacknowledged"]
        for alert in ordered[:limit]:
            state = alert["state"] + (", silenced" if alert.get("silenced") else "")
            lines.append(f"  {alert['id']:<5} {(alert.get('host') or '-')[:12]:<12} {alert['kind']:<10} "
                         f"{alert['count']:>4}x {state:<16} {relative(alert.get('last_seen'), now):>8}  "
                         f"{alert.get('message', '')}")
        if len(ordered) > limit:
            lines.append(f"  … {len(ordered) - limit} more (bkctl alerts)")
        return lines

    def card_facts(self, name: str) -> list[str]:
        """What a host's card says beyond the table: its snapshots by retention
        tier, archives and monthly copies, size, and the last 30 days' sizes."""
        card = self.cards.get(name)
        if card is None:
            return ["(no digest yet)"]
        tiers = " ".join(f"{tier} {card['tiers'].get(tier, 0)}" for tier in ("hourly", "daily", "monthly"))
        extra = " ".join(f"{tier} {count}" for tier, count in sorted(card["tiers"].items())
                         if tier not in ("latest", "hourly", "daily", "monthly"))
        key, _label = size_key(card)  # the space on disk, or before bkd kept it the logical size
        sizes = [day[key] for day in card.get("trend", [])][-30:]
        monthly, archives = card.get("monthly_copies") or [], card.get("archive_copies") or []
        newest = archives[-1].removeprefix(f"archive/{name}_").split(".tar")[0] if archives else None
        return [f"tiers: {tiers}" + (f" {extra}" if extra else ""),
                f"archives {card['archives']}" + (f", newest {newest}" if newest else ""),
                f"monthly copies {card['monthly']}" + (f": {', '.join(m.removeprefix('monthly/') for m in monthly[-3:])}"
                                                       if monthly else ""),
                f"size {size(card['bytes'])}, {number(card['files'])} files",
                f"on disk {size(card.get('unique_bytes'))}, 30d: {'on disk' if key == 'space' else 'size'}",
                f"30d {sparkline(sizes, ascii=not self.unicode) if sizes else '-'}"]

    def card_lines(self, now: datetime, width: int) -> list[str]:
        """Every visible host as a card, as many side by side as fit."""
        inner = CARD_WIDTH - 4
        across = max(1, (width + 1) // (CARD_WIDTH + 1))
        rule, side = ("─", "│") if self.unicode else ("-", "|")
        corners = ("┌┐└┘" if self.unicode else "++++")
        boxes = []
        for index, name in enumerate(self.visible()):
            host = self.hosts[name]
            mark = ">" if index == self.selected else " "
            result = host.get("last_result") or "-"
            title = f"{mark}{name[:inner - len(result) - 3]} "
            top = corners[0] + rule + title + rule * (CARD_WIDTH - 5 - len(title) - len(result)) + f" {result}" + \
                rule + corners[1]
            age = relative(host.get("last_snapshot_time"), now)
            alerts = self.alerts.get(name, 0)
            body = [f"{host['state']}, last snapshot {age}" + (f", {alerts} alert(s)" if alerts else ""),
                    *([held_line(host)] if host.get("suspects") else []), *self.card_facts(name)]
            boxes.append([top] + [f"{side} {line[:inner]:<{inner}} {side}" for line in body]
                         + [corners[2] + rule * (CARD_WIDTH - 2) + corners[3]])
        lines = []
        for start in range(0, len(boxes), across):
            row = boxes[start:start + across]
            for i in range(max(len(box) for box in row)):
                lines.append(" ".join(box[i] if i < len(box) else " " * CARD_WIDTH for box in row))
        return lines or ["no hosts" + (f" match /{self.filter}" if self.filter else "")]

    def open_alert_ids(self, host: str) -> list[int]:
        return sorted(a["id"] for a in self.alert_records.values() if a.get("host") == host and a["state"] == "open")

    def detail_lines(self) -> list[str]:
        name = self.current()
        if not name:
            return ["no hosts" + (f" match /{self.filter}" if self.filter else "")]
        host = self.hosts[name]
        lines = [f"{name}: last snapshot {host.get('last_snapshot') or '-'}"]
        if host.get("suspects"):
            lines.append(f"  {held_line(host)} after an anomaly (bkctl holds)")
        if name in self.cards:
            lines.append("  " + "; ".join(self.card_facts(name)))
        if host.get("last_error"):
            lines.append(f"  last error: {host['last_error']}")
        if self.detail.get("host") == name:
            lines.append("  recent runs:")
            for job in self.detail.get("jobs", [])[:5]:
                mine = next((h for h in job["hosts"] if h["host"] == name), {})
                lines.append(f"    job {job['job_id']:<6} {job['kind']:<9} {mine.get('status', '-'):<11} "
                             f"{job['started']}  {mine.get('error') or ''}".rstrip())
            lines.append("  snapshots (newest first):")
            for snap in list(reversed(self.detail.get("snapshots", [])))[:5]:
                lines.append(f"    {snap['name']}  {snap['tier']:<8} {snap['files'] or 0:>9} files  "
                             f"{snap['changed_files'] or 0:>7} changed" + ("  SUSPECT" if snap.get("suspect") else ""))
        return lines


def held_line(host: dict) -> str:
    suspects = len(host.get("suspects") or [])
    return f"HELD, {suspects} suspect snapshot(s)" if host.get("held") else f"{suspects} suspect snapshot(s)"


def progress_bar(percent: int, width: int) -> str:
    filled = max(0, min(width, round(width * percent / 100)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


# ---- the curses shell -------------------------------------------------------------

class Feed:
    """A second connection that only reads events, on a thread, into a queue."""

    def __init__(self, path: str, timeout: float):
        self.events: queue.Queue = queue.Queue()
        self.client = Client(path, timeout, escape=True)  # what events carry reaches the screen escaped
        self.client.subscribe()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.client.events():
                self.events.put(event)
        except Unreachable:
            pass
        self.events.put(None)  # the feed ended: reconnect

    def close(self) -> None:
        self.client.close()


def run_top(path: str, timeout: float, check) -> int:
    """check(client) raises RemoteError when the daemon speaks another protocol."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("bkctl top needs a terminal; for scripts use `bkctl status --json` or `bkctl watch --json`",
              file=sys.stderr)
        return 2
    try:
        with Client(path, timeout, escape=True) as client:
            check(client)
    except RemoteError as e:
        print(f"bkctl: {e.message}", file=sys.stderr)
        return 1
    except Unreachable:
        pass  # the screen says so and keeps trying
    # The terminal's real size, not $LINES/$COLUMNS, which a parent may have set
    # for a different terminal and which go stale on every resize.
    curses.use_env(False)
    for stale in ("LINES", "COLUMNS"):
        os.environ.pop(stale, None)
    try:  # the user's locale, so that curses draws the cards' block characters
        locale.setlocale(locale.LC_ALL, "")
    except locale.Error:
        pass
    screen = _Screen(path, timeout, check)
    screen.model.unicode = locale.nl_langinfo(locale.CODESET).upper().replace("-", "") == "UTF8"
    try:
        return curses.wrapper(screen.loop)
    except KeyboardInterrupt:
        return 0


class _Screen:
    def __init__(self, path: str, timeout: float, check):
        self.path, self.timeout, self.check = path, timeout, check
        self.model = ViewModel()
        self.calls: Client | None = None
        self.feed: Feed | None = None
        self.last_attempt = 0.0
        self.detail_for: str | None = None
        self.report_at = 0.0

    def connect(self) -> None:
        self.disconnect()
        self.last_attempt = time.monotonic()
        try:
            self.feed = Feed(self.path, self.timeout)  # subscribe first: no event falls between
            self.calls = Client(self.path, self.timeout, escape=True)
            self.check(self.calls)
            self.model.apply_status(self.calls.call("status"))
            self.model.apply_alerts(self.calls.call("alerts.list")["alerts"])
            self.refresh_report()
            self.model.message = ""
            self.detail_for = None
        except (Unreachable, RemoteError) as e:
            self.disconnect()
            self.model.message = str(e)

    def disconnect(self) -> None:
        for conn in (self.feed, self.calls):
            if conn:
                conn.close()
        self.feed = self.calls = None
        self.model.connected = False

    def call(self, method: str, params: dict | None = None) -> dict | None:
        try:
            return self.calls.call(method, params) if self.calls else None
        except RemoteError as e:
            self.model.message = e.message
        except Unreachable as e:
            self.model.message = str(e)
            self.disconnect()
        return None

    def refresh_report(self) -> None:
        """The digest behind the host cards (tiers, archives, sizes over 30 days)."""
        self.report_at = time.monotonic()
        digest = self.call("report")
        if digest:
            self.model.apply_report(digest)

    def refresh_detail(self) -> None:
        name = self.model.current()
        if not name or not self.calls:
            return
        jobs = self.call("jobs.list", {"host": name, "limit": 5}) or {}
        snapshots = self.call("snapshots.list", {"host": name}) or {}
        self.model.detail = {"host": name, "jobs": jobs.get("jobs", []),
                             "snapshots": snapshots.get("snapshots", [])}
        self.detail_for = name

    def loop(self, screen) -> int:
        curses.curs_set(0)
        screen.timeout(100)  # getch waits at most 100 ms: events are drained between keys
        self.connect()
        last_draw, dirty = 0.0, True
        while True:
            if not self.model.connected and time.monotonic() - self.last_attempt >= RECONNECT_EVERY:
                self.connect()
                dirty = True
            dirty |= self.drain()
            if self.model.current() != self.detail_for and self.model.connected:
                self.refresh_detail()
                dirty = True
            if self.model.connected and time.monotonic() - self.report_at >= REPORT_EVERY:
                self.refresh_report()
                dirty = True
            dirty |= self.follow_terminal_size(screen)
            key = screen.getch()
            if key != -1:
                if self.handle_key(screen, key) == "quit":
                    self.disconnect()
                    return 0
                dirty = True
            now = time.monotonic()
            if (dirty and now - last_draw >= REDRAW_EVERY) or now - last_draw >= 1.0:
                self.draw(screen)
                last_draw, dirty = now, False

    def drain(self) -> bool:
        if not self.feed:
            return False
        changed, refresh = False, False
        while True:
            try:
                event = self.feed.events.get_nowait()
            except queue.Empty:
                break
            if event is None or event.get("topic") == "dropped":
                self.disconnect()
                return True
            refresh |= self.model.apply_event(event)
            changed = True
        if refresh:  # a run ended: fetch last snapshot, result and next run afresh
            status = self.call("status")
            if status:
                self.model.apply_status(status)
            self.detail_for = None
        return changed

    def handle_key(self, screen, key: int) -> str | None:
        model = self.model
        if key in (ord("q"), 27):
            return "quit"
        if key in (curses.KEY_DOWN, ord("j")):
            model.move(1)
        elif key in (curses.KEY_UP, ord("k")):
            model.move(-1)
        elif key == ord("r") and model.current():
            result = self.call("job.start", {"hosts": [model.current()]})
            if result:
                model.message = f"started job {result['job_id']} for {model.current()}"
        elif key == ord("c") and model.current():
            if self.ask(screen, f"cancel the run of {model.current()}? (y/n) ") == "y":
                result = self.call("job.cancel", {"hosts": [model.current()]})
                if result is not None:
                    model.message = f"cancelled: {', '.join(result['cancelled']) or 'nothing was running'}"
        elif key == ord("a") and model.current():
            ids = model.open_alert_ids(model.current())
            if not ids:
                model.message = f"{model.current()} has no unacknowledged alerts"
            elif self.ask(screen, f"acknowledge {len(ids)} alert(s) of {model.current()}? (y/n) ") == "y":
                result = self.call("alerts.ack", {"ids": ids})
                if result is not None:
                    model.message = f"acknowledged: {', '.join(map(str, result['acked']))}"
        elif key == ord("/"):
            model.filter = self.ask(screen, "filter: ", line=True)
            model.selected = 0
            model.clamp()
        elif key == ord("v"):
            model.view = "cards" if model.view == "table" else "table"
            if time.monotonic() - self.report_at >= REPORT_EVERY / 6:
                self.refresh_report()
        elif key == ord("?"):
            model.message = " | ".join(HELP)
        elif key == curses.KEY_RESIZE:
            self.follow_terminal_size(screen)
        return None

    def follow_terminal_size(self, screen) -> bool:
        """Match curses to the terminal's real size (asked of the kernel, so a
        missed SIGWINCH or a stale $COLUMNS cannot leave it drawing blind)."""
        try:
            real = os.get_terminal_size(sys.__stdout__.fileno())
        except OSError:
            return False
        if (real.lines, real.columns) == screen.getmaxyx():
            return False
        curses.resizeterm(real.lines, real.columns)
        screen.clear()  # repaint everything: the old picture no longer lines up
        return True

    def ask(self, screen, prompt: str, line: bool = False) -> str:
        height, width = screen.getmaxyx()
        screen.move(height - 1, 0)
        screen.clrtoeol()
        screen.addnstr(height - 1, 0, prompt, width - 1)
        if not line:
            screen.timeout(-1)
            key = screen.getch()
            screen.timeout(100)
            return chr(key) if 0 <= key < 256 else ""
        curses.echo()
        curses.curs_set(1)
        try:
            text = screen.getstr(height - 1, min(len(prompt), width - 2), 40).decode(errors="replace")
        finally:
            curses.noecho()
            curses.curs_set(0)
        return text.strip()

    def draw(self, screen) -> None:
        now = datetime.now(timezone.utc)
        screen.erase()
        height, width = screen.getmaxyx()
        lines = [self.model.header(now), ""]
        if self.model.view == "cards":
            rows = []
            lines += self.model.card_lines(now, width - 1)
        else:
            rows = self.model.rows(now, width - 3)
            lines.append("  " + rows[0])
            for index, row in enumerate(rows[1:]):
                lines.append(("> " if index == self.model.selected else "  ") + row)
        lines += ["", *self.model.alert_lines(now), "", *self.model.detail_lines()]
        for y, text in enumerate(lines[: max(0, height - 1)]):
            attr = curses.A_REVERSE if y == 3 + self.model.selected and len(rows) > 1 else 0
            try:
                screen.addnstr(y, 0, text, max(1, width - 1), attr)
            except curses.error:
                pass  # a terminal too small for even this: draw what fits
        footer = self.model.message or "q quit  r run  c cancel  a ack alerts  v cards/table  / filter  ? help"
        try:
            screen.addnstr(height - 1, 0, footer, max(1, width - 1), curses.A_DIM)
        except curses.error:
            pass
        screen.refresh()
