"""The cache of earlier packages that the upgrade test installs: a broken
entry is noticed and rebuilt, and a package that cannot be built fails the
test that needs it, saying why."""

import os
import subprocess
from pathlib import Path

import pytest

import packages
from packages import cached_deb, deb_problem

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_deb(directory: Path, package: str = "bkd", padding: int = 0) -> Path:
    """A real .deb holding usr/lib/bkd/launcher and `padding` random bytes."""
    root = directory.parent / f"{directory.name}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(f"Package: {package}\nVersion: 0.1.0\nArchitecture: all\n"
                                         "Maintainer: t <t@example.org>\nDescription: t\n")
    (root / "usr/lib/bkd").mkdir(parents=True)
    (root / "usr/lib/bkd/launcher").write_bytes(os.urandom(padding))
    directory.mkdir(parents=True, exist_ok=True)
    deb = directory / "bkd_0.1.0_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def test_a_whole_package_is_usable(tmp_path):
    tiny_deb(tmp_path / "c")
    assert deb_problem(tmp_path / "c") is None


@pytest.mark.parametrize("breakage, expected", [
    ("absent", "missing"),
    ("file", "not a directory"),
    ("empty", "holds 0 packages, not one"),
    ("two", "holds 2 packages, not one"),
    ("truncated", "rejected by dpkg-deb"),
    ("another package", "not a bkd package"),
])
def test_a_broken_cache_entry_is_noticed(tmp_path, breakage, expected):
    entry = tmp_path / "c"
    if breakage == "file":
        entry.write_bytes(b"")
    elif breakage == "empty":
        entry.mkdir()
    elif breakage == "two":
        tiny_deb(entry)
        (entry / "bkd_0.0.9_amd64.deb").write_bytes((entry / "bkd_0.1.0_amd64.deb").read_bytes())
    elif breakage == "truncated":
        deb = tiny_deb(entry, padding=64 * 1024)
        os.truncate(deb, deb.stat().st_size - 40 * 1024)
    elif breakage == "another package":
        deb = tiny_deb(entry)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "x")], check=True)
        (tmp_path / "x/usr/lib/bkd/launcher").rename(tmp_path / "x/usr/lib/bkd/other")
        (tmp_path / "x/DEBIAN").mkdir()
        subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "x/DEBIAN")], check=True)
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tmp_path / "x"), str(deb)],
                       check=True, capture_output=True)
    assert expected in deb_problem(entry)


def test_a_broken_entry_is_rebuilt_with_a_warning_and_then_reused(tmp_path, monkeypatch):
    entry = tmp_path / "debs" / COMMIT
    entry.mkdir(parents=True)  # empty: a build cut short before the rename could not leave this, a person could
    built = []
    # The real build is exercised by the upgrade test; here only what the cache does around it.
    monkeypatch.setattr(packages, "build_deb", lambda commit, directory: built.append(tiny_deb(directory)))
    with pytest.warns(UserWarning, match=f"rebuilding the cached package of {COMMIT} .*holds 0 packages"):
        deb = cached_deb(COMMIT, tmp_path)
    assert built == [deb] and deb.parent == entry
    assert cached_deb(COMMIT, tmp_path) == deb and len(built) == 1  # now a cache hit


def test_a_commit_the_repository_does_not_have_fails_saying_what_to_do(tmp_path):
    with pytest.raises(AssertionError, match=f"cannot check out {COMMIT} .*needs the repository's history"):
        cached_deb(COMMIT, tmp_path)
    assert list((tmp_path / "debs").iterdir()) == []  # nothing half-built left in the cache
