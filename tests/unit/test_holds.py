"""A host's hold record (meta/hold.json): what it keeps, and a record that
cannot be read holds the host, on the safe side."""

import json
import os

from bkd.tree import holds
from bkd.tree.layout import HostDir


def host(tmp_path) -> HostDir:
    host_dir = HostDir(tmp_path / "web1")
    host_dir.meta.mkdir(parents=True)
    return host_dir


def suspect(name: str) -> dict:
    return {"snapshot": name, "signals": [{"signal": "deleted", "value": 420}], "examples": {"deleted": ["a"]}}


def test_suspects_accumulate_until_a_release_removes_the_record(tmp_path):
    host_dir = host(tmp_path)
    assert holds.read(host_dir) is None and not holds.is_held(host_dir)
    holds.add(host_dir, suspect("2026-06-01_000000"), False, "2026-06-01T00:00:05Z")
    hold = holds.read(host_dir)
    assert (hold.held, hold.since, hold.snapshots) == (False, "2026-06-01T00:00:05Z", ["2026-06-01_000000"])
    assert not holds.is_held(host_dir)  # found under hold = false: recorded, pruning goes on
    holds.add(host_dir, suspect("2026-06-01_010000"), True, "2026-06-01T01:00:05Z")
    hold = holds.read(host_dir)
    assert (hold.held, hold.since) == (True, "2026-06-01T00:00:05Z")
    assert [(s["snapshot"], s["held"], s["found"]) for s in hold.suspects] == [
        ("2026-06-01_000000", False, "2026-06-01T00:00:05Z"), ("2026-06-01_010000", True, "2026-06-01T01:00:05Z")]
    assert hold.suspects[1]["signals"] == [{"signal": "deleted", "value": 420}]
    assert oct(os.stat(host_dir.hold_file).st_mode & 0o777) == "0o600"
    released = holds.release(host_dir)
    assert released.snapshots == ["2026-06-01_000000", "2026-06-01_010000"]
    assert not host_dir.hold_file.exists() and holds.release(host_dir) is None


def test_a_suspect_whose_snapshot_never_completed_is_dropped_and_the_record_goes_with_the_last(tmp_path):
    host_dir = host(tmp_path)
    holds.add(host_dir, suspect("2026-06-01_000000"), True, "2026-06-01T00:00:05Z")
    holds.add(host_dir, suspect("2026-06-01_010000"), False, "2026-06-01T01:00:05Z")
    holds.drop(host_dir, "2026-06-01_000000")
    hold = holds.read(host_dir)
    assert (hold.held, hold.since, hold.snapshots) == (False, "2026-06-01T01:00:05Z", ["2026-06-01_010000"])
    holds.drop(host_dir, "2026-06-01_010000")
    assert holds.read(host_dir) is None


def test_a_record_bkd_did_not_write_holds_the_host_and_says_so(tmp_path):
    host_dir = host(tmp_path)
    for content in (b"{not json", json.dumps({"held": False, "suspects": [1]}).encode(), b"x" * (5 << 20)):
        host_dir.hold_file.write_bytes(content)
        hold = holds.read(host_dir)
        assert hold.held and hold.problem == "hold.json is not a hold record bkd wrote", content[:20]
        assert holds.is_held(host_dir)
    assert holds.release(host_dir).problem  # an admin can still lift it
    assert not holds.is_held(host_dir)
