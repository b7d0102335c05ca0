"""A snapshot's manifest says exactly what is in it (SPEC §8 "Integrity"),
whatever rsync printed on the way."""

import asyncio
import hashlib
import os
import time
from pathlib import Path

from bkd.config.models import Config
from bkd.tree.layout import HostDir
from bkd.pipeline import manifest, rsync
from bkd.pipeline.snapshot import take_snapshot


def config_for(tmp_path: Path, source: str, **extra) -> Config:
    return Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                  "host": [{"name": "h", "source": source}], **extra})


def verify_all(config: Config) -> dict:
    host_dir = HostDir.of(config.backup_root, "h")
    return manifest.verify_snapshots(host_dir.hourly, host_dir.meta, host_dir.hourly_names(), [])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rsync_running(marker: str, sending: bool = False) -> bool:
    """An rsync whose command line names marker (with sending: not a dry run)."""
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if cmdline.startswith(b"rsync\0") and marker.encode() in cmdline:
            if not (sending and b"--dry-run" in cmdline.split(b"\0")):
                return True
    return False


def write_versions(source: Path, version: int) -> None:
    for index in range(300):
        (source / "b" / f"f{index:03d}").write_text(f"version {version} of {index}" + "!" * version + "\n")


async def run_while_files_vanish(tmp_path: Path, config: Config, source: Path, vanished: list[Path]):
    """A second snapshot during which files the source listed are deleted
    while rsync sends big.bin (3 s at the bandwidth limit)."""
    settings = config.hosts["h"]
    first = await take_snapshot(config, settings)
    assert first.status == "ok", first.warning
    time.sleep(1.1)  # a new mtime second, so that every change is seen
    (source / "a" / "big.bin").write_bytes(os.urandom(3_000_000))
    write_versions(source, 2)
    run = asyncio.create_task(take_snapshot(config, settings))
    deadline = time.monotonic() + 20
    while not rsync_running(str(tmp_path / "backup"), sending=True) and not run.done():
        assert time.monotonic() < deadline, "rsync never started"
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.0)
    for path in vanished:
        path.unlink()
    return await run


def make_source(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "big.bin").write_bytes(b"x")
    write_versions(root, 1)
    return root


def assert_manifest_true(config: Config, name: str, source: Path) -> None:
    host_dir = HostDir.of(config.backup_root, "h")
    recorded = manifest.read(host_dir.manifest_file(name))
    for path in sorted((host_dir.hourly / name / "b").iterdir()):
        assert recorded[f"b/{path.name}".encode()][0] == sha256(path), path.name
    assert recorded[b"a/big.bin"][0] == sha256(source / "a" / "big.bin")
    result = verify_all(config)
    assert result["ok"], result["mismatches"][:5]


async def test_a_warning_mid_transfer_loses_no_changed_file_from_the_manifest(tmp_path):
    # After a warning, rsync glues the next itemized line onto a progress line;
    # the manifest must still record every written file with its new checksum.
    source = make_source(tmp_path / "src")
    config = config_for(tmp_path, str(source), rsync={"bwlimit": "1000"})
    vanished = [source / "b" / f"f{index:03d}" for index in (50, 120, 121, 200, 299)]
    second = await run_while_files_vanish(tmp_path, config, source, vanished)
    assert second.status in ("ok", "warning"), second.warning
    assert_manifest_true(config, second.name, source)


async def test_files_vanishing_during_an_incremental_pull_are_a_warning_and_the_manifest_stays_true(
        tmp_path, ssh_fleet):
    source = make_source(tmp_path / "remote")
    ssh_fleet.add_host("web1")
    config = config_for(tmp_path, f"web1:{source}/", rsync={"bwlimit": "1000"},
                        ssh=ssh_fleet.ssh_settings(options=["ConnectTimeout=5"]))
    vanished = [source / "b" / f"f{index:03d}" for index in (50, 120, 121, 200, 299)]
    second = await run_while_files_vanish(tmp_path, config, source, vanished)
    assert second.status == "warning" and "vanished" in second.warning
    assert_manifest_true(config, second.name, source)
    host_dir = HostDir.of(config.backup_root, "h")
    # A changed file that vanished before it was copied is in neither the snapshot nor the source.
    assert not (host_dir.hourly / second.name / "b" / "f050").exists()


async def test_a_file_replaced_by_a_directory_symlink_or_fifo_leaves_the_manifest(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("to-dir", "to-link", "to-fifo", "stays"):
        (source / name).write_text(f"{name}\n")
    (source / "dir-to-file").mkdir()
    (source / "dir-to-file" / "inner").write_text("inner\n")
    config = config_for(tmp_path, str(source))
    settings = config.hosts["h"]
    assert (await take_snapshot(config, settings)).status == "ok"

    (source / "to-dir").unlink()
    (source / "to-dir").mkdir()
    (source / "to-dir" / "child").write_text("child\n")
    (source / "to-link").unlink()
    (source / "to-link").symlink_to("stays")
    (source / "to-fifo").unlink()
    os.mkfifo(source / "to-fifo")
    (source / "dir-to-file" / "inner").unlink()
    (source / "dir-to-file").rmdir()
    (source / "dir-to-file").write_text("now a file\n")
    second = await take_snapshot(config, settings)

    assert second.status == "ok", second.warning
    recorded = manifest.read(HostDir.of(config.backup_root, "h").manifest_file(second.name))
    assert sorted(recorded) == [b"dir-to-file", b"stays", b"to-dir/child"]
    assert second.stats["files"] == 3
    result = verify_all(config)
    assert result["ok"], result["mismatches"]
    # And the next snapshot inherits nothing stale either.
    third = await take_snapshot(config, settings)
    assert sorted(manifest.read(HostDir.of(config.backup_root, "h").manifest_file(third.name))) == sorted(recorded)


async def twenty_files_snapshotted(tmp_path: Path):
    """A source of twenty files and its first snapshot; a new mtime second after it."""
    source = tmp_path / "src"
    source.mkdir()
    for index in range(20):
        (source / f"f{index}").write_text(f"one {index}\n")
    config = config_for(tmp_path, str(source))
    settings = config.hosts["h"]
    first = await take_snapshot(config, settings)
    assert first.status == "ok"
    time.sleep(1.1)
    return source, config, settings, first


async def test_a_lost_itemized_line_is_noticed_and_the_manifest_comes_from_the_tree(tmp_path, monkeypatch):
    source, config, settings, _ = await twenty_files_snapshotted(tmp_path)
    for index in range(0, 20, 2):
        (source / f"f{index}").write_text(f"two {index}\n")
    (source / "f1").unlink()
    parse_item = rsync.parse_item

    def losing(line: bytes):  # the compare's line for f4 never arrives
        item = parse_item(line)
        return None if item is not None and item.name == b"f4" else item

    monkeypatch.setattr(rsync, "parse_item", losing)
    second = await take_snapshot(config, settings)
    assert second.status == "ok", second.warning
    # The list does not account for rsync's count: the snapshot is taken in
    # one pass, and every file that is not a previous inode is hashed.
    assert second.stats["hashed_files"] == 10
    assert second.stats["deleted_files"] == 1 and second.stats["files"] == 19
    assert_manifest_true_flat(config, second.name, source)


async def test_a_run_reads_the_previous_manifest_once_also_when_it_falls_back_to_one_pass(tmp_path, monkeypatch):
    source, config, settings, first = await twenty_files_snapshotted(tmp_path)
    (source / "f4").write_text("two\n")
    parse_item, read_bytes = rsync.parse_item, Path.read_bytes
    previous = HostDir.of(config.backup_root, "h").manifest_file(first.name)
    reads = []

    def counted(path: Path) -> bytes:
        if path == previous:
            reads.append(path)
        return read_bytes(path)

    monkeypatch.setattr(rsync, "parse_item", lambda line: None if b"f4" in line else parse_item(line))
    monkeypatch.setattr(Path, "read_bytes", counted)
    second = await take_snapshot(config, settings)  # the compare's count is off: one pass after it
    assert second.status == "ok" and second.stats["hashed_files"] == 1
    assert len(reads) == 1
    assert_manifest_true_flat(config, second.name, source)


def assert_manifest_true_flat(config: Config, name: str, source: Path) -> None:
    recorded = manifest.read(HostDir.of(config.backup_root, "h").manifest_file(name))
    assert recorded == {p.name.encode(): (sha256(p), p.stat().st_size) for p in source.iterdir()}
    result = verify_all(config)
    assert result["ok"], result["mismatches"]


async def test_no_file_list_outlives_a_run(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("f\n")
    config = config_for(tmp_path, str(source))
    settings = config.hosts["h"]
    assert (await take_snapshot(config, settings)).status == "ok"
    meta = HostDir.of(config.backup_root, "h").meta
    (meta / ".files-.partial-crashed").write_bytes(b"left by a run that died\0")
    (source / "f").write_text("changed\n")
    assert (await take_snapshot(config, settings)).status == "ok"
    assert [p.name for p in meta.iterdir() if p.name.startswith(".")] == []


async def test_an_incremental_reports_the_compare_then_the_transfer(tmp_path):
    source = tmp_path / "src"
    for index in range(300):
        (source / f"d{index % 10}").mkdir(parents=True, exist_ok=True)
        (source / f"d{index % 10}" / f"f{index}").write_bytes(os.urandom(2000))
    config = config_for(tmp_path, str(source))
    settings = config.hosts["h"]
    assert (await take_snapshot(config, settings)).status == "ok"
    time.sleep(1.1)
    for index in range(0, 300, 3):
        (source / f"d{index % 10}" / f"f{index}").write_bytes(os.urandom(3000))
    seen = []
    assert (await take_snapshot(config, settings, on_progress=seen.append)).status == "ok"
    phases = [event["phase"] for event in seen]
    assert phases == sorted(phases, key=["compare", "transfer"].index) and set(phases) == {"compare", "transfer"}
    compare = [event for event in seen if event["phase"] == "compare"]
    assert compare[-1]["percent"] == 100 and compare[-1]["bytes"] == 0
    assert [e["percent"] for e in compare] == sorted(e["percent"] for e in compare)
    transfer = [event for event in seen if event["phase"] == "transfer"]
    assert transfer and 0 < transfer[-1]["bytes"] <= 100 * 3000  # rsync's own --info=progress2
    assert all(set(event) == {"percent", "bytes", "rate", "eta_s", "phase"} for event in seen)
