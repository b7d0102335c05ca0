"""A source directory swapped for a symlink (or back) between the compare
and the copy: rsync's own itemized types tell, and the snapshot is taken
again in one pass (issue 17 item 5). Deterministic: the swap happens in the
step between the two reads."""

import ctypes
import os
from pathlib import Path

import pytest

from bkd.config.models import Config
from bkd.tree.layout import HostDir
from bkd.pipeline.snapshot import take_snapshot
from conftest import between_compare_and_copy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a root-only directory and a user's symlink need root")

USER = 4321  # owns the source and the symlink, as a user with a home directory would
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): the source holds
    one state or the other, never neither."""
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def make_world(tmp_path: Path) -> tuple[Path, Path]:
    """home/d a directory with a decoy id_rsa; stash/d a symlink, owned by
    the user, to a root-only directory holding the real id_rsa."""
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    (secret / "id_rsa").write_text("SECRET key material\n")
    home, stash = tmp_path / "home", tmp_path / "stash"
    (home / "d").mkdir(parents=True)
    stash.mkdir()
    (home / "d" / "id_rsa").write_text("decoy\n")
    (home / "d" / "notes").write_text("notes\n")
    (home / "other").write_text("other\n")
    os.symlink(secret, stash / "d")
    for path in (home, home / "d", home / "d" / "id_rsa", home / "d" / "notes", home / "other", stash):
        os.chown(path, USER, USER)
    os.lchown(stash / "d", USER, USER)
    return home, stash


def entries(tree: Path) -> dict:
    found = {}
    for directory, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = Path(directory) / name
            key = str(path.relative_to(tree))
            found[key] = ("link", os.readlink(path)) if path.is_symlink() else (
                ("dir",) if path.is_dir() else ("file", path.read_bytes()))
    return found


@pytest.mark.parametrize("through", ["local", "rrsync"])
async def test_a_directory_swapped_for_a_symlink_and_back_between_the_compare_and_the_copy(
        tmp_path, monkeypatch, request, through):
    """Locally, and through a restricted key (rrsync -ro: nothing runs on
    the source but rsync, so rsync's own output is all there is to go by)."""
    home, stash = make_world(tmp_path)
    settings = {"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                "host": [{"name": "h", "source": str(home)}]}
    if through == "rrsync":
        fleet = request.getfixturevalue("ssh_fleet")
        fleet.add_host("swaps")
        key = fleet.authorized_keys.read_text().strip()
        fleet.authorized_keys.write_text(f'command="/usr/bin/rrsync -ro {home}",restrict {key}\n')
        settings.update(ssh=fleet.ssh_settings(), host=[{"name": "h", "source": "swaps:/"}])
    config = Config.model_validate(settings)
    settings = config.hosts["h"]
    hourly = HostDir.of(config.backup_root, "h").hourly
    first = await take_snapshot(config, settings)
    assert first.status == "ok"
    as_directory = entries(home)
    exchange(home / "d", stash / "d")  # d is the symlink now: the compare lists it as one
    as_symlink = entries(home)
    swaps = []

    def swap_once(plan, private):  # between the compare and the copy, d swaps again
        if not swaps:
            exchange(home / "d", stash / "d")
            swaps.append(b"d" in plan.fetch)

    between_compare_and_copy(monkeypatch, swap_once)
    second = await take_snapshot(config, settings)
    assert swaps == [True]  # the compare listed d (a symlink then); the copy found a directory
    # Before: the copy made d an empty directory, a state the source never had.
    assert second.status == "ok" and entries(hourly / second.name) == as_directory
    assert entries(home) == as_directory

    # The other way: the compare sees the directory with a change in it, the copy a symlink.
    (home / "d" / "notes").write_text("notes, changed and longer\n")
    os.chown(home / "d" / "notes", USER, USER)
    as_directory = entries(home)
    swaps.clear()  # d becomes the symlink after the compare this time
    third = await take_snapshot(config, settings)
    assert swaps == [True] and third.status == "ok"
    assert entries(hourly / third.name) == as_symlink  # taken again, in one pass: the symlink, kept as one
    for snapshot in hourly.iterdir():
        for path in snapshot.rglob("*"):
            assert not (path.is_file() and not path.is_symlink() and b"SECRET" in path.read_bytes()), path
