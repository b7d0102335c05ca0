"""A user flips a directory of their home between a real directory and a
symlink to a root-only directory while bkd takes snapshot after snapshot
(issue 17 item 5): no snapshot holds the outside file, and each one is a
state the source really had."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a second user and a root-only directory need root")

USER = 4321
RUNS = 30

# The user's process: swap home/d and stash/d (a directory and a symlink) atomically, again and again.
FLIPPER = textwrap.dedent("""\
    import ctypes, os, random, sys, time
    home, stash, stop = sys.argv[1:4]
    libc = ctypes.CDLL(None, use_errno=True)
    rng = random.Random(5)
    flips = 0
    while not os.path.exists(stop):
        if libc.renameat2(-100, os.fsencode(home + "/d"), -100, os.fsencode(stash + "/d"), 2) != 0:
            sys.exit(f"renameat2: {os.strerror(ctypes.get_errno())}")
        flips += 1
        time.sleep(rng.random() * 0.02)
    if flips % 2:  # leave d a directory
        libc.renameat2(-100, os.fsencode(home + "/d"), -100, os.fsencode(stash + "/d"), 2)
    print(flips)
""")


def state(tree: Path) -> dict:
    """Type, mode, owner and content (or target) of every entry."""
    found = {}
    for directory, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = Path(directory) / name
            st = path.lstat()
            what = os.readlink(path) if path.is_symlink() else None if path.is_dir() else path.read_bytes()
            found[str(path.relative_to(tree))] = (st.st_mode, st.st_uid, what)
    return found


def test_a_directory_flipping_to_a_symlink_during_runs_never_brings_outside_files_in(short_tmp, daemon_factory):
    short_tmp.chmod(0o755)  # the user reaches their home; the secret stays root's
    secret = short_tmp / "secret"
    secret.mkdir(mode=0o700)
    (secret / "id_rsa").write_text("SECRET key material\n")
    home, stash = short_tmp / "home", short_tmp / "stash"
    (home / "d" / "sub").mkdir(parents=True)
    stash.mkdir()
    for name, text in (("d/id_rsa", "decoy\n"), ("d/notes", "notes\n"), ("d/sub/deep", "deep\n"), ("other", "o\n")):
        (home / name).write_text(text)
    os.symlink(secret, stash / "d")
    for path in (home, *home.rglob("*"), stash):
        os.lchown(path, USER, USER)
    os.lchown(stash / "d", USER, USER)
    as_directory = state(home)
    stash_state = state(stash)
    as_symlink = {**{k: v for k, v in as_directory.items() if k != "d" and not k.startswith("d/")},
                  "d": stash_state["d"]}

    daemon = daemon_factory([{"name": "web1", "source": str(home)}], archive={"enabled": False},
                            monthly={"enabled": False}).start()
    hourly = daemon.workdir / "backup" / "web1" / "hourly"
    stop = short_tmp / "stop"
    flipper = subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
                                sys.executable, "-c", FLIPPER, str(home), str(stash), str(stop)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    statuses: dict[str, int] = {}
    try:
        for _ in range(RUNS):
            job = daemon.run_snapshot("web1")
            host = job["hosts"][0]
            statuses[host["status"]] = statuses.get(host["status"], 0) + 1
            if host["status"] == "failed":
                # rsync 3.5 refuses a symlink owned by another user in a path it
                # resolves (exit 23): the run fails and leaves nothing behind.
                assert "exited with code 23" in host["error"], host
                continue
            assert host["status"] in ("ok", "warning"), host
            taken = state(hourly / host["snapshot"])
            assert taken in (as_directory, as_symlink), (host["snapshot"], taken)
    finally:
        stop.touch()
        out, err = flipper.communicate(timeout=30)
    assert flipper.returncode == 0 and int(out) > RUNS, err
    assert statuses.get("ok", 0) + statuses.get("warning", 0) >= 5, statuses
    for path in hourly.rglob("*"):
        assert not (path.is_file() and not path.is_symlink() and b"SECRET" in path.read_bytes()), path
    print(f"{RUNS} runs: {statuses}")
