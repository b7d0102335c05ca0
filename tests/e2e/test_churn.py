"""Snapshot after snapshot of a source that never holds still (issue 17):

- every complete snapshot stays exactly as it was when it completed (SPEC
  §7), but for the bytes this test flips in it, and every manifest is
  exactly true (SPEC §8);
- damage heals forward (SPEC §7): a byte flipped in the newest snapshot
  (size and mtime kept) is found by `verify`, the next snapshot holds the
  source's bytes there in a fresh inode, and the `integrity` alert names
  the older snapshots sharing the damaged copy until they are pruned;
- a sparse file whose mode, owner, xattrs and ACL change stays sparse in
  every snapshot (SPEC §7);
- each snapshot is a state the source really had: `home/d`, which its user
  swaps between a directory and a symlink to a root-only directory, is the
  directory as it was or the symlink, never the root-only directory's files
  nor a mix; each version file holds, whole, a version that was there while
  the snapshot was taken."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from changers import flip_byte, swapped_home, version_body, version_of, tree_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown and another user need root (CI runs as root)")

CHANGERS = Path(__file__).with_name("changers.py")
SNAPSHOTS = 40
SPARSE = 64 << 20
USER = 4321  # the owner of home/, who swaps home/d
VERSIONS = 8
FLIP_EVERY = 8  # a byte is flipped in snapshot 8, 16, 24, 32 …
FLIPS = (SNAPSHOTS - 1) // FLIP_EVERY  # … in stable/s0, s1, s2, s3: files only this test changes
REWRITE_BEFORE = 3  # s1, s2, s3 change in the source this many snapshots before their flip
STALL_S = 30  # rsync.timeout of this test's daemon (see the test)
LEFT_ALONE = ("stable", "versions", "home")  # what the churner never touches


def make_source(root: Path) -> None:
    for index in range(1000):
        path = root / f"d{index % 10}" / f"s{index % 7}" / f"f{index}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(index % 3000))
    with open(root / "sparse.img", "wb") as f:  # a byte in 64 MiB of holes
        f.truncate(SPARSE)
        f.seek(SPARSE // 2)
        f.write(b"x")
    (root / "stable").mkdir()
    for index in range(FLIPS):
        (root / "stable" / f"s{index}").write_bytes(os.urandom(1000 + index))
    (root / "versions").mkdir()
    for index in range(VERSIONS):
        (root / "versions" / f"v{index}").write_bytes(version_body(index, 0))
        os.utime(root / "versions" / f"v{index}", (1_000_000_000,) * 2)


class Capture:
    """Everything a snapshot's entries carry that must never change, per
    path: inode, type and mode, owner, group, mtime, size, content hash,
    xattrs (the ACL is one). Link counts and ctimes change by design."""

    INODE, CONTENT = 0, 6

    def __init__(self):
        self.hashes: dict[tuple[int, int, int], str] = {}  # an inode's content can't change without its ctime

    def __call__(self, tree: Path) -> dict:
        result = {}
        for directory, dirs, files, dir_fd in os.fwalk(tree):
            for name in dirs + files:
                path = Path(directory) / name
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                xattrs = {}
                if not path.is_symlink():
                    xattrs = {key: os.getxattr(path, key) for key in os.listxattr(path)}
                content = None
                if path.is_file() and not path.is_symlink():
                    key = (st.st_dev, st.st_ino, st.st_ctime_ns)
                    if key not in self.hashes:
                        self.hashes[key] = hashlib.sha256(path.read_bytes()).hexdigest()
                    content = self.hashes[key]
                elif path.is_symlink():
                    content = os.readlink(path)
                result[str(path.relative_to(tree))] = (
                    st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, content, xattrs)
        return result


def _integrity(daemon, everything: bool = False) -> list[dict]:
    alerts = daemon.bkctl_json("alerts", *(["--all"] if everything else []))["alerts"]
    return [a for a in alerts if a["kind"] == "integrity" and a.get("subject") != "audit log"]


def _alert_message(subject: str, holders: list[str]) -> str:
    """What the integrity alert of a damaged copy says: every snapshot holding it but its subject."""
    others = [name for name in holders if name != subject]
    text = f"1 file(s) of snapshot {subject} do not match its manifest (bkctl verify web1 {subject})"
    if not others:
        return text
    if len(others) <= 6:
        return f"{text}; the damaged copies are also in {len(others)} other snapshot(s): {', '.join(others)}"
    return f"{text}; the damaged copies are also in {len(others)} other snapshots, {others[0]} … {others[-1]}"


def _versions_held(tree: Path) -> list[int | None]:
    return [version_of(index, (tree / "versions" / f"v{index}").read_bytes()) for index in range(VERSIONS)]


def _there_during(log: Path) -> dict[tuple[int, int], tuple[float, float]]:
    """(file, counter) → from when to when at most that version was in the source."""
    renames: dict[int, list[tuple[int, float, float]]] = {index: [(0, float("-inf"), float("-inf"))]
                                                         for index in range(VERSIONS)}
    for line in log.read_text().splitlines():
        index, counter, before, after = line.split()
        renames[int(index)].append((int(counter), float(before), float(after)))
    spans = {}
    for index, written in renames.items():
        for (counter, before, _), (following, _, replaced) in zip(written, written[1:] + [(None, 0, float("inf"))]):
            assert following in (None, counter + 1), (index, counter, following)
            spans[index, counter] = (before, replaced)
    return spans


@pytest.mark.timeout(900)  # about 2.5 minutes on 2 busy cores: the suite's 300 s is too close
def test_snapshots_of_a_churning_source_are_states_it_had_never_change_and_heal(short_tmp, daemon_factory):
    short_tmp.chmod(0o755)  # the user reaches their home; the secret stays root's
    source = short_tmp / "src"
    make_source(source)
    as_directory, as_symlink = swapped_home(source / "home", short_tmp / "stash", short_tmp / "secret", USER)
    (short_tmp / "scratch").mkdir()
    # rsync 3.5.0 can deadlock (all three processes in poll) in the one pass that follows a source moved
    # under the compare: bkd's watchdog ends it after rsync.timeout, here 30 s so that a run ends within
    # the 120 s this test waits for one (the default, 5 minutes, is for real hosts).
    daemon = daemon_factory([{"name": "web1", "source": str(source)}], rsync={"timeout": f"{STALL_S}s"},
                            archive={"enabled": False}, monthly={"enabled": False}).start()
    hourly = daemon.workdir / "backup" / "web1" / "hourly"
    stop = short_tmp / "stop-changing"
    version_log = short_tmp / "versions.log"
    churner = subprocess.Popen([sys.executable, CHANGERS, "churn", source, stop, "7", *LEFT_ALONE])
    writer = subprocess.Popen([sys.executable, CHANGERS, "versions", source / "versions", short_tmp / "scratch",
                               stop, version_log, str(VERSIONS)])
    swapper = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", sys.executable,
                                CHANGERS, "swap", source / "home", short_tmp / "stash", stop],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    capture = Capture()
    captured: dict[str, dict] = {}  # oldest first, as each snapshot completed (and as this test flipped it)
    taken_during: dict[str, tuple[float, float]] = {}
    versions_held: dict[str, list[int | None]] = {}
    homes: dict[str, int] = {}  # how often d was taken as which
    damaged: dict[str, tuple[str, list[str]]] = {}  # flipped snapshot → the path, the snapshots sharing that copy
    healing: dict[str, tuple[int, bytes]] = {}  # path → damaged inode, the source's bytes: for the next snapshot
    statuses: dict[str, int] = {}
    started = time.monotonic()
    try:
        while len(captured) < SNAPSHOTS:
            upcoming, due = divmod(len(captured) + REWRITE_BEFORE, FLIP_EVERY)
            if due == 0 and 1 < upcoming <= FLIPS:
                # The file of that flip changes: its copy starts in the next snapshot.
                (source / "stable" / f"s{upcoming - 1}").write_bytes(os.urandom(2000))
            begun = time.monotonic()
            result = daemon.bkctl("--json", "run", "web1", "--wait", timeout=120)
            ended = time.monotonic()
            job = json.loads(result.stdout.splitlines()[-1])["job"]  # the job's final record
            host = job["hosts"][0]
            statuses[host["status"]] = statuses.get(host["status"], 0) + 1
            if host["status"] not in ("ok", "warning"):
                # A source changing this fast can make rsync fail outright
                # (a file turned into a symlink or a directory while rsync sent
                # it; most often d swapped within rsync's one pass, whose
                # symlink rsync 3.5 will not follow); such a run leaves nothing
                # behind. Here one run in six to one in three: allow them, within bounds.
                # Or rsync deadlocked and was stopped (rsync's own --timeout, exit 30, or bkd's watchdog).
                assert host["status"] == "failed" and any(
                    said in host["error"] for said in ("exited with code 23", "exited with code 30", "rsync hung")
                ), host
                assert statuses["failed"] <= SNAPSHOTS, host
                continue
            name = host["snapshot"]
            taken_during[name] = (begun, ended)
            captured[name] = state = capture(hourly / name)

            # Healed: the source's bytes where the previous snapshot's copy was damaged, in an inode of their own.
            for path, (bad_inode, good) in healing.items():
                assert state[path][Capture.CONTENT] == hashlib.sha256(good).hexdigest(), (name, path)
                assert state[path][Capture.INODE] != bad_inode, (name, path)
                assert state[path][4] == (source / path).stat().st_mtime_ns, (name, path)
            assert host["stats"].get("refetched_files") == (len(healing) or None), (name, host["stats"])
            healing = {}

            sparse = (hourly / name / "sparse.img").stat()  # SPEC §7: also after an attribute-only change
            assert sparse.st_size == SPARSE and sparse.st_blocks * 512 < (1 << 20), (name, sparse.st_blocks)
            home = tree_state(hourly / name / "home")
            assert home in (as_directory, as_symlink), (name, home)  # never the secret, never a mix
            d_was = "a directory" if home == as_directory else "the symlink"
            homes[d_was] = homes.get(d_was, 0) + 1
            versions_held[name] = _versions_held(hourly / name)
            for earlier, then in captured.items():
                assert capture(hourly / earlier) == then, f"{earlier} changed after it completed (now {name})"
            latest = daemon.bkctl("verify", "web1")
            assert latest.returncode == 0, (name, latest.stdout[-2000:])

            if len(captured) % FLIP_EVERY == 0 and len(captured) < SNAPSHOTS:
                path = f"stable/s{len(captured) // FLIP_EVERY - 1}"
                inode = state[path][Capture.INODE]
                flip_byte(hourly / name / path)
                # The flip is the one change to complete snapshots this test makes: in each holding that inode.
                holders = [s for s, then in captured.items() if then.get(path, [None])[Capture.INODE] == inode]
                assert holders[-1] == name and len(holders) > 1, holders
                flipped = hashlib.sha256((hourly / name / path).read_bytes()).hexdigest()
                for holder in holders:
                    entry = captured[holder][path]
                    captured[holder][path] = (*entry[:Capture.CONTENT], flipped, *entry[Capture.CONTENT + 1:])
                found = daemon.bkctl("--json", "verify", "web1")
                assert found.returncode == 1, found.stderr
                assert [(m["snapshot"], m["path"], m["problem"]) for m in json.loads(found.stdout)["mismatches"]
                        ] == [(name, path, "changed")]
                damaged[name] = (path, holders)
                healing[path] = (inode, (source / path).read_bytes())
                alerts = _integrity(daemon)
                assert {a["subject"]: a["message"] for a in alerts} == {
                    subject: _alert_message(subject, sharing) for subject, (_, sharing) in damaged.items()}
                assert "stable/" not in json.dumps(alerts)  # every role reads alerts: no file names
    finally:
        stop.touch()
        churner.wait(10)
        writer.wait(10)
        swaps, why = swapper.communicate(timeout=30)
    assert churner.returncode == 0 and writer.returncode == 0
    assert swapper.returncode == 0 and int(swaps) > SNAPSHOTS, why

    # Each version file held a whole version that the source had while that snapshot was taken.
    there = _there_during(version_log)
    for name, held in versions_held.items():
        begun, ended = taken_during[name]
        for index, counter in enumerate(held):
            assert counter is not None, f"{name}: versions/v{index} is not a version the source had"
            since, until = there[index, counter]
            assert since <= ended and until >= begun, f"{name}: versions/v{index} held {counter}, gone before"

    assert sorted(captured) == sorted(p.name for p in hourly.iterdir())
    every = daemon.bkctl("--json", "verify", "web1", "--all", timeout=300)
    assert every.returncode == 1, every.stderr
    report = json.loads(every.stdout)
    assert sorted(report["snapshots"]) == sorted(captured)
    assert sorted((m["snapshot"], m["path"], m["problem"]) for m in report["mismatches"]) == sorted(
        (holder, path, "changed") for path, holders in damaged.values() for holder in holders)
    assert {a["subject"]: a["message"] for a in _integrity(daemon)} == {
        subject: _alert_message(subject, sharing) for subject, (_, sharing) in damaged.items()}

    # The older snapshots sharing the damaged copies age out: every alert resolves, nothing is left to heal.
    daemon.config["retention"] = {"hourly_hours": 0, "daily_days": 0, "monthly_months": 0}
    daemon.write_config()
    assert daemon.bkctl("reload").returncode == 0
    newest = list(captured)[-1]
    plan = daemon.bkctl_json("prune", "web1")["plan"]["web1"]
    assert sorted(d["snapshot"] for d in plan if d["action"] == "delete") == sorted(set(captured) - {newest})
    assert _integrity(daemon) == []
    assert sorted(a["subject"] for a in _integrity(daemon, everything=True) if a["state"] == "resolved") == sorted(
        damaged)
    assert not (daemon.workdir / "backup/web1/meta/damage.json").exists()
    assert capture(hourly / newest) == captured[newest]
    assert daemon.bkctl("verify", "web1", "--all").returncode == 0
    print(f"{SNAPSHOTS} snapshots in {time.monotonic() - started:.0f} s, statuses {statuses}, {homes}, "
          f"{len(damaged)} copies damaged and healed, {swaps.strip()} swaps")
