"""A snapshot pruned while `verify` checks it is gone, not damaged (SPEC §7):
no "no manifest recorded", no files "missing", no error — whichever moment
the prune lands."""

import asyncio
import shutil
import time

from bkd.config.models import Config
from bkd.tree.layout import HostDir
from bkd.pipeline import manifest
from bkd.pipeline.prune import move_to_trash
from bkd.pipeline.snapshot import take_snapshot
from bkd.pipeline.retention import Decision
from conftest import make_tree


def _snapshots(tmp_path, count: int) -> tuple[HostDir, list[str]]:
    source = make_tree(tmp_path / "source", 12)
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    names = []
    for index in range(count):
        (source / f"new{index}.txt").write_text(f"{index}\n")
        names.append(asyncio.run(take_snapshot(config, config.hosts["h"])).name)
        time.sleep(1.01)  # one snapshot per second: names are per second
    host_dir = HostDir.of(config.backup_root, "h")
    return host_dir, names


def _prune(host_dir: HostDir, names: list[str]) -> None:
    """What a prune does: rename into the trash (tree, then its records)."""
    assert move_to_trash(host_dir, [Decision(name, "delete", "expired", "test") for name in names]) == names


def test_snapshots_pruned_before_their_turn_are_gone_not_unrecorded(tmp_path, monkeypatch):
    host_dir, names = _snapshots(tmp_path, 3)
    real = manifest.verify_tree
    calls = []

    def verify_tree(tree, recorded):
        calls.append(tree.name)
        if len(calls) == 1:  # while the first is checked, a prune takes the other two
            _prune(host_dir, names[1:])
        return real(tree, recorded)

    monkeypatch.setattr(manifest, "verify_tree", verify_tree)
    result = manifest.verify_snapshots(host_dir.hourly, host_dir.meta, names, [])
    assert result["mismatches"] == []
    assert (result["ok"], result["snapshots"], result["gone"]) == (True, names[:1], names[1:])


def test_a_snapshot_deleted_under_its_own_walk_is_gone_not_an_error(tmp_path, monkeypatch):
    host_dir, names = _snapshots(tmp_path, 2)
    real = manifest.sha256_of
    hashed = []

    def sha256_of(path, dir_fd=None):
        hashed.append(path)
        if len(hashed) == 1:  # the prune, then the trash collector, half way through the walk
            _prune(host_dir, names[1:])
            shutil.rmtree(host_dir.trash)
        return real(path, dir_fd=dir_fd)

    monkeypatch.setattr(manifest, "sha256_of", sha256_of)
    result = manifest.verify_snapshots(host_dir.hourly, host_dir.meta, names[1:], [])
    assert (result["ok"], result["snapshots"], result["gone"], result["mismatches"]) == (True, [], names[1:], [])
