"""What changes a source, or a snapshot, while bkd works.

Processes that change a source as bkd takes snapshots of it, run as scripts
(one of them as another user); each stops once the file STOP exists:

    python changers.py churn ROOT STOP SEED [NAME...]
        change everything under ROOT at random, as fast as it can, leaving
        alone the entries of ROOT named NAME
    python changers.py swap HOME STASH STOP
        swap HOME/d and STASH/d (a directory and a symlink) atomically, again
        and again, and print how many times
    python changers.py versions DIR SCRATCH STOP LOG COUNT
        replace DIR/v0 … DIR/v{COUNT-1} by rename (written in SCRATCH, on
        the same filesystem), one new version at a time, each holding a
        counter; log each as "INDEX COUNTER BEFORE AFTER" (monotonic times
        just before and just after its rename) to LOG

And what a test does itself: flip a byte of a snapshot's file, set up a home
whose `d` the swapper swaps, read what a tree holds."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

RENAME_EXCHANGE = 2
VERSION_LINES = 64  # a version is this many lines: a torn one shows


def flip_byte(path: Path) -> None:
    """Flip the first byte, keeping size and mtime: rot that rsync's quick check cannot see."""
    st = path.stat()
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def tree_state(tree: Path) -> dict:
    """Type, mode, owner and content (or target) of every entry under tree."""
    found = {}
    for directory, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = Path(directory) / name
            st = path.lstat()
            what = os.readlink(path) if path.is_symlink() else None if path.is_dir() else path.read_bytes()
            found[str(path.relative_to(tree))] = (st.st_mode, st.st_uid, what)
    return found


def swapped_home(home: Path, stash: Path, secret: Path, user: int) -> tuple[dict, dict]:
    """A home of user's with a directory d (files and a subdirectory), a stash
    of theirs holding a symlink d to secret, a root-only directory (0700) with
    an `id_rsa`. Returns what home holds with d a directory and with d the
    symlink: the only two states a snapshot of it may show while `swap` runs."""
    secret.mkdir(mode=0o700)
    (secret / "id_rsa").write_text("SECRET key material\n")
    (home / "d" / "sub").mkdir(parents=True)
    stash.mkdir()
    for name, text in (("d/id_rsa", "decoy\n"), ("d/notes", "notes\n"), ("d/sub/deep", "deep\n"), ("other", "o\n")):
        (home / name).write_text(text)
    os.symlink(secret, stash / "d")
    for path in (home, *home.rglob("*"), stash, stash / "d"):
        os.lchown(path, user, user)
    as_directory = tree_state(home)
    as_symlink = {**{k: v for k, v in as_directory.items() if k != "d" and not k.startswith("d/")},
                  "d": tree_state(stash)["d"]}
    return as_directory, as_symlink


def version_body(index: int, counter: int) -> bytes:
    return f"v{index}={counter}\n".encode() * VERSION_LINES


def version_of(index: int, body: bytes) -> int | None:
    """The counter a whole version of v{index} holds, or None for anything else."""
    first = body.split(b"\n", 1)[0]
    prefix = f"v{index}=".encode()
    if not first.startswith(prefix) or not first[len(prefix):].isdigit():
        return None
    counter = int(first[len(prefix):])
    return counter if body == version_body(index, counter) else None


def churn(root: Path, stop: Path, seed: int, leave_alone: set[str]) -> None:
    """Contents, names, types, modes, owners, xattrs, ACLs and hard links, all
    at random; the sparse file root/sparse.img changes its mode, owner, xattrs
    and ACL now and then (never its data)."""
    rng = random.Random(seed)
    counter = 0

    def entries() -> list[Path]:
        found = []
        for directory, dirs, files in os.walk(root):
            if directory == str(root):
                dirs[:] = [name for name in dirs if name not in leave_alone]
                files = [name for name in files if name not in leave_alone]
            found += [Path(directory, name) for name in dirs + files]
        return found

    def files():
        return [p for p in entries() if p.is_file() and not p.is_symlink() and p.name != "sparse.img"]

    def modify(p): p.write_bytes(os.urandom(rng.randrange(0, 3000)))
    def append(p):
        with p.open("ab") as f:
            f.write(b"more\n")
    def delete(p): p.unlink()
    def rename(p): p.rename(p.with_name(f"renamed{counter}"))
    def chmod(p): os.chmod(p, rng.choice([0o600, 0o644, 0o640, 0o755, 0o4755]))
    def chown(p): os.chown(p, rng.choice([0, 1000, 1001]), rng.choice([0, 1000, 1002]))
    def xattr(p): os.setxattr(p, "user.churn", str(rng.randrange(3)).encode())
    def acl(p): subprocess.run(["setfacl", "-m", f"u:{rng.choice([1000, 1001])}:r", str(p)], check=False)
    def to_dir(p):
        p.unlink(); p.mkdir(); (p / "inside").write_bytes(os.urandom(100))
    def to_link(p):
        p.unlink(); p.symlink_to(rng.choice(["a", "../b", "/etc/hostname"]))
    def hardlink(p): os.link(p, p.with_name(f"link{counter}"))

    while not stop.exists():
        counter += 1
        try:
            candidates = files()
            if len(candidates) < 900:
                d = rng.choice([p for p in entries() if p.is_dir()] + [root])
                (d / f"new{counter}").write_bytes(os.urandom(rng.randrange(0, 3000)))
                continue
            p = rng.choice(candidates)
            op = rng.choice([modify, modify, append, delete, rename, chmod, chmod, chown,
                             xattr, acl, to_dir, to_link, hardlink])
            op(p)
            if rng.random() < 0.02:  # the sparse file changes its attributes only
                rng.choice([chmod, chown, xattr, acl])(root / "sparse.img")
            if rng.random() < 0.05:  # a directory becomes a file or a link
                d = rng.choice([e for e in entries() if e.is_dir() and not e.is_symlink()] or [None])
                if d is not None and d != root:
                    shutil.rmtree(d)
                    d.write_bytes(b"was a directory\n") if rng.random() < 0.5 else d.symlink_to("x")
        except OSError:
            pass  # raced with itself (a parent changed type): just go on
        time.sleep(0.001)


def swap(home: str, stash: str, stop: str) -> None:
    """The user's process: d is the directory, then the stash's symlink, then
    the directory again …, each swap one renameat2(RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    rng = random.Random(5)
    swaps = 0

    def exchange():
        if libc.renameat2(-100, os.fsencode(home + "/d"), -100, os.fsencode(stash + "/d"), RENAME_EXCHANGE) != 0:
            sys.exit(f"renameat2: {os.strerror(ctypes.get_errno())}")

    while not os.path.exists(stop):
        exchange()
        swaps += 1
        time.sleep(rng.random() * 0.02)
    if swaps % 2:  # leave d the directory
        exchange()
    print(swaps)


def versions(directory: Path, scratch: Path, stop: Path, log: Path, count: int) -> None:
    """Each new version gets an mtime of its own second (the counter's), so
    that rsync's quick check (size and mtime) always sees that it is new."""
    rng = random.Random(11)
    counters = [version_of(index, (directory / f"v{index}").read_bytes()) for index in range(count)]
    with log.open("w") as out:
        while not stop.exists():
            index = rng.randrange(count)
            counters[index] += 1
            new = scratch / f"v{index}"
            new.write_bytes(version_body(index, counters[index]))
            os.utime(new, (1_000_000_000 + counters[index],) * 2)
            before = time.monotonic()
            new.rename(directory / f"v{index}")
            out.write(f"{index} {counters[index]} {before} {time.monotonic()}\n")
            time.sleep(0.005)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "churn":
        churn(Path(args[0]), Path(args[1]), int(args[2]), set(args[3:]))
    elif command == "swap":
        swap(*args)
    elif command == "versions":
        versions(Path(args[0]), Path(args[1]), Path(args[2]), Path(args[3]), int(args[4]))
    else:
        sys.exit(f"changers.py: unknown command {command!r}")
