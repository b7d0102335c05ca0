"""The fleet digest as people read it: a terminal summary, a web page with
inline SVG charts (`bkctl report --html FILE`) and a mail body with HTML/CSS
bar charts (mail clients strip SVG and block remote content). One module,
standard library only: bkctl renders the page, the daemon the mail.

Both HTML forms are self-contained: no script, no stylesheet, font, image
or link to anywhere, and the page carries a Content-Security-Policy that
forbids loading anything, so opening it makes no network request. Every
form renders the digest's text with control characters escaped (fmt.safe)."""

from __future__ import annotations

import math
from datetime import date, timezone, tzinfo
from html import escape
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .fmt import number, safe, safe_tree, size, span, sparkline, timestamp

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
BAR = "#3b7dd8"  # host trend bars (the rendering test counts them: used for nothing else)
DISK = "#8e6bbf"
GRID = "#d8d8d8"  # the y axis's ticks across the chart
AXIS = "#555555"  # its labels
LEVELS = {"ok": "#2e8540", "warn": "#c7811c", "bad": "#c62828"}


def seconds(value: float | None) -> str:
    """A run's duration: tenths below ten seconds (most incremental runs), else as span does."""
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 10 else span(value)


METRICS = (("space", "space on disk", size, "bytes"), ("changed_files", "changed files", number, "count"),
           ("duration_s", "slowest run", seconds, "seconds"))


def size_key(host: dict) -> tuple[str, str]:
    """What the size chart shows: the host's real space on disk (from the
    version index), or, for a history made before bkd kept it, the logical
    size of its snapshots, said so."""
    if any(day.get("space") is not None for day in host.get("trend", [])):
        return "space", "space on disk"
    return "bytes", "size (logical)"


def verdict(host: dict) -> tuple[str, str]:
    """(what to call the host's state, ok|warn|bad)."""
    if not host.get("readable", True):
        return "unreadable", "bad"
    if host.get("held"):
        return "held", "bad"  # an anomaly: nothing of the host is deleted until an admin releases it
    if host["stale"]:
        return "stale", "bad"
    if host["last_result"] == "failed":
        return "failing", "bad"
    if any(a["state"] == "open" for a in host["alerts"]):
        return "alert", "warn"
    if host["last_result"] == "warning":
        return "warning", "warn"
    if host["last_snapshot"] is None:
        return "no snapshot yet", "warn"
    return "ok", "ok"


def _runs(host: dict) -> str:
    runs = host["period"]["runs"]
    good = runs.get("ok", 0) + runs.get("warning", 0)
    return f"{good}/{runs.get('failed', 0)}"


def _age(host: dict) -> str:
    return span(host["age_s"]) if host["age_s"] is not None else "-"


def _took(host: dict) -> str:
    return seconds(host["duration_s"])


def summary(digest: dict) -> str:
    """One line: the mail's subject, the webhook's `text`."""
    digest = safe_tree(digest)
    levels = [verdict(h)[1] for h in digest["hosts"]]
    line = f"[bkd {digest['server']}] report: {len(levels)} host{'s' * (len(levels) != 1)}"
    problems = [f"{levels.count(level)} {word}" for level, word in (("bad", "failing or stale"),
                                                                     ("warn", "to look at")) if levels.count(level)]
    line += ", " + (", ".join(problems) if problems else "all ok")
    if digest["alerts"]["open"]:
        line += f", {digest['alerts']['open']} alert{'s' * (digest['alerts']['open'] != 1)}"
    return line


def _disk_line(disk: dict) -> str:
    if "error" in disk:
        return f"backup root: cannot read it ({disk['error']})"
    line = (f"backup root: {disk['used_percent']}% used, {size(disk['free_bytes'])} of "
            f"{size(disk['total_bytes'])} free, {number(disk['free_inodes'])} inodes free")
    if disk.get("days_to_full") is not None:
        line += f"; at the growth of the last weeks full in about {disk['days_to_full']:g} days ({disk['full_by']})"
    else:
        line += "; not filling up"
    return line


def audit_line(head: dict | None) -> str:
    """The audit log's newest entry: kept in every report, a copy off the server that a
    truncated or rewritten log can no longer match (compare it with `bkctl audit`)."""
    return f"audit log: entry {head['id']}, sha256 {head['hash']}" if head else ""


def upstream_lines(upstream: dict) -> list[str]:
    """A replica server's upstream: its last visit, its state database's copy, and per host the lag."""
    visit = ("not visited yet" if upstream["visited"] is None else
             "reachable" if upstream["ok"] else f"cannot be read ({safe(upstream['error'])})")
    behind = sum(h["behind"] for h in upstream["hosts"])
    state = upstream["state"]
    copy = ("no copy of its state database yet" if state is None else
            f"state database generation {state['generation']}" + ("" if state["ok"] else f": {safe(state['problem'])}"))
    lines = [f"upstream {upstream['name']} ({safe(upstream['source'])}): {visit}, {len(upstream['hosts'])} hosts"
             f"{f', {behind} behind' if behind else ''}; {copy}"]
    lines += [f"  {h['host']}: newest copy {h['newest'] or '-'}, the primary's {h['primary_newest'] or '-'}, "
              f"lag {span(h['lag_s']) if h['lag_s'] is not None else '-'}{' (behind)' if h['behind'] else ''}, "
              f"last run {h['last_result'] or '-'}" for h in upstream["hosts"]]
    return lines


def zone_of(digest: dict) -> tzinfo:
    """The report's own time zone (`[report] timezone`): its header and times are
    shown in it, as its days are counted (UTC if this machine does not know it)."""
    try:
        return ZoneInfo(digest.get("timezone") or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return timezone.utc


def _alert_text(alert: dict, zone: tzinfo) -> str:
    subject = f" ({alert['subject']})" if alert.get("subject") else ""
    silenced = ", silenced" if alert.get("silenced") else ""
    return (f"{alert['host'] or '-'} {alert['kind']}{subject}: {alert['state']}{silenced}, "
            f"{alert['count']}x since {timestamp(alert['first_seen'], zone)}")


def _period(digest: dict) -> str:
    return span(digest["period_s"])


def text(digest: dict, ascii: bool = False) -> str:
    from .fmt import table
    digest = safe_tree(digest)
    zone = zone_of(digest)
    lines = [f"bkd report for {digest['server']} at {timestamp(digest['generated'], zone)} "
             f"(runs of the last {_period(digest)}; trends over {digest['trend_days']} days, {digest['timezone']})"]
    rows = []
    for host in digest["hosts"]:
        sizes = [d[size_key(host)[0]] for d in host.get("trend", [])]
        rows.append([host["name"], verdict(host)[0], host["last_snapshot"] or "-", _age(host), size(host["bytes"]),
                     size(host.get("unique_bytes")), number(host["changed_files"]), _took(host), _runs(host),
                     ",".join(sorted({a["kind"] for a in host["alerts"]})) or "-",
                     sparkline(sizes, ascii) if sizes else "-"])
    lines.append(table(["HOST", "STATE", "LAST SNAPSHOT", "AGE", "SIZE", "ON DISK", "CHANGED", "TOOK",
                        "RUNS OK/FAILED", "ALERTS", f"ON DISK ({digest['trend_days']}d)"], rows)
                 if rows else "no hosts configured")
    lines += [f"{host['name']}: {_suspects(host)} (bkctl holds)" for host in digest["hosts"] if host.get("suspects")]
    lines.append(_disk_line(digest["disk"]))
    for upstream in digest.get("upstreams", []):
        lines += upstream_lines(upstream)
    alerts = digest["alerts"]
    lines.append(f"alerts: {alerts['open']} current, {alerts['unacknowledged']} unacknowledged"
                 if alerts["open"] else "alerts: none")
    lines += [f"  {_alert_text(a, zone)}" for a in alerts["current"]]
    if digest.get("audit_head"):
        lines.append(audit_line(digest["audit_head"]))
    return "\n".join(lines) + "\n"


# ---- HTML, shared by the page and the mail ---------------------------------------

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:16px;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 6px}h3{font-size:15px;margin:0 0 6px}
.sub{color:#666;font-size:13px}
table.t{border-collapse:collapse;font-size:13px}
table.t th{text-align:left;border-bottom:1px solid #ccc;padding:3px 10px 3px 0}
table.t td{padding:3px 10px 3px 0;border-bottom:1px solid #eee}
.badge{display:inline-block;padding:1px 6px;border-radius:3px;color:#fff;font-size:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 12px;margin:10px 0}
.facts{font-size:13px;color:#444;margin-bottom:6px}
.charts{display:flex;flex-wrap:wrap;gap:18px}
.chart{font-size:12px;color:#555}
.meter{background:#eee;width:300px;height:12px;border-radius:3px;overflow:hidden}
"""


def _badge(host: dict) -> str:
    word, level = verdict(host)
    return f'<span class="badge" style="background:{LEVELS[level]}">{escape(word)}</span>'


def _header(digest: dict) -> str:
    disk = digest["disk"]
    meter = ""
    if "error" not in disk and disk["used_percent"] is not None:
        meter = (f'<div class="meter"><div style="width:{min(100.0, disk["used_percent"])}%;height:12px;'
                 f'background:{DISK}"></div></div>')
    return (f"<h1>bkd report: {escape(digest['server'])}</h1>"
            f'<div class="sub">{escape(timestamp(digest["generated"], zone_of(digest)))} &middot; runs of the last {escape(_period(digest))}'
            f" &middot; trends over {digest['trend_days']} days ({escape(digest['timezone'])}) &middot; "
            f"bkd {escape(digest['version'])}</div>"
            f"<h2>Backup root</h2>{meter}<div class=\"facts\">{escape(_disk_line(disk))}</div>")


def _overview(digest: dict) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("host", "state", "last snapshot", "age", "size", "changed",
                                             "took", "runs ok/failed", "alerts"))
    rows = "".join(
        f"<tr><td>{escape(h['name'])}</td><td>{_badge(h)}</td><td>{escape(h['last_snapshot'] or '-')}</td>"
        f"<td>{_age(h)}</td><td>{size(h['bytes'])}</td><td>{number(h['changed_files'])}</td>"
        f"<td>{_took(h)}</td><td>{_runs(h)}</td>"
        f"<td>{escape(', '.join(sorted({a['kind'] for a in h['alerts']})) or '-')}</td></tr>"
        for h in digest["hosts"])
    return f'<h2>Hosts</h2><table class="t"><tr>{head}</tr>{rows}</table>' if rows else "<p>No hosts.</p>"


def _upstreams(digest: dict) -> str:
    if not digest.get("upstreams"):
        return ""
    items = "".join("<li>" + "<br>".join(escape(line) for line in upstream_lines(u)) + "</li>"
                    for u in digest["upstreams"])
    return f'<h2>Upstreams (this server\'s second copies)</h2><ul class="facts">{items}</ul>'


def _alerts(digest: dict) -> str:
    current = digest["alerts"]["current"]
    if not current:
        return "<h2>Alerts</h2><p>None.</p>"
    rows = "".join(f"<tr><td>{escape(a['host'] or '-')}</td><td>{escape(a['kind'])}</td>"
                   f"<td>{escape(a['subject'] or '')}</td><td>{escape(a['state'])}"
                   f"{' (silenced)' if a['silenced'] else ''}</td><td>{a['count']}</td>"
                   f"<td>{escape(timestamp(a['first_seen'], zone_of(digest)))}</td></tr>" for a in current)
    return ('<h2>Alerts</h2><table class="t"><tr><th>host</th><th>kind</th><th>subject</th><th>state</th>'
            f"<th>count</th><th>since</th></tr>{rows}</table>")


def _facts(host: dict) -> str:
    tiers = ", ".join(f"{count} {tier}" for tier, count in sorted(host["tiers"].items())) or "none"
    newest = (f"last snapshot {escape(host['last_snapshot'])} ({_age(host)} ago), {size(host['bytes'])}, "
              f"{number(host['files'])} files, {number(host['changed_files'])} changed, took {_took(host)}"
              if host["last_snapshot"] else "no snapshot yet")
    held = f"<br><b>{escape(_suspects(host))}</b>" if host.get("suspects") else ""
    return (f'<div class="facts">{newest}<br>{host["snapshots"]} snapshots ({escape(tiers)}), '
            f"{host['archives']} archives, {host['monthly']} monthly copies{escape(copies_text(host))}; "
            f"{size(host.get('unique_bytes'))} on disk; runs of the period: {_runs(host)} ok/failed{held}</div>")


def copies_text(host: dict) -> str:
    """The newest monthly copy and archive by name (what bkctl ls and restore take)."""
    newest = [names[-1] for names in (host.get("monthly_copies"), host.get("archive_copies")) if names]
    return f" (newest {', '.join(newest)})" if newest else ""


def _suspects(host: dict) -> str:
    """A host's unreleased suspect snapshots (an anomaly), and whether its pruning is held."""
    what = f"suspect snapshot{'s' * (len(host['suspects']) != 1)} {', '.join(host['suspects'])}"
    return f"held after an anomaly: {what}" if host.get("held") else what


def _has_history(host: dict) -> bool:
    return any(d["snapshots"] for d in host.get("trend", []))


# The unit of an axis is that of its top: the largest that fits (bytes in binary units).
AXIS_UNITS = {"bytes": ((1024**4, " TiB"), (1024**3, " GiB"), (1024**2, " MiB"), (1024, " KiB"), (1, " B")),
              "seconds": ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")),
              "count": ((10**6, "M"), (10**3, "k"), (1, ""))}


def nice(value: float) -> float:
    """The smallest of 1, 2, 5 × 10ⁿ at or above value (> 0): an axis top that halves evenly."""
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * 10.0**exponent >= value * (1 - 1e-9):
            return step * 10.0**exponent
    return 10.0 ** (exponent + 1)


def axis(peak: float, kind: str, top: float | None = None) -> tuple[float, list[tuple[float, str]]]:
    """An axis from 0: its top (a round number above peak, or top as given: the
    disk's size) and its ticks at 0, the middle (unless it would be a fraction
    of a count) and the top, labelled in one unit."""
    units = AXIS_UNITS[kind]
    if top is None:
        size_, _ = next((u for u in units if peak >= u[0]), units[-1])
        top = nice(peak / size_) * size_ if peak > 0 else size_
    size_, name = next((u for u in units if top >= u[0]), units[-1])
    middle = [] if kind == "count" and top % 2 else [top / 2]  # no tick at 2.5 files
    return top, [(value, f"{value / size_:.4g}{name}" if value else "0") for value in (0, *middle, top)]


def day_label(day: str) -> str:
    """2026-04-02 as a chart's x axis shows it: Apr 2."""
    when = date.fromisoformat(day)
    return f"{when:%b} {when.day}"


class Series:
    """One chart: a value per day, what it is called, how to show a value and
    its y axis (a round top above the highest value, or scale as given)."""

    def __init__(self, label: str, days: list[str], values: list, show, kind: str, colour: str = BAR,
                 scale: float | None = None, scale_name: str = "", **attrs: str):
        self.label, self.days, self.values, self.show, self.colour = label, days, values, show, colour
        peak = max((v for v in values if v is not None), default=0)
        self.top, self.ticks = axis(peak, kind, scale)
        self.scale_name = scale_name
        self.attrs = attrs

    def height(self, value, full: int) -> int:
        return max(1, round(full * min(value, self.top) / self.top)) if value and self.top else 0

    def caption(self) -> str:
        latest = next((v for v in reversed(self.values) if v is not None), None)
        if self.scale_name:  # the disk: its scale is the disk, and says so
            return f"{escape(self.label)}: {escape(self.show(latest))} of {escape(self.show(self.top))} " \
                   f"({escape(self.scale_name)})"
        return f"{escape(self.label)} per day (last: {escape(self.show(latest))})"

    def tip(self, i: int) -> str:
        return f"{escape(self.days[i])}: {escape(self.show(self.values[i]))}"

    def x_labels(self) -> list[tuple[int, str]]:
        """(index, label) of the days named under the chart: the first, the middle and the last."""
        indexes = sorted({0, len(self.days) // 2, len(self.days) - 1})
        return [(i, day_label(self.days[i])) for i in indexes]


def _host_series(host: dict) -> list[Series]:
    days = [d["day"] for d in host["trend"]]
    space, label = size_key(host)
    metrics = [(space, label, size, "bytes"), *METRICS[1:]]
    return [Series(label, days, [d[key] for d in host["trend"]], show, kind, host=host["name"], metric=key)
            for key, label, show, kind in metrics]


def _disk_series(disk: dict) -> Series | None:
    if not disk.get("trend") or not any(d["used_bytes"] for d in disk["trend"]):
        return None
    return Series("used", [d["day"] for d in disk["trend"]], [d["used_bytes"] for d in disk["trend"]], size,
                  "bytes", DISK, scale=disk.get("total_bytes") or None, scale_name="the disk's size", metric="disk")


def _page(digest: dict, chart, head: str) -> str:
    digest = safe_tree(digest)
    cards = []
    for host in digest["hosts"]:
        charts = ("".join(chart(series) for series in _host_series(host)) if _has_history(host)
                  else f"<div class=\"sub\">no snapshots in the last {digest['trend_days']} days</div>")
        cards.append(f'<div class="card"><h3>{escape(host["name"])} {_badge(host)}</h3>{_facts(host)}'
                     f'<div class="charts">{charts}</div></div>')
    disk = _disk_series(digest["disk"])
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">{head}"
            f"<title>{escape(summary(digest))}</title><style>{STYLE}</style></head><body>"
            f"{_header(digest)}{chart(disk) if disk else ''}{_overview(digest)}{_upstreams(digest)}{_alerts(digest)}"
            f"<h2>Trends</h2>{''.join(cards)}"
            f"<p class=\"sub\">{escape(audit_line(digest.get('audit_head')))}</p></body></html>\n")


# ---- the page: inline SVG ------------------------------------------------------------

def _svg_chart(series: Series) -> str:
    """Bars on a grid: the y axis's ticks with their units on the left, days under it."""
    left, top, width, height, gap = 60, 6, 300, 60, 1
    step = width / len(series.days)
    parts = []
    for value, label in series.ticks:
        y = top + height - series.height(value, height) if value else top + height
        parts.append(f'<line x1="{left}" y1="{y}" x2="{left + width}" y2="{y}" stroke="{GRID}"/>'
                     f'<text x="{left - 4}" y="{y + 3}" text-anchor="end">{escape(label)}</text>')
    for i, value in enumerate(series.values):
        h = series.height(value, height)
        if not h:
            continue
        x = left + round(i * step)
        w = max(1, round((i + 1) * step) - round(i * step) - gap)
        parts.append(f'<rect x="{x}" y="{top + height - h}" width="{w}" height="{h}" fill="{series.colour}">'
                     f"<title>{series.tip(i)}</title></rect>")
    last = len(series.days) - 1
    for i, label in series.x_labels():
        anchor = "start" if i == 0 else "end" if i == last else "middle"
        x = left + (round(i * step) if anchor == "start" else round((i + 1) * step) if anchor == "end"
                    else round((i + 0.5) * step))
        parts.append(f'<text x="{x}" y="{top + height + 13}" text-anchor="{anchor}">{escape(label)}</text>')
    attrs = "".join(f' data-{key}="{escape(value)}"' for key, value in series.attrs.items())
    full_width, full_height = left + width + 4, top + height + 18
    return (f'<div class="chart"><div>{series.caption()}</div>'
            f'<svg class="trend"{attrs} width="{full_width}" height="{full_height}" '
            f'viewBox="0 0 {full_width} {full_height}" shape-rendering="crispEdges" font-size="10" fill="{AXIS}" '
            f'role="img" aria-label="{escape(series.label)} per day, {escape(series.days[0])} to '
            f'{escape(series.days[-1])}">'
            f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="#f6f6f6"/>{"".join(parts)}</svg>'
            f"</div>")


def page_html(digest: dict) -> str:
    return _page(digest, _svg_chart, f'<meta http-equiv="Content-Security-Policy" content="{CSP}">')


# ---- the mail: tables and CSS, no SVG --------------------------------------------------

def _mail_chart(series: Series) -> str:
    """The same chart as table cells (mail clients strip SVG): the top and 0 of
    the y axis with its unit on the left, the first and last day under it."""
    height = 40
    cells = []
    for i, value in enumerate(series.values):
        h = series.height(value, height)
        bar = f'<div style="height:{h}px;background:{series.colour}"></div>' if h else ""
        cells.append(f'<td title="{series.tip(i)}" style="vertical-align:bottom;width:5px;padding:0 1px 0 0">'
                     f"{bar}</td>")
    label = f"font-size:10px;color:{AXIS};white-space:nowrap"
    (_, zero), *_, (_, highest) = series.ticks
    days = series.x_labels()
    first, last = days[0][1], days[-1][1] if len(days) > 1 else ""
    return (f'<div class="chart"><div>{series.caption()}</div>'
            f'<table cellpadding="0" cellspacing="0" style="border-collapse:collapse"><tr>'
            f'<td style="{label};text-align:right;padding-right:4px;vertical-align:top;height:{height}px">'
            f'<div style="height:{height - 10}px">{escape(highest)}</div><div>{escape(zero)}</div></td>'
            f'<td style="padding:0"><table cellpadding="0" cellspacing="0" style="height:{height}px;background:#f6f6f6;'
            f'border-collapse:collapse;border-top:1px solid {GRID};border-bottom:1px solid {GRID}">'
            f'<tr>{"".join(cells)}</tr></table></td></tr>'
            f'<tr><td></td><td style="{label}"><table cellpadding="0" cellspacing="0" width="100%"><tr>'
            f'<td style="{label}">{escape(first)}</td><td style="{label};text-align:right">{escape(last)}</td>'
            f"</tr></table></td></tr></table></div>")


def mail_html(digest: dict) -> str:
    return _page(digest, _mail_chart, "")
