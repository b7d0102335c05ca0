"""The cache of Debian trees the system test boots: mmdebstrap must write a
tarball, and a broken cache entry is noticed and rebuilt (issue 9, defect 19:
a directory named ….tar made every later run on that machine fail)."""

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import nspawn
from nspawn import build_tarball, cached_tarball, sh, tarball_problem

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap needs root here (CI runs as root)")


def fake_tree(path: Path, codename: str = "bookworm", padding: int = 0) -> Path:
    """A tarball with the members tarball_problem looks for, then `padding` bytes of a last file."""
    members = {"./usr/lib/os-release": f'PRETTY_NAME="Debian"\nVERSION_CODENAME={codename}\n'.encode(),
               "./usr/bin/python3": b"", "./usr/lib/systemd/systemd": b"", "./zz-last": os.urandom(padding)}
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_whole_tree_tarball_is_usable(tmp_path):
    assert tarball_problem(fake_tree(tmp_path / "t.tar"), "bookworm") is None


@pytest.mark.parametrize("breakage, expected", [
    ("absent", "missing"),
    ("directory", "not a regular file"),
    ("empty", "rejected by tar -tf"),
    ("truncated", "rejected by tar -tf"),
    ("other release", "not a bookworm tree"),
])
def test_a_broken_cache_entry_is_noticed(tmp_path, breakage, expected):
    tarball = tmp_path / "t.tar"
    if breakage == "directory":
        (tarball / "usr" / "bin").mkdir(parents=True)
    elif breakage == "empty":
        tarball.touch()
    elif breakage == "truncated":
        fake_tree(tarball, padding=64 * 1024)
        os.truncate(tarball, tarball.stat().st_size - 40 * 1024)
    elif breakage == "other release":
        fake_tree(tarball, codename="trixie")
    assert expected in tarball_problem(tarball, "bookworm")


def test_a_directory_in_the_cache_is_replaced_by_a_tarball_with_a_warning(tmp_path, monkeypatch):
    tarball = tmp_path / f"bookworm-{nspawn.INCLUDE.replace(',', '_')}.tar"
    (tarball / "usr").mkdir(parents=True)
    built = []
    # mmdebstrap itself is tested below; here only what the cache does around it.
    monkeypatch.setattr(nspawn, "build_tarball",
                        lambda path, release, include: built.append(fake_tree(path, release)))
    with pytest.warns(UserWarning, match="rebuilding the cached bookworm tree .*not a regular file"):
        assert cached_tarball("bookworm", tmp_path) == tarball
    assert built == [tarball] and tarball.is_file()
    assert cached_tarball("bookworm", tmp_path) == tarball and len(built) == 1  # now a cache hit


@needs_root
@pytest.mark.timeout(900)  # a download of a minimal Debian tree
@pytest.mark.parametrize("release", ["bookworm", "trixie"])
def test_mmdebstrap_writes_a_tarball_of_the_release_asked_for(tmp_path, release):
    if not shutil.which("mmdebstrap"):
        pytest.fail("mmdebstrap is missing: run the README's test command (make test)")
    tarball = tmp_path / f"{release}.tar"
    # The smallest tree mmdebstrap makes: base-files only, unpacked, nothing configured.
    build_tarball(tarball, release, include="base-files", variant="extract")
    assert tarball.is_file() and list(tmp_path.iterdir()) == [tarball]  # no partial left behind
    assert subprocess.run(["tar", "-tf", str(tarball)], capture_output=True).returncode == 0
    assert f"VERSION_CODENAME={release}\n" in sh("tar", "-xOf", str(tarball), "./usr/lib/os-release").stdout
