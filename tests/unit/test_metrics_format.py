"""The exposition's formatting (exact values, escaping) and the textfile's
heartbeat, without a daemon."""

import asyncio
from types import SimpleNamespace

import pytest

import exposition
from bkd.views import metrics


@pytest.mark.parametrize("value, written", [
    (1795926687, "1795926687"),  # a timestamp: every digit, never 1.79591e+09
    (2**62 + 1, "4611686018427387905"),  # bytes of a big disk: exact
    (True, "1"), (False, "0"), (0.084, "0.084"), (3.0, "3"), (1e-7, "1e-07"),
    (float("inf"), "+Inf"), (float("-inf"), "-Inf"), (float("nan"), "NaN"),
])
def test_values_are_written_exactly(value, written):
    assert metrics.format_value(value) == written


def test_labels_and_help_are_escaped_and_read_back():
    samples = {name: [] for name in metrics.HELP}
    samples["bkd_open_alerts"].append(({"kind": 'a "quoted" \\ back\nslash'}, 2))
    samples["bkd_build_info"].append(({"version": "1.0\nnew"}, 1))
    text = metrics.render(samples)
    assert 'bkd_open_alerts{kind="a \\"quoted\\" \\\\ back\\nslash"} 2' in text
    families = exposition.parse(text)
    assert families["bkd_open_alerts"].value(kind='a "quoted" \\ back\nslash') == 2
    assert list(families) == list(metrics.HELP)  # every family, HELP then TYPE, in one order


def test_every_counter_ends_in_total_and_only_counters_do():
    for name, (kind, text) in metrics.HELP.items():
        assert (kind == "counter") == name.endswith("_total"), name
        assert text.endswith(".") and "\n" not in text


def test_the_textfile_is_rewritten_every_minute_without_changes(monkeypatch, tmp_path):
    """The heartbeat in the textfile moves on its own, so a stale file means bkd is down."""
    texts = iter(f"bkd_heartbeat_timestamp_seconds {n}\n" for n in range(100))

    async def fake_exposition():
        return next(texts)

    monkeypatch.setattr(metrics, "HEARTBEAT_EVERY", 0.2)
    monkeypatch.setattr(metrics, "TEXTFILE_EVERY", 0.0)
    path = tmp_path / "bkd.prom"
    runtime = SimpleNamespace(config=SimpleNamespace(metrics=SimpleNamespace(textfile=str(path))),
                              on_reload=lambda listener: None)
    textfile = metrics.Textfile(runtime, fake_exposition)

    async def run():
        # Nothing sets `changed`: every rewrite seen here is the heartbeat's own.
        task = asyncio.create_task(textfile.run())
        deadline = asyncio.get_running_loop().time() + 30  # generous: shared machines stall
        while not (path.exists() and path.read_text() == "bkd_heartbeat_timestamp_seconds 2\n"):
            assert asyncio.get_running_loop().time() < deadline, "the textfile stopped being rewritten"
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(run())
    assert not textfile.changed.is_set()
    assert oct(path.stat().st_mode & 0o777) == "0o644"
