"""Silences (issue 18, item 3): one in force per host and kind — a new one
replaces the old — and at most a given number in force in all."""

from bkd.state.store import Store
from bkd.alerts.store import AlertStore

NOW, LATER = "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"


async def test_a_silence_replaces_the_one_of_the_same_host_and_kind_and_the_total_is_capped(tmp_path):
    store = await Store.open(tmp_path / "bkd.sqlite")
    try:
        alerts = AlertStore(store)
        first, replaced = await alerts.silence("web1", None, LATER, "a", "root", NOW, limit=3)
        assert replaced == []
        second, replaced = await alerts.silence("web1", None, LATER, "b", "root", NOW, limit=3)
        assert replaced == [first["id"]]
        await alerts.silence("web1", "stale", LATER, None, "root", NOW, limit=3)  # another pair
        await alerts.silence(None, "stale", LATER, None, "root", NOW, limit=3)
        assert await alerts.silence("web2", None, LATER, None, "root", NOW, limit=3) is None  # a 4th pair: full
        again, replaced = await alerts.silence(None, "stale", LATER, None, "root", NOW, limit=3)  # a replacement
        assert len(replaced) == 1
        in_force = await alerts.silences(NOW)
        assert sorted((s["host"] or "", s["kind"] or "") for s in in_force) == [
            ("", "stale"), ("web1", ""), ("web1", "stale")]
        assert [s["note"] for s in in_force if s["host"] == "web1" and s["kind"] is None] == ["b"]
    finally:
        await store.close()
