"""Every version findable (issue 21, item 2): `find` over a real daemon's
snapshots, monthly copies and archives, from the version index built as the
snapshots are made, kept exact by pruning, and rebuilt the same when lost."""

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import make_tree, wait_until

HOSTILE = [b"new\nline.conf", b"bad-\xff.conf", b"star*[x]?.conf", b"back\\slash.conf"]


def write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def find(daemon, *args: str) -> list[dict]:
    """find's versions, waiting while the index is being rebuilt (-32007)."""
    def answer():
        result = daemon.bkctl("--json", "find", "web1", *args)
        if result.returncode == 0:
            return (json.loads(result.stdout)["versions"],)
        error = json.loads(result.stderr)["error"]
        assert error["code"] == -32007, result.stderr
        return None
    return wait_until(answer, 60, 0.2, what="the version index")[0]


def escaped(name: bytes) -> str:
    """A pattern matching exactly the name: its *, ?, [ and \\ escaped."""
    return os.fsdecode(b"".join(b"\\" + bytes([c]) if c in b"*?[\\" else bytes([c]) for c in name))


def summary(versions: list[dict]) -> list[tuple]:
    return [(v["path"], v["type"], v["sha256"] and v["sha256"][:8], v["first"], v["last"], v["count"])
            for v in versions]


@pytest.fixture
def history(tmp_path, daemon_factory):
    """Thirteen snapshots of a tree whose /etc/app.conf changes in some of
    them (a chmod alone in one, deleted and back in another), a directory
    that becomes a file, hostile names; then an archive and a monthly copy
    of the last snapshot."""
    source = make_tree(tmp_path / "src", 20)
    app = source / "etc/app.conf"
    write(app, b"v1\n")
    write(source / "etc/other.conf", b"other\n")
    (source / "swap").mkdir()
    write(source / "swap/inside.conf", b"inside\n")
    for name in HOSTILE:
        with open(os.path.join(os.fsencode(source), b"etc", name), "wb") as f:
            f.write(b"first " + name)
    steps = {
        3: lambda: app.write_bytes(b"v2\n"),
        5: lambda: app.chmod(0o600),  # a new inode with the same content: the same version
        6: lambda: open(os.path.join(os.fsencode(source), b"etc", HOSTILE[1]), "wb").write(b"second"),
        7: lambda: app.write_bytes(b"v3\n"),
        8: lambda: (shutil.rmtree(source / "swap"), (source / "swap").write_bytes(b"now a file\n")),
        9: lambda: app.unlink(),
        10: lambda: app.write_bytes(b"v3\n"),  # back, with the content it had: the same version
        11: lambda: app.write_bytes(b"v4\n"),
    }
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    names = []
    for number in range(12):
        if number in steps:
            time.sleep(1.1)  # an mtime of its own: rsync's quick check must see the change
            steps[number]()
        job = daemon.run_snapshot()
        assert job["status"] == "ok", job
        assert job["hosts"][0]["stats"]["index_s"] is not None
        names.append(job["hosts"][0]["snapshot"])
    job = daemon.wait_job(daemon.call("job.start", hosts=["web1"], kind="all")["job_id"])
    assert job["status"] == "ok", job
    run = job["hosts"][0]
    names.append(run["snapshot"])
    return daemon, source, names, f"monthly/{run['stats']['monthly']}", f"archive/{run['stats']['archive']}"


def test_find_lists_one_version_per_content_change_with_the_copies_holding_it(history):
    daemon, source, s, monthly, archive = history
    app = summary(find(daemon, "/etc/app.conf"))
    assert [row[3:] for row in app] == [
        (s[11], s[12], 4),  # v4: two snapshots, the monthly copy and the archive
        (s[7], s[10], 3),  # v3: gone from s[9], back in s[10] with the same content
        (s[3], s[6], 4),  # v2, and its chmod in s[5]
        (s[0], s[2], 3),  # v1
    ]
    assert len({row[2] for row in app}) == 4
    versions = find(daemon, "/etc/app.conf")
    assert versions[0]["mtime"] and versions[0]["size"] == 3 and versions[0]["type"] == "file"
    # A pattern without / matches the last name anywhere; ** crosses directories; ls --history is find of one path.
    assert summary(find(daemon, "app.conf")) == app
    history = daemon.bkctl_json("ls", "--history", "web1", "/etc/app.conf")
    assert summary(history["versions"]) == app
    every = summary(find(daemon, "**/*.conf"))
    assert [row for row in every if row[0] == "/etc/app.conf"] == app
    assert ("/etc/other.conf", "file", every[-1][2] and [r for r in every if r[0] == "/etc/other.conf"][0][2],
            s[0], s[12], 15) in every  # thirteen snapshots, the monthly copy and the archive
    assert ("/swap/inside.conf", "file") in {row[:2] for row in every}
    swap = summary(find(daemon, "/swap"))
    assert [row[1:2] + row[3:] for row in swap] == [("file", s[8], s[12], 7), ("dir", s[0], s[7], 8)]
    # Names with any bytes are found exactly (--json: surrogate escapes) and shown safely.
    for name in HOSTILE:
        path = os.fsdecode(b"/etc/" + name)
        found = find(daemon, "/etc/" + escaped(name))
        assert {v["path"] for v in found} == {path}, name
        assert daemon.bkctl_json("ls", "--history", "web1", path)["versions"] == found
    bad = [v for v in find(daemon, "bad-*") if v["path"].startswith("/etc/")]
    assert [(v["first"], v["last"]) for v in bad] == [(s[6], s[12]), (s[0], s[5])]
    human = daemon.bkctl("find", "web1", "*.conf")
    assert human.returncode == 0 and "new\\nline.conf" in human.stdout and "bad-\\xff.conf" in human.stdout
    assert not any(line.startswith("line.conf") for line in human.stdout.splitlines())  # no raw newline
    # Every kind of copy can be where a version is first or last seen, and each restores it.
    assert find(daemon, "/etc/app.conf")[0]["count"] == 4
    assert {monthly, archive} <= {c["name"] for c in daemon.bkctl_json("snapshots", "web1", "--kind", "all")["snapshots"]}
    # --since keeps versions a copy that recent holds.
    assert summary(find(daemon, "/etc/app.conf", "--since", "1d")) == app
    # Viewers may not: find is admin (SPEC §5).
    assert daemon.call("find", host="web1", pattern="*")["versions"]


def test_the_index_rebuilt_after_it_was_deleted_or_damaged_gives_the_same_answers(history):
    daemon, source, s, monthly, archive = history
    patterns = ["**", "*.conf", "/etc/**", "/swap"]
    before = {p: find(daemon, p) for p in patterns}
    space = daemon.bkctl_json("du", "web1", "--snapshots")
    index = daemon.workdir / "state/versions/web1.sqlite"
    assert index.exists()
    index.unlink()
    result = daemon.bkctl("--json", "find", "web1", "**")
    if result.returncode != 0:  # the rebuild may already be done on a fast machine
        error = json.loads(result.stderr)["error"]
        assert error["code"] == -32007 and error["data"]["rebuilding"] and "total" in error["data"], error
    assert {p: find(daemon, p) for p in patterns} == before
    assert wait_until(lambda: (r := daemon.bkctl("--json", "du", "web1", "--snapshots")).returncode == 0
                      and json.loads(r.stdout), 60, 0.2) == space
    assert "versions.rebuilt" in daemon.log()
    # verify checks the index against the manifests: clean, then an entry changed behind its back is found
    # (and the index rebuilt).
    checked = daemon.bkctl_json("verify", "web1", s[5])
    assert checked["ok"] and checked["index"] == {"checked": 1, "problems": []}, checked
    import sqlite3
    with sqlite3.connect(index) as db:
        db.execute("UPDATE entries SET sha256 = zeroblob(32) WHERE type = 'f' AND born = 1 "
                   "AND path = (SELECT id FROM paths WHERE path = CAST('etc/other.conf' AS BLOB))")
    damaged = daemon.bkctl("--json", "verify", "web1", s[5])
    assert damaged.returncode == 1
    assert {(m["path"], m["problem"]) for m in json.loads(damaged.stdout)["mismatches"]} == {
        ("etc/other.conf", "index: differs")}
    assert {p: find(daemon, p) for p in patterns} == before  # rebuilt
    daemon.stop()
    index.write_bytes(b"garbage" * 1000)
    for extra in (index.with_name("web1.sqlite-wal"), index.with_name("web1.sqlite-shm")):
        extra.unlink(missing_ok=True)
    daemon.start()
    assert {p: find(daemon, p) for p in patterns} == before


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="a loop-mounted filesystem needs root (CI runs as root)")


@pytest.fixture
def ext4(tmp_path):
    """A journaled ext4 filesystem of its own (a loop-mounted image): free space
    measured there is the backup root's alone."""
    image, mount = tmp_path / "fs.img", tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "96M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def age(host_dir, renames: dict[str, str]) -> None:
    """Give snapshots older names (their directories and records), as if they were taken then."""
    for old, new in renames.items():
        os.rename(host_dir / "hourly" / old, host_dir / "hourly" / new)
        for suffix in (".json", ".manifest", ".changes"):
            if (host_dir / "meta" / f"{old}{suffix}").exists():
                os.rename(host_dir / "meta" / f"{old}{suffix}", host_dir / "meta" / f"{new}{suffix}")


def free_bytes(path) -> int:
    os.sync()
    stat = os.statvfs(path)
    return stat.f_bfree * stat.f_frsize


def directory_bytes(tree) -> int:
    return sum(os.lstat(d).st_blocks * 512 for d, _, _ in os.walk(tree))


@ROOT_ONLY
def test_deleting_a_snapshot_frees_what_du_said_and_the_index_forgets_it(tmp_path, ext4, daemon_factory):
    source = make_tree(tmp_path / "src", 20)
    (source / "only-in-first.txt").write_text("first\n")
    daemon = daemon_factory([{"name": "web1", "source": str(source)}], backup_root=str(ext4 / "b"),
                            retention={"hourly_hours": 24, "daily_days": 30, "monthly_months": 12},
                            archive={"enabled": False}, monthly={"enabled": False}).start()
    first = daemon.run_snapshot()["hosts"][0]["snapshot"]
    (source / "only-in-first.txt").unlink()
    (source / "big.bin").write_bytes(os.urandom(8 << 20))
    second = daemon.run_snapshot()["hosts"][0]["snapshot"]
    (source / "big.bin").unlink()
    third = daemon.run_snapshot()["hosts"][0]["snapshot"]
    daemon.stop()
    # The first two as if taken three days ago, one hour apart: retention keeps the first of that day only.
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 3 * 86400))
    host = ext4 / "b/web1"
    age(host, {first: f"{day}_000000", second: f"{day}_010000"})
    first, second = f"{day}_000000", f"{day}_010000"
    daemon.start()

    def du() -> dict:
        return wait_until(lambda: (r := daemon.bkctl("--json", "du", "web1", "--snapshots")).returncode == 0
                          and json.loads(r.stdout)["hosts"]["web1"], 60, 0.2, what="du")

    before = du()
    freed = {c["name"]: c["freed_bytes"] for c in before["snapshots"]}
    assert [c["name"] for c in before["snapshots"]] == [first, second, third]
    assert (8 << 20) <= freed[second] < (8 << 20) + (1 << 20)  # the 8 MiB only it holds, its directories, meta/
    assert freed[first] < (1 << 20) and freed[third] < (1 << 20)
    assert before["unique_bytes"] > (8 << 20) and before["total_bytes"] > before["unique_bytes"]
    assert daemon.call("status")["hosts"]["web1"]["unique_bytes"] == before["unique_bytes"]
    assert f'bkd_host_unique_bytes{{host="web1"}} {before["unique_bytes"]}\n' in daemon.call("metrics")["text"]
    dry = daemon.bkctl_json("prune", "--dry-run")
    assert [d["snapshot"] for d in dry["plan"]["web1"] if d["action"] == "delete"] == [second]
    assert dry["frees"]["web1"] == freed[second]
    assert "would delete 1, freeing 8." in daemon.bkctl("prune", "--dry-run").stdout
    # --since: a version only the three-day-old snapshot holds is left out of the last day's.
    assert [v["first"] for v in find(daemon, "/only-in-first.txt")] == [first]
    assert find(daemon, "/only-in-first.txt", "--since", "1d") == []
    assert [v["last"] for v in find(daemon, "/big.bin")] == [second]

    # What the prune returns to the filesystem, once the trash is emptied, is what du said,
    # within the blocks of its directories (each copy has directories of its own).
    slack = directory_bytes(host / "hourly" / second)
    (host / ".trash").mkdir(mode=0o700, exist_ok=True)  # the prune's own directory: not what it frees
    was = free_bytes(ext4)
    assert daemon.bkctl("prune", "web1").returncode == 0
    wait_until(lambda: daemon.call("status")["deletion_queue"] == [], 30, what="the trash to empty")
    measured = free_bytes(ext4) - was
    assert abs(measured - freed[second]) <= slack, (measured, freed[second], slack)

    after = du()
    assert [c["name"] for c in after["snapshots"]] == [first, third]
    assert abs(before["unique_bytes"] - after["unique_bytes"] - freed[second]) <= slack
    assert find(daemon, "/big.bin") == []  # no copy holds it any more: forgotten
    assert [(v["first"], v["last"], v["count"]) for v in find(daemon, "/dir0/file0.txt")] == [(first, third, 2)]
    # A new snapshot after the prune is indexed on from the newest.
    (source / "new.txt").write_text("new\n")
    fourth = daemon.run_snapshot()["hosts"][0]["snapshot"]
    assert [(v["first"], v["count"]) for v in find(daemon, "/new.txt")] == [(fourth, 1)]
    assert [(v["first"], v["last"], v["count"]) for v in find(daemon, "/dir0/file0.txt")] == [(first, fourth, 3)]
