"""A file whose attributes alone changed gets an inode of its own in the new
snapshot without writing its holes (SPEC §7 "Sparse files stay sparse"), and
its manifest entry stays exactly true whatever the source does meanwhile."""

import hashlib
import os
from pathlib import Path

from bkd.config.models import Config
from bkd.tree.layout import HostDir
from bkd.pipeline import manifest
from bkd.pipeline.snapshot import take_snapshot
from conftest import between_compare_and_copy

SIZE = 256 << 20


def config_for(tmp_path: Path, source: Path) -> Config:
    return Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                  "host": [{"name": "h", "source": str(source)}]})


def sparse_source(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    with open(source / "sparse", "wb") as f:
        f.truncate(SIZE)
        f.seek(SIZE // 2)
        f.write(b"x")
    (source / "plain").write_text("plain\n")
    return source


async def snapshotted(tmp_path: Path) -> tuple[Path, Config]:
    """A sparse source and its first snapshot."""
    source = sparse_source(tmp_path)
    config = config_for(tmp_path, source)
    assert (await take_snapshot(config, config.hosts["h"])).status == "ok"
    return source, config


def assert_true_manifest(config: Config, name: str, source: Path) -> None:
    host_dir = HostDir.of(config.backup_root, "h")
    recorded = manifest.read(host_dir.manifest_file(name))
    assert recorded == {p.name.encode(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
                        for p in source.iterdir()}
    result = manifest.verify_snapshots(host_dir.hourly, host_dir.meta, [name], [])
    assert result["ok"], result["mismatches"]


async def test_a_resumed_snapshot_punches_the_holes_back_into_rsyncs_copy(tmp_path):
    """Resuming (and the one-pass fallback) run rsync with --link-dest, whose
    local copy of a file that changed only its mode writes every byte."""
    source = sparse_source(tmp_path)
    config = config_for(tmp_path, source)
    settings = config.hosts["h"]
    first = await take_snapshot(config, settings)
    hourly = HostDir.of(config.backup_root, "h").hourly
    (hourly / ".partial-2026-01-01_000000-abcdef").mkdir()  # an interrupted run: the next one resumes
    (source / "sparse").chmod(0o600)
    second = await take_snapshot(config, settings)
    assert second.status == "ok", second.warning
    copy, old = hourly / second.name / "sparse", hourly / first.name / "sparse"
    assert copy.stat().st_ino != old.stat().st_ino and copy.stat().st_mode & 0o777 == 0o600
    assert old.stat().st_mode & 0o777 == 0o644
    assert copy.stat().st_blocks * 512 < (1 << 20), copy.stat().st_blocks
    assert copy.stat().st_mtime_ns == (source / "sparse").stat().st_mtime_ns  # punching is a write: put back
    assert_true_manifest(config, second.name, source)


async def test_an_attribute_only_change_whose_file_vanishes_before_the_copy_is_a_warning(tmp_path, monkeypatch):
    source, config = await snapshotted(tmp_path)
    (source / "sparse").chmod(0o600)

    def it_goes(plan, private):
        assert private == {b"sparse"}  # given a copy of its own, from the previous snapshot
        (source / "sparse").unlink()

    between_compare_and_copy(monkeypatch, it_goes)
    second = await take_snapshot(config, config.hosts["h"])
    assert second.status == "warning" and "vanished" in second.warning and "sparse" in second.warning
    assert sorted(p.name for p in (HostDir.of(config.backup_root, "h").hourly / second.name).iterdir()) == ["plain"]
    assert_true_manifest(config, second.name, source)


async def test_new_content_after_an_attribute_only_change_is_hashed_not_inherited(tmp_path, monkeypatch):
    source, config = await snapshotted(tmp_path)
    (source / "plain").chmod(0o600)

    def new_content(plan, private):  # the copy sends it: rsync replaces the private copy
        (source / "plain").write_text("new content, and longer\n")

    between_compare_and_copy(monkeypatch, new_content)
    second = await take_snapshot(config, config.hosts["h"])
    assert second.status == "ok", second.warning
    new = HostDir.of(config.backup_root, "h").hourly / second.name / "plain"
    assert new.read_text() == "new content, and longer\n" and new.stat().st_mode & 0o777 == 0o600
    assert_true_manifest(config, second.name, source)
