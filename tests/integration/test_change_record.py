"""Each snapshot's change record (`meta/NAME.changes`, docs/design.md) lists
exactly the entries whose inode is new in it, or whose path is gone, against
the previous snapshot — whichever way the run made the tree: a first pull,
an incremental run, a resumed one, the one-pass fallback. Checked against
an independent walk of both trees with real rsync snapshots."""

import asyncio
import os
import shutil
import stat
import time
from pathlib import Path

from conftest import between_compare_and_copy

from bkd.config.models import Config
from bkd.pipeline import changes, manifest
from bkd.pipeline.snapshot import take_snapshot
from bkd.tree.layout import HostDir

TYPES = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p"}
# Every byte a name may hold but / and NUL, in a few names (newline and backslash too).
ODD_NAMES = [bytes(range(1, 47)), bytes(range(48, 128)), bytes(range(128, 256)), b"back\\slash\nnewline"]


def config_for(tmp_path: Path, source: Path) -> Config:
    return Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                  "host": [{"name": "h", "source": str(source)}],
                                  "rsync": {"exclude_defaults": False}})


def entries(root: Path) -> dict[bytes, os.stat_result]:
    """Every entry under root by relative path, lstat'ed (the reference walk: no symlink followed)."""
    found = {}
    base = os.fsencode(root)
    for directory, dirs, files in os.walk(base):
        for name in dirs + files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, base)] = os.lstat(path)
    return found


def expected(host_dir: HostDir, name: str, previous: str | None) -> list[changes.Entry]:
    new = entries(host_dir.hourly / name)
    old = entries(host_dir.hourly / previous) if previous else {}
    new_sums = manifest.read(host_dir.manifest_file(name))
    old_sums = manifest.read(host_dir.manifest_file(previous)) if previous else {}

    def entry(op, path, st, sums):
        kind = TYPES[stat.S_IFMT(st.st_mode)]
        return changes.Entry(op, kind, st.st_size, st.st_mtime_ns, st.st_ino,
                             sums[path][0] if kind == "f" else None, path)

    out = {}
    for path, st in new.items():
        before = old.get(path)
        both_dirs = before is not None and stat.S_ISDIR(before.st_mode) and stat.S_ISDIR(st.st_mode)
        if before is not None and (before.st_ino == st.st_ino or both_dirs):
            continue
        out[path] = entry("+" if before is None else "~", path, st, new_sums)
    for path, st in old.items():
        if path not in new:
            out[path] = entry("-", path, st, old_sums)
    return [out[path] for path in sorted(out)]


def check(config: Config, name: str, previous: str | None) -> list[changes.Entry]:
    host_dir = HostDir.of(config.backup_root, "h")
    record = host_dir.changes_file(name)
    head = record.read_bytes().split(b"\n", 1)[0]
    assert head == f"# bkd changes 1 previous={previous or '-'}".encode()
    recorded_previous, recorded = changes.read(record)
    assert recorded_previous == previous
    assert recorded == expected(host_dir, name, previous)
    return recorded


def source_tree(root: Path) -> Path:
    (root / "docs" / "deep" / "deeper").mkdir(parents=True)
    (root / "gone" / "inner").mkdir(parents=True)
    (root / "becomes_file").mkdir()
    (root / "becomes_link").mkdir()
    (root / "becomes_link" / "x").write_text("x\n")
    (root / "becomes_file" / "y").write_text("y\n")
    for index in range(30):
        (root / "docs" / f"f{index}.txt").write_text(f"text {index}\n" * 20)
    (root / "docs" / "deep" / "deeper" / "leaf.txt").write_text("leaf\n")
    (root / "gone" / "inner" / "a.txt").write_text("a\n")
    (root / "gone" / "b.txt").write_text("b\n")
    (root / "to_dir").write_text("file for now\n")
    (root / "to_link").write_text("file for now\n")
    (root / "mode_only").write_text("mode\n")
    (root / "link").symlink_to("docs/f1.txt")
    (root / "hard1").write_text("hard\n")
    os.link(root / "hard1", root / "hard2")
    os.mkfifo(root / "fifo")
    (root / "empty").write_bytes(b"")
    odd = root / "odd"
    odd.mkdir()
    for name in ODD_NAMES:
        fd = os.open(os.fsencode(odd) + b"/" + name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, name)
        os.close(fd)
    return root


def change_everything(root: Path) -> None:
    time.sleep(1.1)  # a new mtime second: rsync's quick check sees every change
    (root / "docs" / "f0.txt").write_text("rewritten\n")
    with open(root / "docs" / "f1.txt", "a") as f:
        f.write("appended\n")
    (root / "docs" / "f2.txt").unlink()
    (root / "docs" / "f3.txt").rename(root / "docs" / "f3.renamed")
    (root / "docs" / "f4.txt").rename(root / "moved.txt")
    os.utime(root / "docs" / "f5.txt", (1, 1))  # mtime only: a new inode all the same
    os.chmod(root / "mode_only", 0o600)
    for path in sorted((root / "gone").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "gone").rmdir()
    (root / "new" / "sub").mkdir(parents=True)
    (root / "new" / "sub" / "n.txt").write_text("new\n")
    (root / "to_dir").unlink()
    (root / "to_dir").mkdir()
    (root / "to_dir" / "inside").write_text("inside\n")
    (root / "to_link").unlink()
    (root / "to_link").symlink_to("docs")
    (root / "becomes_file" / "y").unlink()
    (root / "becomes_file").rmdir()
    (root / "becomes_file").write_text("now a file\n")
    (root / "becomes_link" / "x").unlink()
    (root / "becomes_link").rmdir()
    (root / "becomes_link").symlink_to("/etc")
    os.link(root / "docs" / "f6.txt", root / "docs" / "f6.hardlink")
    (root / "link").unlink()
    (root / "link").symlink_to("docs/f7.txt")
    fd = os.open(os.fsencode(root / "odd") + b"/" + ODD_NAMES[0], os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"more")
    os.close(fd)
    os.unlink(os.fsencode(root / "odd") + b"/" + ODD_NAMES[1])


def run(config: Config):
    result = asyncio.run(take_snapshot(config, config.hosts[config.host[0].name]))
    assert result.status == "ok", result.warning
    return result


def test_a_first_snapshot_lists_every_entry_as_new_then_an_incremental_one_exactly_what_changed(tmp_path,
                                                                                                   monkeypatch):
    source = source_tree(tmp_path / "src")
    config = config_for(tmp_path, source)
    from_rsyncs_list = []  # a first pull's record comes from rsync's list (checked by its counts), no walk
    monkeypatch.setattr(changes, "first_pull",
                        lambda *args, first=changes.first_pull: from_rsyncs_list.append(1) or first(*args))
    first = run(config)
    assert from_rsyncs_list == [1]
    recorded = check(config, first.name, None)
    assert {entry.op for entry in recorded} == {"+"}
    assert len(recorded) == len(entries(source))
    change_everything(source)
    second = run(config)
    recorded = {entry.path: entry for entry in check(config, second.name, first.name)}
    # What each change is, spelled out (the reference walk above says it too).
    assert recorded[b"docs/f0.txt"].op == "~" and recorded[b"docs/f2.txt"].op == "-"
    assert recorded[b"gone/inner/a.txt"].op == "-" and recorded[b"gone"].op == "-"
    assert recorded[b"new/sub/n.txt"].op == "+" and recorded[b"new"].op == "+"
    assert (recorded[b"to_dir"].op, recorded[b"to_dir"].type) == ("~", "d")
    assert recorded[b"to_dir/inside"].op == "+"
    assert (recorded[b"becomes_link"].type, recorded[b"becomes_link/x"].op) == ("l", "-")
    assert recorded[b"mode_only"].op == "~" and b"docs" not in recorded and b"docs/f8.txt" not in recorded
    assert recorded[b"odd/" + ODD_NAMES[1]].op == "-" and recorded[b"odd/" + ODD_NAMES[0]].op == "~"
    # A third run with nothing changed lists nothing.
    third = run(config)
    assert check(config, third.name, second.name) == []


def test_a_resumed_run_and_the_one_pass_fallback_list_the_same_as_an_incremental_one(tmp_path, monkeypatch):
    source = source_tree(tmp_path / "src")
    config = config_for(tmp_path, source)
    first = run(config)
    host_dir = HostDir.of(config.backup_root, "h")
    change_everything(source)
    # An interrupted run's partial: the next run resumes with --link-dest and walks both trees.
    partial = host_dir.hourly / ".partial-2000-01-01_000000-abcdef"
    partial.mkdir()
    shutil.copytree(source / "docs", partial / "docs", symlinks=True)
    resumed = run(config)
    assert not partial.exists()
    check(config, resumed.name, first.name)
    # The source moves between the compare and the copy: the run is taken again in one pass.
    time.sleep(1.1)
    (source / "docs" / "f9.txt").write_text("changed again\n")
    (source / "swap").mkdir()
    (source / "swap" / "s.txt").write_text("s\n")
    second = run(config)
    time.sleep(1.1)
    (source / "swap" / "s.txt").write_text("s2\n")

    def swap(plan, private):
        (source / "swap" / "s.txt").unlink()
        (source / "swap").rmdir()
        (source / "swap").symlink_to("docs")

    between_compare_and_copy(monkeypatch, swap)
    fallback = run(config)
    recorded = {entry.path: entry for entry in check(config, fallback.name, second.name)}
    assert recorded[b"swap"].type == "l" and recorded[b"swap/s.txt"].op == "-"
