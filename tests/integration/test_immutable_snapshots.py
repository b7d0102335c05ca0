"""The fast incremental path never changes a complete snapshot, not even its metadata."""

import os
import subprocess
from pathlib import Path

import pytest

from bkd.config.models import Config
from bkd.layout import HostDir
from bkd.pipeline.snapshot import take_snapshot

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root (CI runs as root)")


def state(tree: Path) -> dict:
    """Everything a snapshot's entries carry that rsync could change in place."""
    result = {}
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        xattrs = {}
        if not path.is_symlink():
            xattrs = {name: os.getxattr(path, name) for name in os.listxattr(path)}
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        result[str(path.relative_to(tree))] = (st.st_ino, st.st_mode, st.st_uid, st.st_gid,
                                               st.st_mtime_ns, xattrs, content)
    return result


def acl(path: Path) -> str:
    return subprocess.run(["getfacl", "-cp", str(path)], capture_output=True, text=True, check=True).stdout


async def snapshot(config):
    result = await take_snapshot(config, config.settings(config.host[0]))
    assert result.status == "ok", result.warning
    return result


@ROOT_ONLY
async def test_attribute_only_changes_leave_the_older_snapshot_as_it_was(tmp_path):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    names = ["chmod", "chown", "xattr", "acl", "touch", "content", "same", "sub/deep"]
    for name in names:
        (source / name).write_text(f"data of {name}\n")
    os.symlink("same", source / "link")
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    first = await snapshot(config)
    old_dir = HostDir.of(config.backup_root, "h").hourly / first.name
    before = state(old_dir)
    acl_before = acl(old_dir / "acl")

    os.chmod(source / "chmod", 0o600)
    os.chown(source / "chown", 1234, 5678)
    os.lchown(source / "link", 4321, 8765)
    os.setxattr(source / "xattr", "user.note", b"added later")
    subprocess.run(["setfacl", "-m", "u:nobody:r", str(source / "acl")], check=True)
    os.utime(source / "touch", (1_000_000_000, 1_000_000_000))
    (source / "content").write_text("new content\n")
    os.chmod(source / "sub", 0o700)
    second = await snapshot(config)
    new_dir = HostDir.of(config.backup_root, "h").hourly / second.name

    assert state(old_dir) == before
    assert acl(old_dir / "acl") == acl_before
    assert second.stats["private_copies"] >= 4
    # The new snapshot has the new metadata …
    assert (new_dir / "chmod").stat().st_mode & 0o777 == 0o600
    assert ((new_dir / "chown").stat().st_uid, (new_dir / "chown").stat().st_gid) == (1234, 5678)
    assert (new_dir / "link").lstat().st_uid == 4321
    assert os.getxattr(new_dir / "xattr", "user.note") == b"added later"
    assert "user:nobody:r--" in acl(new_dir / "acl")
    assert (new_dir / "touch").stat().st_mtime == 1_000_000_000
    assert (new_dir / "content").read_text() == "new content\n"
    # … and what did not change still shares its inode.
    assert (new_dir / "same").stat().st_ino == (old_dir / "same").stat().st_ino
    assert (new_dir / "sub/deep").stat().st_ino == (old_dir / "sub/deep").stat().st_ino
    assert second.stats["changed_files"] == 2  # touch and content; attribute-only changes send no data


async def test_deletions_are_counted_and_do_not_reach_the_older_snapshot(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for index in range(5):
        (source / f"f{index}").write_text(str(index))
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    first = await snapshot(config)
    (source / "f1").unlink()
    (source / "f2").unlink()
    second = await snapshot(config)
    hourly = HostDir.of(config.backup_root, "h").hourly
    assert second.stats["deleted_files"] == 2 and second.stats["files"] == 3
    assert sorted(p.name for p in (hourly / first.name).iterdir()) == ["f0", "f1", "f2", "f3", "f4"]
    assert sorted(p.name for p in (hourly / second.name).iterdir()) == ["f0", "f3", "f4"]
