"""The worked examples in docs/watching.md are valid configuration."""

import re
import tomllib
from pathlib import Path

import pytest

import doctables

from bkd.config.models import Config

DOC = Path(__file__).parent.parent.parent / "docs" / "watching.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)


def test_there_are_four_worked_examples():
    assert len(BLOCKS) == 4


@pytest.mark.parametrize("block", BLOCKS)
def test_a_worked_example_is_a_valid_config(block):
    data = tomllib.loads(block)
    data.setdefault("backup_root", "/srv/bkd")
    data.setdefault("host", [{"name": "web1", "source": "web1:/home/"}])
    # The report's example names a sink the other examples define.
    data.setdefault("notify", [{"name": name, "type": "webhook", "url": "https://hooks.example.org/x"}
                               for name in data.get("report", {}).get("notify", [])])
    Config.model_validate(data)


def table(heading: str) -> list[list[str]]:
    return doctables.table("watching.md", heading)


def test_the_metrics_table_is_the_exposition():
    from bkd.views.metrics import HELP
    rows = table("## Metrics and Prometheus")
    assert [row[0] for row in rows] == list(HELP)
    assert {row[0]: (row[1], row[3]) for row in rows} == {name: (kind, text) for name, (kind, text) in HELP.items()}


def test_the_rules_table_is_the_rules_file():
    rules = (DOC.parent.parent / "contrib/prometheus/bkd.rules.yml").read_text()
    shipped = dict(re.findall(r"- alert: (\w+)\n(?:.*\n)*?\s+severity: (\w+)", rules))
    rows = table("add the shipped rules to")
    assert {row[0]: row[2] for row in rows} == shipped and len(shipped) == 9


def test_the_dashboard_is_as_described():
    import json
    dashboard = json.loads((DOC.parent.parent / "contrib/grafana/bkd-dashboard.json").read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["instance", "host"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for words in ("stale hosts", "failing hosts", "open alerts", "healthy", "backup root used", "backup root free",
                  "age of the newest snapshot", "snapshot size", "changed files", "run duration", "runs by status",
                  "archives and monthly copies", "alerts by kind", "notifications", "in progress",
                  "held hosts", "replication", "replica lag", "primaries reachable"):
        assert words in titles, words


def test_the_documented_signature_check_accepts_what_bkd_signs():
    from bkd.alerts.notify.sinks import signature
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)[1]
    body = b'{"event":"test"}'

    class Request:
        headers = {"X-Bkd-Signature": signature(b"k3y", body)}

    scope = {"secret": b"k3y", "raw_body": body, "request": Request}
    exec(code, scope)
    assert scope["ok"] is True
