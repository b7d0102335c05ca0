"""Getting data back: hostile names round-trip, escapes are refused, rot is found, hooks."""

import json
import os
import subprocess
import time

import pytest
from bkctl.fmt import safe

from conftest import make_tree

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="ownership and ACLs need root (CI runs as root)")

HOSTILE = [
    b"new\nline", b"bad-\xff\xfe-utf8", b"-leading-dash", b"  spaces  around ", b"x" * 255,
    b"tab\there", b"quote'\"and$dollar", b"\xe2\x98\x83 snowman",
]


def build_hostile_tree(root: bytes) -> None:
    os.makedirs(root)
    for name in HOSTILE:
        with open(os.path.join(root, name), "wb") as f:
            f.write(b"content of " + name)
    deep = root
    while len(deep) - len(root) < 4000:  # a 4,000-byte relative path, 200 bytes a component
        deep = os.path.join(deep, b"d" * 200)
    os.makedirs(deep)
    with open(os.path.join(deep, b"leaf"), "wb") as f:
        f.write(b"deep")
    os.link(os.path.join(root, HOSTILE[0]), os.path.join(root, b"hardlink-to-newline"))
    with open(os.path.join(root, b"sparse"), "wb") as f:
        f.truncate(64 * 1024 * 1024)
        f.seek(32 * 1024 * 1024)
        f.write(b"middle")
    os.symlink(b"bad-\xff\xfe-utf8", os.path.join(root, b"link-to-bad"))
    os.setxattr(os.path.join(root, HOSTILE[1]), "user.note", b"\x00binary\xff")
    subprocess.run(["setfacl", "-m", "u:nobody:rw", os.fsdecode(os.path.join(root, HOSTILE[2]))], check=True)
    os.chmod(os.path.join(root, HOSTILE[3]), 0o640)
    os.utime(os.path.join(root, HOSTILE[4]), ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))


def describe(root: bytes) -> dict:
    """Names, contents, modes, times, link structure, xattrs and ACLs of a tree."""
    seen_inodes: dict[int, bytes] = {}
    result = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, root)
            st = os.lstat(full)
            entry = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
            if os.path.islink(full):
                entry["target"] = os.readlink(full)
            else:
                entry["xattrs"] = {k: os.getxattr(full, k) for k in os.listxattr(full)}
            if os.path.isfile(full) and not os.path.islink(full):
                entry["mtime_ns"] = st.st_mtime_ns
                with open(full, "rb") as f:
                    entry["content"] = f.read()
                entry["blocks_small"] = st.st_blocks * 512 < 1024 * 1024 if st.st_size > 1024 * 1024 else None
                if st.st_nlink > 1:
                    entry["linked_with"] = seen_inodes.setdefault(st.st_ino, relative)
            result[relative] = entry
    return result


@ROOT_ONLY
def test_hostile_names_and_metadata_round_trip_through_backup_ls_and_restore(tmp_path, short_tmp, daemon_factory):
    # Short roots: rsync handles paths up to PATH_MAX (4096 bytes) *including* the
    # directory they live in, and the deep path alone is over 4,000 bytes.
    source = os.fsencode(short_tmp / "src")
    build_hostile_tree(source)
    daemon = daemon_factory([{"name": "web1", "source": os.fsdecode(source)}],
                            backup_root=str(short_tmp / "b")).start()
    job = daemon.run_snapshot()
    assert job["status"] == "ok", job
    snapshot = job["hosts"][0]["snapshot"]

    listed = json.loads(daemon.bkctl("--json", "ls", "web1").stdout)["entries"]
    names = {os.fsencode(e["name"]) for e in listed}
    assert set(HOSTILE) <= names  # every hostile name, exactly, in a reversible encoding
    link = next(e for e in listed if e["name"] == "link-to-bad")
    assert (link["type"], os.fsencode(link["target"])) == ("symlink", b"bad-\xff\xfe-utf8")
    history = daemon.bkctl_json("ls", "--history", "web1", os.fsdecode(b"/" + HOSTILE[1]))["versions"]
    assert [(h["first"], h["last"], h["count"]) for h in history] == [(snapshot, snapshot, 1)]
    human = daemon.bkctl("ls", "web1", snapshot, "/")
    assert human.returncode == 0 and "new\\nline" in human.stdout and "bad-\\xff\\xfe-utf8" in human.stdout

    dest = short_tmp / "r"
    result = daemon.bkctl("restore", "web1", snapshot, "/", "--to", str(dest))
    assert result.returncode == 0, result.stdout + result.stderr
    assert describe(os.fsencode(dest)) == describe(source)

    # One non-UTF-8 name alone, through its escaped form, keeps its relative path.
    single = tmp_path / "single"
    one = daemon.bkctl("restore", "web1", "latest", os.fsdecode(b"/" + HOSTILE[1]), "--to", str(single))
    assert one.returncode == 0, one.stdout + one.stderr
    assert os.listdir(os.fsencode(single)) == [HOSTILE[1]]

    again = daemon.bkctl("restore", "web1", snapshot, os.fsdecode(b"/" + HOSTILE[1]), "--to", str(single))
    assert again.returncode == 1 and "exists; use --overwrite" in again.stderr
    assert daemon.bkctl("restore", "web1", snapshot, os.fsdecode(b"/" + HOSTILE[1]), "--to", str(single),
                        "--overwrite").returncode == 0

    dry = daemon.bkctl("restore", "web1", snapshot, "/", "--to", str(tmp_path / "dry"), "--dry-run")
    assert dry.returncode == 0 and "would write -leading-dash" in dry.stdout
    assert not (tmp_path / "dry").exists()
    # Issue 18, item 12: with --json the job's final record (the last line) lists every path, exactly.
    scripted = daemon.bkctl("--json", "restore", "web1", snapshot, "/", "--to", str(tmp_path / "dry"), "--dry-run")
    assert scripted.returncode == 0, scripted.stderr
    listing = json.loads(scripted.stdout.splitlines()[-1])["job"]["hosts"][0]["listing"]
    shown = [line.removeprefix("would write ") for line in dry.stdout.splitlines() if line.startswith("would write")]
    assert [safe(name) for name in listing] == shown and len(shown) > 3 and "-leading-dash" in listing
    assert not (tmp_path / "dry").exists()


@ROOT_ONLY
def test_any_name_restores_alone_and_an_existing_dest_keeps_its_own_attributes(tmp_path, daemon_factory):
    """rsync escapes names for a remote shell (a backslash before a space or a
    quote, `./` before a leading dash); the sender must get them as they are:
    restoring `/My Docs/...` alone failed, and a top-level `-dash` made an
    existing DEST take the snapshot root's owner and mode."""
    source = tmp_path / "src"
    (source / "My Docs" / "sub").mkdir(parents=True)
    (source / "My Docs" / "sub" / "report.txt").write_text("report\n")
    (source / "-dash" / "sub").mkdir(parents=True)
    (source / "-dash" / "sub" / "f").write_text("f\n")
    for name in HOSTILE:
        with open(os.path.join(os.fsencode(source), name), "wb") as f:
            f.write(b"content of " + name)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    assert daemon.run_snapshot()["status"] == "ok"

    for index, name in enumerate([b"My Docs/sub/report.txt", b"-dash", *HOSTILE]):
        dest = tmp_path / f"one-{index}"
        result = daemon.bkctl("restore", "web1", "latest", os.fsdecode(b"/" + name), "--to", str(dest))
        assert result.returncode == 0, (name, result.stdout + result.stderr)
        restored, original = os.path.join(os.fsencode(dest), name), os.path.join(os.fsencode(source), name)
        if os.path.isdir(original):
            assert describe(restored) == describe(original) != {}
        else:
            with open(restored, "rb") as got, open(original, "rb") as want:
                assert got.read() == want.read()
            assert os.lstat(restored).st_mode == os.lstat(original).st_mode

    for what in ("/", "/-dash"):
        dest = tmp_path / f"existing{what.replace('/', '-')}"
        dest.mkdir()
        os.chown(dest, 1000, 1000)
        dest.chmod(0o700)
        (dest / "mine").write_text("kept\n")
        result = daemon.bkctl("restore", "web1", "latest", what, "--to", str(dest), "--overwrite")
        assert result.returncode == 0, result.stdout + result.stderr
        st = dest.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o700), what
        assert (dest / "-dash" / "sub" / "f").read_text() == "f\n" and (dest / "mine").read_text() == "kept\n"


@ROOT_ONLY
def test_a_sparse_file_stays_sparse_in_every_snapshot(tmp_path, daemon_factory):
    """A 2 GiB file holding a byte (a lastlog with large uids) must not take
    2 GiB in any snapshot: not where its content changed, and not where only
    its mode, owner or xattrs did (issue 17 item 4: rsync's local copy of the
    previous snapshot's file, which gives it an inode of its own, wrote
    every byte of the holes)."""
    source = tmp_path / "src"
    source.mkdir()
    lastlog = source / "lastlog"
    with open(lastlog, "wb") as f:
        f.truncate(2 << 30)
        f.seek(1 << 30)
        f.write(b"x")
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    hourly = daemon.workdir / "backup/web1/hourly"
    snapshots = [daemon.run_snapshot()["hosts"][0]["snapshot"]]
    changes = [lambda: lastlog.chmod(0o600), lambda: os.chown(lastlog, 1234, 5678),
               lambda: os.setxattr(lastlog, "user.note", b"attribute only")]
    for number, change in enumerate(changes):
        change()
        job = daemon.run_snapshot()
        assert job["status"] == "ok", job
        snapshots.append(job["hosts"][0]["snapshot"])
        assert job["hosts"][0]["stats"]["transferred_bytes"] == 0  # no data sent, none written
        new, old = hourly / snapshots[-1] / "lastlog", hourly / snapshots[-2] / "lastlog"
        assert new.stat().st_ino != old.stat().st_ino  # its own inode: the older snapshot keeps its metadata
    with open(lastlog, "r+b") as f:  # a content change writes a copy of its own too
        f.seek(1536 << 20)
        f.write(b"another")
    assert daemon.run_snapshot()["status"] == "ok"
    for snapshot in hourly.iterdir():
        st = (snapshot / "lastlog").stat()
        assert st.st_size == 2 << 30 and st.st_blocks * 512 < (1 << 20), (snapshot.name, st.st_blocks)
    last = hourly / sorted(p.name for p in hourly.iterdir())[-1] / "lastlog"
    assert (last.stat().st_mode & 0o777, last.stat().st_uid, os.getxattr(last, "user.note")) == (
        0o600, 1234, b"attribute only")
    for snapshot in (snapshots[-1], "latest"):  # the private copy's checksum, and the new content's (2 GiB each)
        assert daemon.bkctl("verify", "web1", snapshot).returncode == 0


def test_browse_and_restore_never_leave_the_snapshot(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "source", 3)
    (source / "escape").symlink_to("/etc")
    (source / "dir0" / "up").symlink_to("../../..")
    outside = tmp_path / "outside"
    outside.mkdir()
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    snapshot = daemon.run_snapshot()["hosts"][0]["snapshot"]

    for path in ["/escape", "/escape/", "/escape/passwd", "/dir0/up/etc", "/../../etc", "dir0/../../x"]:
        listing = daemon.bkctl("ls", "web1", snapshot, path)
        assert listing.returncode == 1, path
        assert "symlink" in listing.stderr or "'..' is not allowed" in listing.stderr, listing.stderr
    for path in ["/escape/passwd", "/dir0/up/etc/passwd", "../outside"]:
        dest = tmp_path / "dest"
        result = daemon.bkctl("restore", "web1", snapshot, path, "--to", str(dest))
        assert result.returncode == 1, path
        assert not dest.exists()

    # The symlink itself can be restored — as a symlink, not followed.
    dest = tmp_path / "dest-link"
    assert daemon.bkctl("restore", "web1", snapshot, "/escape", "--to", str(dest)).returncode == 0
    assert os.readlink(dest / "escape") == "/etc" and list(dest.iterdir()) == [dest / "escape"]
    whole = tmp_path / "dest-all"
    assert daemon.bkctl("restore", "web1", snapshot, "/", "--to", str(whole)).returncode == 0
    assert os.readlink(whole / "dir0" / "up") == "../../.."
    assert list(outside.iterdir()) == []


def test_bit_rot_in_a_snapshot_and_an_archive_is_reported_exactly(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "source", 20)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}], monthly={"enabled": False}).start()
    job = daemon.wait_job(daemon.call("job.start", kind="all")["job_id"])  # a snapshot and its archive
    snapshot = job["hosts"][0]["snapshot"]
    clean = daemon.bkctl("verify", "web1")
    assert clean.returncode == 0 and "web1: ok" in clean.stdout

    stored = daemon.workdir / "backup/web1/hourly" / snapshot / "dir2/file6.txt"
    archive = daemon.workdir / "backup/web1/archives" / job["hosts"][0]["stats"]["archive"]
    for path in (stored, archive):
        with open(path, "r+b") as f:  # in place, as rot would: same inode, same size
            f.seek(5)
            byte = f.read(1)
            f.seek(5)
            f.write(bytes([byte[0] ^ 0x01]))

    result = daemon.bkctl("--json", "verify", "web1")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert sorted((m["path"], m["problem"]) for m in report["mismatches"]) == [
        ("archives/" + archive.name, "changed"), ("dir2/file6.txt", "changed")]
    human = daemon.bkctl("verify", "web1", snapshot)
    assert human.returncode == 1 and "2 mismatch(es)" in human.stdout


def test_an_incremental_snapshot_hashes_only_what_changed(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "source", 200)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    first = daemon.run_snapshot()["hosts"][0]["stats"]
    assert first["hashed_files"] == 200
    for index in (3, 77):
        (source / f"dir{index % 4}" / f"file{index}.txt").write_text("changed\n")
    (source / "dir1" / "file1.txt").unlink()
    (source / "dir0" / "file0.txt").chmod(0o600)  # metadata only: same content, no re-hash
    second = daemon.run_snapshot()["hosts"][0]["stats"]
    assert second["hashed_files"] == 2 and second["changed_files"] == 2
    assert daemon.bkctl("verify", "web1", "--all").returncode == 0


def test_a_failing_pre_hook_keeps_the_previous_snapshot_and_says_why(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "source", 3)
    marker = tmp_path / "post-saw"
    host = {"name": "web1", "source": str(source),
            "post": f'echo "$BKD_STATUS $BKD_SNAPSHOT" > {marker}'}
    daemon = daemon_factory([host]).start()
    good = daemon.run_snapshot()["hosts"][0]["snapshot"]
    assert marker.read_text().split() == ["ok", good]

    daemon.config["host"][0]["pre"] = "echo dumping the database; echo 'pg_dump: connection refused' >&2; exit 3"
    daemon.write_config()
    daemon.bkctl("reload")
    job = daemon.run_snapshot()
    assert job["status"] == "failed"
    detail = daemon.bkctl("job", str(job["job_id"]))
    assert detail.returncode == 1
    assert "pre hook exited with code 3: pg_dump: connection refused" in detail.stdout
    assert os.readlink(daemon.workdir / "backup/web1/latest") == f"hourly/{good}"
    assert marker.read_text().split() == ["failed"]
    assert "dumping the database" in daemon.log()  # hook output is in the run's log

    daemon.config["host"][0].update(pre="sleep 30", hook_timeout="1s")
    daemon.write_config()
    daemon.bkctl("reload")
    timed_out = daemon.run_snapshot()
    assert timed_out["status"] == "failed" and "pre hook timed out after 1s" in timed_out["hosts"][0]["error"]


def test_the_sample_pass_finds_rot_least_recently_verified_first_and_raises_an_alert(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "source", 10)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}],
                            verify={"sample_percent": 30}).start()
    snapshot = daemon.run_snapshot()["hosts"][0]["snapshot"]
    stored = daemon.workdir / "backup/web1/hourly" / snapshot / "dir1/file5.txt"
    with open(stored, "r+b") as f:
        f.write(b"X")

    seen = []
    for _ in range(4):  # 3 files a pass, never-verified first: all 10 within four passes
        answer = daemon.bkctl("--json", "verify", "web1", "--sample")
        result = json.loads(answer.stdout)
        assert answer.returncode == (0 if result["ok"] else 1)
        seen.append(result["checked"])
        if not result["ok"]:
            break
    assert result["mismatches"] == [{"path": "dir1/file5.txt", "problem": "changed",
                                     "expected": result["mismatches"][0]["expected"],
                                     "actual": result["mismatches"][0]["actual"]}]
    assert set(seen) == {3}
    alerts = daemon.bkctl_json("alerts")["alerts"]
    assert [(a["host"], a["kind"], a["subject"], a["state"]) for a in alerts] == [
        ("web1", "integrity", snapshot, "open")]
    # Every role reads alerts: the message counts files and names the snapshot, never a path.
    assert alerts[0]["message"].startswith(f"1 file(s) of snapshot {snapshot} do not match")
    assert "file5" not in json.dumps(alerts)
    assert daemon.bkctl("alerts").stdout.count("integrity") == 1
    assert daemon.bkctl("alerts", "ack", str(alerts[0]["id"]), "--note", "disk replaced").returncode == 0
    (acked,) = daemon.bkctl_json("alerts")["alerts"]  # still current (the file is still bad), now acknowledged
    assert (acked["state"], acked["acked_by"], acked["note"]) == ("acked", "root", "disk replaced")
    assert daemon.bkctl("alerts", "ack", str(alerts[0]["id"])).returncode == 1  # nothing open to acknowledge


def test_a_failed_run_raises_an_alert(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(tmp_path / "missing")}]).start()
    daemon.run_snapshot()
    (alert,) = daemon.bkctl_json("alerts")["alerts"]
    # Every role reads alerts: the category and exit code, not rsync's words (they quote paths).
    assert alert["kind"] == "run_failed"
    assert alert["message"] == "snapshot run failed: snapshot: rsync exited with code 23 (partial transfer due to error)"


def test_a_host_whose_last_snapshot_is_too_old_raises_one_stale_alert(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 2)),
                              "schedule": {"snapshot_every": "1s", "stale_factor": 2}}]).start()
    daemon.run_snapshot()
    from conftest import wait_until
    wait_until(lambda: daemon.bkctl_json("alerts")["alerts"], 15, what="the stale alert")
    time.sleep(2)  # still stale: still one alert
    (alert,) = daemon.bkctl_json("alerts")["alerts"]
    assert alert["kind"] == "stale" and alert["host"] == "web1" and "more than 2 x 1s" in alert["message"]
    assert 'bkd_stale{host="web1"} 1' in daemon.call("metrics")["text"]


def test_the_sample_pass_is_not_skipped_by_a_daemon_restarted_more_often_than_it_is_due(tmp_path, daemon_factory):
    started = time.monotonic()
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "source", 10))}],
                            verify={"every": "3s"}).start()
    daemon.run_snapshot()
    for _ in range(6):  # a restart every second or so: never three seconds in a row
        time.sleep(1)
        daemon.stop()
        daemon.start()
    elapsed = time.monotonic() - started
    passes = [line for line in daemon.log().splitlines() if '"verify.sampled"' in line]
    # The first start samples at once (no pass recorded), then once per 3 s across the restarts
    # (a loaded machine restarts more slowly: the bound is the time that really went by).
    assert 2 <= len(passes) <= 2 + int(elapsed // 3), (elapsed, passes)


def test_a_restore_path_holding_wildcard_characters_means_itself(tmp_path, daemon_factory):
    """SPEC §7: a `[`, `*`, `?` or `\\` in a name means itself, in a restore's
    PATH too: each is restored alone, never a sibling it would match as a pattern."""
    source = tmp_path / "src"
    source.mkdir()
    wild = ["a[1]", "*", "?", "a\\1", "b\\*"]
    for name in [*wild, "a1", "x", "y", "b*"]:
        (source / name).write_text(f"content of {name}\n")
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    assert daemon.run_snapshot()["status"] == "ok"
    for index, name in enumerate(wild):
        dest = tmp_path / f"dest-{index}"
        result = daemon.bkctl("restore", "web1", "latest", f"/{name}", "--to", str(dest))
        assert result.returncode == 0, (name, result.stdout + result.stderr)
        assert os.listdir(dest) == [name]
        assert (dest / name).read_text() == f"content of {name}\n"
