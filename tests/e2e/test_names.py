"""A file name is any bytes but "/" and NUL (SPEC §7): every byte value,
through incremental snapshots, verify, browse and restore, exactly."""

import hashlib
import os
import random
import stat

import pytest

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="restoring owners needs root (CI runs as root)")
BYTES = [bytes([b]) for b in range(1, 256) if b != 0x2F]


def tree_state(root: bytes) -> dict:
    """Every entry below root: type, mode, owner, size, mtime, content hash,
    symlink target, and which earlier entry it is a hard link of. A
    directory's mtime to the second: rsync compares times to the second, and
    leaves a directory whose time differs by less alone."""
    state, first_name = {}, {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            st = os.lstat(path)
            entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
            if stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entry.append(st.st_mtime_ns // 10**9)
            else:
                entry.append(st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    entry += [st.st_size, hashlib.sha256(f.read()).hexdigest(),
                              first_name.setdefault(st.st_ino, relative)]
            state[relative] = tuple(entry)
    top = os.lstat(root)
    state[b"."] = (stat.S_IMODE(top.st_mode), top.st_uid, top.st_gid, top.st_mtime_ns // 10**9)
    return state


def write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def every_byte_tree(root: bytes) -> None:
    """Each byte 0x01-0xff alone, leading, trailing and doubled in a file
    name, next to a sibling that differs only by it ("x", "xx"), and as a
    directory's name beside a file of the same name without it."""
    os.makedirs(root)
    write(os.path.join(root, b"x"), b"plain x")
    write(os.path.join(root, b"xx"), b"plain xx")
    for byte in BYTES:
        for name in (byte, byte + b"x", b"x" + byte, byte + byte):
            if name not in (b".", b".."):
                write(os.path.join(root, name), b"content of " + name)
        directory = os.path.join(root, b"dir" + byte)
        os.mkdir(directory)
        write(os.path.join(directory, b"f" + byte), b"inside " + byte)
    write(os.path.join(root, b"dir"), b"a file beside every dir<byte>/")
    os.link(os.path.join(root, b"\x01"), os.path.join(root, b"hard\n\x01"))
    os.symlink(b"\x01 => x -> y//\\#001", os.path.join(root, b"link\x01"))
    write(os.path.join(root, b"\\#001"), b"an escape as a literal name")


def snapshot_ok(daemon, host: str) -> str:
    job = daemon.run_snapshot(host)
    assert job["status"] == "ok", job
    return job["hosts"][0]["snapshot"]


def test_a_name_holding_the_byte_rsync_escapes_as_its_separator_loses_nothing(tmp_path, daemon_factory):
    """Issue 17 item 1, as reported: bkd read rsync's list with \\x01 as its
    own separator, so after "victim\\x01a" and "victimdir\\x01b" went away,
    the next snapshot lost "victim" and "victimdir/", kept the old "mod\\x01m"
    and never took "new\\x01c" — status warning, verify ok."""
    source = os.fsencode(tmp_path / "src")
    os.makedirs(os.path.join(source, b"victimdir"))
    for index in range(5):
        write(os.path.join(source, b"victimdir", b"f%d" % index), b"%d" % index)
    for name in (b"victim", b"victim\x01a", b"victimdir\x01b", b"mod\x01m"):
        write(os.path.join(source, name), b"first " + name)
    daemon = daemon_factory([{"name": "web1", "source": os.fsdecode(source)}]).start()
    hourly = os.fsencode(daemon.workdir / "backup" / "web1" / "hourly")
    first = snapshot_ok(daemon, "web1")
    assert tree_state(os.path.join(hourly, os.fsencode(first))) == tree_state(source)

    os.unlink(os.path.join(source, b"victim\x01a"))
    os.unlink(os.path.join(source, b"victimdir\x01b"))
    write(os.path.join(source, b"mod\x01m"), b"second, longer")
    write(os.path.join(source, b"new\x01c"), b"new")
    for _ in range(2):  # and the one after it, which inherited the loss for ever
        name = snapshot_ok(daemon, "web1")
        assert tree_state(os.path.join(hourly, os.fsencode(name))) == tree_state(source)
    verify = daemon.bkctl("verify", "web1", "--all")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def change(source: bytes, rng: random.Random, round_no: int) -> None:
    """Deletes, renames, modifies and adds among the tricky names. What is
    written gets an mtime of its own: rsync's quick check compares size and
    mtime to the second, and the rounds follow each other within seconds."""
    def modify(path: bytes, data: bytes) -> None:
        write(path, data)
        os.utime(path, ns=(0, (1_700_000_000 + round_no) * 10**9 + len(data)))

    files = sorted(n for n in os.listdir(source) if os.path.isfile(os.path.join(source, n))
                   and not os.path.islink(os.path.join(source, n)))
    for name in rng.sample(files, 8):
        os.unlink(os.path.join(source, name))
        files.remove(name)
    for name in rng.sample(files, 8):
        target = name + rng.choice(BYTES) + b"%d" % round_no
        os.rename(os.path.join(source, name), os.path.join(source, target))
        files.remove(name)
    for name in rng.sample(files, 8):
        modify(os.path.join(source, name), os.urandom(rng.randrange(1, 5000)))
    for name in rng.sample(files, 4):
        os.chmod(os.path.join(source, name), rng.choice([0o600, 0o640, 0o755]))
    for index in range(8):
        byte = rng.choice(BYTES)
        modify(os.path.join(source, byte + b"new%d-%d" % (round_no, index) + byte), b"added")
    directory = os.path.join(source, b"dir" + rng.choice(BYTES))
    if os.path.isdir(directory):  # a directory's contents change, and it becomes a file once
        modify(os.path.join(directory, b"added\x01%d" % round_no), b"added inside")
        if round_no == 5:
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))
            os.rmdir(directory)
            modify(directory, b"was a directory")


@ROOT_ONLY
def test_every_byte_in_names_through_ten_incremental_snapshots_verify_browse_and_restore(
        tmp_path, short_tmp, daemon_factory, ssh_fleet):
    source = os.fsencode(tmp_path / "src")
    every_byte_tree(source)
    ssh_fleet.add_host("names-host")
    daemon = daemon_factory([{"name": "web1", "source": os.fsdecode(source)},
                             {"name": "web2", "source": f"names-host:{os.fsdecode(source)}/"}],
                            ssh=ssh_fleet.ssh_settings(), archive={"enabled": False},
                            rsync={"exclude_defaults": False},  # "*~" is one of them
                            monthly={"enabled": False}).start()
    backup = os.fsencode(daemon.workdir / "backup")
    rng = random.Random(17)
    taken = []
    for round_no in range(11):  # the first snapshot, then ten incremental ones
        if round_no:
            change(source, rng, round_no)
        hosts = ("web1", "web2") if round_no in (0, 1, 10) else ("web1",)  # over SSH too, now and then
        expected = tree_state(source)
        for host in hosts:
            name = snapshot_ok(daemon, host)
            got = tree_state(os.path.join(backup, host.encode(), b"hourly", os.fsencode(name)))
            assert got == expected, (host, round_no, sorted(set(got) ^ set(expected))[:10],
                                     [k for k in got if k in expected and got[k] != expected[k]][:10])
            taken.append((host, name))
    for host in ("web1", "web2"):
        verify = daemon.bkctl("--json", "verify", host, "--all", timeout=300)
        assert verify.returncode == 0, verify.stdout[-3000:]

    # Browsing lists every name exactly, in a reversible encoding.
    host, name = taken[-1]
    listed = daemon.call("snapshots.browse", host=host, snapshot=name, path="/", limit=100_000)
    assert {os.fsencode(entry["name"]) for entry in listed["entries"]} == set(os.listdir(source))
    inner = next(n for n in sorted(os.listdir(source)) if n[:3] == b"dir" and n[3:4] < b" "
                 and os.path.isdir(os.path.join(source, n)))
    listed = daemon.call("snapshots.browse", host=host, snapshot=name, path=os.fsdecode(b"/" + inner))
    assert {os.fsencode(entry["name"]) for entry in listed["entries"]} == set(
        os.listdir(os.path.join(source, inner)))
    human = daemon.bkctl("ls", host, name, "/")
    assert human.returncode == 0 and "\\x01" in human.stdout and "\x01" not in human.stdout

    # Restoring a few such names alone gives them back exactly.
    for index, restored in enumerate([b"\x01", b"\n\n", b"x\x7f", b"\\#001", b"link\x01", inner]):
        if not os.path.lexists(os.path.join(source, restored)):
            continue
        dest = short_tmp / f"restore{index}"
        result = daemon.bkctl("restore", host, name, os.fsdecode(b"/" + restored), "--to", str(dest))
        assert result.returncode == 0, (restored, result.stdout + result.stderr)
        got, want = tree_state(os.fsencode(dest)), tree_state(source)
        assert {key for key in got if key != b"."} == {
            key for key in want if key == restored or key.startswith(restored + b"/")}
        for key in got.keys() - {b"."}:  # alone, a file is no hard link of another
            assert got[key][:7] == want[key][:7], (restored, key)
