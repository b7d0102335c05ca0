"""Every copy bkd keeps is reachable (issue 21, item 1): monthly copies and
archives are listed, browsed, restored and verified with bkctl like hourly
snapshots, through a real daemon."""

import json
import os
import subprocess

import pytest

from conftest import wait_until
from test_restore import HOSTILE, ROOT_ONLY, build_hostile_tree, describe


def refs(daemon, kind: str) -> list[dict]:
    return daemon.bkctl_json("snapshots", "web1", "--kind", kind)["snapshots"]


@pytest.fixture
def copies(short_tmp, daemon_factory):
    """A hostile tree (names with any bytes, a 4,000-byte path, hard links,
    a sparse file, xattrs, ACLs) with one snapshot, its archive and its
    monthly copy."""
    source = os.fsencode(short_tmp / "src")
    build_hostile_tree(source)
    os.makedirs(os.path.join(source, b"sub", b"inner"))
    with open(os.path.join(source, b"sub", b"inner", b"f"), "wb") as f:
        f.write(b"inner file\n")
    os.link(os.path.join(source, HOSTILE[1]), os.path.join(source, b"sub", b"linked-from-outside"))
    os.chmod(os.path.join(source, b"sub", b"inner"), 0o750)
    os.utime(os.path.join(source, b"sub"), ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    daemon = daemon_factory([{"name": "web1", "source": os.fsdecode(source)}],
                            backup_root=str(short_tmp / "b")).start()
    job = daemon.wait_job(daemon.call("job.start", hosts=["web1"], kind="all")["job_id"])
    assert job["status"] == "ok", job
    return daemon, source, job["hosts"][0]


@ROOT_ONLY
def test_monthly_copies_and_archives_are_listed_browsed_restored_and_verified(copies, short_tmp, tmp_path):
    daemon, source, run = copies
    snapshot, month, archive = run["snapshot"], run["stats"]["monthly"], run["stats"]["archive"]

    listed = {s["name"]: s for s in refs(daemon, "all")}
    assert set(listed) == {snapshot, f"monthly/{month}", f"archive/{archive}"}
    hourly, monthly, archived = listed[snapshot], listed[f"monthly/{month}"], listed[f"archive/{archive}"]
    assert (monthly["kind"], archived["kind"], hourly["kind"]) == ("monthly", "archive", "hourly")
    assert monthly["snapshot"] == archived["snapshot"] == snapshot
    assert monthly["time"] == archived["time"] == hourly["time"]
    assert monthly["files"] == archived["files"] == hourly["files"] > len(HOSTILE)
    assert monthly["bytes"] == hourly["bytes"]
    assert archived["bytes"] == (short_tmp / "b/web1/archives" / archive).stat().st_size
    assert [s["name"] for s in refs(daemon, "monthly")] == [f"monthly/{month}"]
    assert [s["name"] for s in refs(daemon, "archive")] == [f"archive/{archive}"]
    assert [s["name"] for s in refs(daemon, "hourly")] == [snapshot]
    human = daemon.bkctl("snapshots", "web1", "--kind", "all")
    assert human.returncode == 0 and f"monthly/{month}" in human.stdout and "archive" in human.stdout

    # Browsing: each copy shows what the snapshot shows, entry for entry (an archive from its index).
    def ls(ref: str, path: str) -> list[dict]:
        entries = []
        page = daemon.bkctl_json("ls", "web1", ref, path)
        assert page["snapshot"] == ref
        entries += page["entries"]
        return entries

    def sized(entries: list[dict]) -> list[dict]:
        return [{**e, "size": 0} if e["type"] == "dir" else e for e in entries]  # tar keeps no directory sizes

    for path in ("/", "/sub", "/sub/inner"):
        want = ls(snapshot, path)
        assert ls(f"monthly/{month}", path) == want, path
        assert ls(f"archive/{archive}", path) == sized(want), path
    human = daemon.bkctl("ls", "web1", f"archive/{archive}", "/")
    assert human.returncode == 0 and "new\\nline" in human.stdout and "bad-\\xff\\xfe-utf8" in human.stdout
    missing = daemon.bkctl("ls", "web1", "archive/web1_2001-01-01_000000.tar.zst")
    assert missing.returncode == 1 and "no archive" in missing.stderr
    assert daemon.bkctl("ls", "web1", "monthly/1999-01").returncode == 1

    # Restores are byte-identical, with every name and attribute, and keep the DEST rules.
    for ref in (f"monthly/{month}", f"archive/{archive}"):
        dest = short_tmp / f"r-{ref[:7]}"
        result = daemon.bkctl("restore", "web1", ref, "/", "--to", str(dest))
        assert result.returncode == 0, result.stdout + result.stderr
        assert describe(os.fsencode(dest)) == describe(source), ref
        # A subtree into an existing DEST: DEST keeps its owner, mode and times; PATH's parents are created
        # with the snapshot's attributes; a hard link to a file outside PATH is restored as that file.
        existing = tmp_path / f"existing-{ref[:7]}"
        existing.mkdir()
        os.chown(existing, 1000, 1000)
        existing.chmod(0o711)
        os.utime(existing, ns=(1_000_000_000, 1_000_000_000))
        result = daemon.bkctl("restore", "web1", ref, "/sub", "--to", str(existing))
        assert result.returncode == 0, result.stdout + result.stderr
        st = existing.stat()
        assert (st.st_uid, st.st_mode & 0o7777, st.st_mtime_ns) == (1000, 0o711, 1_000_000_000), ref
        unlinked = {name: {k: v for k, v in entry.items() if k != "linked_with"}  # its other name is not in /sub
                    for name, entry in describe(os.path.join(source, b"sub")).items()}
        assert describe(os.fsencode(existing / "sub")) == unlinked, ref
        assert os.stat(existing / "sub").st_mtime_ns == 1_500_000_000_000_000_000
        # Conflicts, overwrite and dry runs as for any restore.
        again = daemon.bkctl("restore", "web1", ref, "/sub/inner/f", "--to", str(existing))
        assert again.returncode == 1 and "exists; use --overwrite" in again.stderr, ref
        (existing / "sub/inner/f").write_text("changed since\n")
        assert daemon.bkctl("restore", "web1", ref, "/sub/inner/f", "--to", str(existing),
                            "--overwrite").returncode == 0
        assert (existing / "sub/inner/f").read_text() == "inner file\n"
        dry = daemon.bkctl("restore", "web1", ref, "/sub", "--to", str(tmp_path / f"dry-{ref[:7]}"), "--dry-run")
        assert dry.returncode == 0 and "would write sub/inner/f" in dry.stdout, dry.stdout
        assert not (tmp_path / f"dry-{ref[:7]}").exists()
    # The archive's staging directories are gone once its restores ended.
    assert not list((short_tmp / "b/web1/.restore").iterdir())

    # verify: clean, then a flipped byte in the archive and in the monthly copy is found.
    for ref in (f"monthly/{month}", f"archive/{archive}"):
        clean = daemon.bkctl("--json", "verify", "web1", ref)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert json.loads(clean.stdout)["checked"] > len(HOSTILE)
    archive_path = short_tmp / "b/web1/archives" / archive
    data = bytearray(archive_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive_path.write_bytes(bytes(data))
    broken = daemon.bkctl("--json", "verify", "web1", f"archive/{archive}")
    assert broken.returncode == 1
    problems = json.loads(broken.stdout)["mismatches"]
    assert {"snapshot": f"archive/{archive}", "path": f"archives/{archive}", "problem": "changed"}.items() <= \
        problems[0].items()
    monthly_file = short_tmp / "b/web1/monthly" / month / "sub/inner/f"
    monthly_file.write_bytes(b"inner filf\n")
    flipped = daemon.bkctl("--json", "verify", "web1", f"monthly/{month}")
    assert flipped.returncode == 1
    assert [(m["snapshot"], m["path"], m["problem"]) for m in json.loads(flipped.stdout)["mismatches"]] == [
        (f"monthly/{month}", "sub/inner/f", "changed")]
    every = daemon.bkctl("--json", "verify", "web1", "--all")
    found = {(m["snapshot"], m["problem"]) for m in json.loads(every.stdout)["mismatches"]}
    assert every.returncode == 1 and {(f"monthly/{month}", "changed"), (f"archive/{archive}", "changed"),
                                      (snapshot, "changed")} <= found


@ROOT_ONLY
def test_an_archive_made_before_indexes_gets_its_index_on_first_use_and_keeps_it(copies, short_tmp, tmp_path):
    daemon, source, run = copies
    archive = short_tmp / "b/web1/archives" / run["stats"]["archive"]
    index = archive.with_name(archive.name + ".index")
    assert index.exists()
    want = daemon.bkctl_json("ls", "web1", f"archive/{archive.name}", "/sub")["entries"]
    index.unlink()
    assert daemon.bkctl_json("ls", "web1", f"archive/{archive.name}", "/sub")["entries"] == want
    assert index.exists()
    built = index.stat()
    assert daemon.bkctl_json("ls", "web1", f"archive/{archive.name}", "/")["entries"]
    assert index.stat().st_mtime_ns == built.st_mtime_ns and index.stat().st_ino == built.st_ino  # built once
    index.write_bytes(b"not an index")  # a damaged one is rebuilt too
    assert daemon.bkctl_json("ls", "web1", f"archive/{archive.name}", "/sub")["entries"] == want
    assert "archive.index_refused" in daemon.log()


@ROOT_ONLY
def test_expired_copies_take_their_records_with_them(copies, short_tmp):
    daemon, source, run = copies
    host = short_tmp / "b/web1"
    month = run["stats"]["monthly"]
    assert (host / "meta" / f"monthly-{month}.json").exists()
    manifest = host / "meta" / f"monthly-{month}.manifest"
    assert manifest.stat().st_ino == (host / "meta" / f"{run['snapshot']}.manifest").stat().st_ino
    archive = host / "archives" / run["stats"]["archive"]
    assert sorted(p.name for p in archive.parent.iterdir()) == sorted(
        archive.name + suffix for suffix in ("", ".index", ".manifest", ".sha256"))
