"""`bkd host add` against real sshd hosts on loopback (issue 23): the line it
prints, nothing written until the checks pass, the --sudo variant with its
sudoers lines, host.rsync_path, a changed host key, and restores to a host
through the restore key and not through the read-only backup key."""

from __future__ import annotations

import json
import os
import pty
import shutil
import stat
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from bkctl import protocol
from bkctl.client import RemoteError
from conftest import BIN, RUN_ID, make_tree, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="host add, test logins and sudoers need root (CI runs as root)")


def host_add(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bkd"), "--config", str(daemon.config_path), "host", "add", *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def printed(out: str, prefix: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(prefix)]


def install(keys: Path, line: str) -> None:
    with keys.open("a") as f:
        f.write(line + "\n")


def daemon_for_host_add(daemon_factory):
    """A daemon with no host and no [ssh] settings: host add makes bkd's files beside its config."""
    return daemon_factory([]).start()


def enrol(daemon, keys: Path, *args: str) -> subprocess.CompletedProcess:
    """host add, the printed authorized_keys line installed, host add again."""
    first = host_add(daemon, *args)
    assert first.returncode == 1, first.stdout + first.stderr
    (line,) = printed(first.stdout, "restrict,")
    install(keys, line)
    second = host_add(daemon, *args)
    assert second.returncode == 0, second.stdout + second.stderr
    return second


def test_host_add_prints_the_line_writes_nothing_and_enrols_once_it_is_installed(tmp_path, daemon_factory,
                                                                                   ssh_fleet):
    source = make_tree(tmp_path / "srv", files=12)
    (source / "dir0" / "only root may read").write_text("secret\n")
    os.chmod(source / "dir0" / "only root may read", 0o600)
    address, port = ssh_fleet.add_host("web1")
    daemon = daemon_for_host_add(daemon_factory)
    here = daemon.workdir
    args = ("web1", f"{address}:{port}", "--path", str(source))

    unconfirmed = host_add(daemon, *args)  # no terminal to confirm on, no --yes: nothing pinned
    assert unconfirmed.returncode == 1
    assert "ssh-ed25519" in unconfirmed.stdout and "SHA256:" in unconfirmed.stdout
    assert "the host key of web1 is not pinned" in unconfirmed.stderr
    assert not (here / "ssh/known_hosts").exists()

    first = host_add(daemon, *args, "--yes")
    assert first.returncode == 1, first.stdout + first.stderr
    public = (here / "ssh/id_ed25519.pub").read_text().strip()
    (line,) = printed(first.stdout, "restrict,")
    assert line == f'restrict,from="127.0.0.1",command="rrsync -ro -absolute {source}" {public}'
    assert "login     web1 refused bkd's key" in first.stdout and "Nothing was written" in first.stdout
    assert not (here / "conf.d").exists() and not (here / "ssh/config").exists()  # no drop-in, no Host block
    assert stat.S_IMODE((here / "ssh/id_ed25519").stat().st_mode) == 0o600
    pins = (here / "ssh/known_hosts").read_text()
    assert pins.startswith("web1 ssh-ed25519 ")  # confirmed with --yes: kept for the next run
    assert [h["name"] for h in daemon.call("hosts.list")["hosts"]] == []

    install(ssh_fleet.authorized_keys, line)
    second = host_add(daemon, *args, "--yes")
    assert second.returncode == 0, second.stdout + second.stderr
    for check in ("login", "rsync", "read", "estimate", "space"):
        assert f"  ok      {check}" in second.stdout
    assert "a first pull brings 13 files" in second.stdout
    assert "reloaded bkd: host web1 added" in second.stdout
    assert (here / "conf.d/web1.toml").read_text().endswith(f'[[host]]\nname = "web1"\nsource = "web1:{source}/"\n')
    assert daemon.bkctl("hosts", "test", "web1").stdout.startswith("web1: ok")
    job = daemon.run_snapshot("web1")
    assert job["status"] == "ok", job
    latest = daemon.workdir / "backup/web1/latest"
    assert (latest / "dir0/only root may read").read_text() == "secret\n"
    (source / "dir1" / "new.txt").write_text("new\n")
    assert daemon.run_snapshot("web1")["status"] == "ok"  # incremental: the compare and the copy through rrsync
    assert (latest / "dir1/new.txt").read_text() == "new\n"

    written = {path: path.read_bytes() for path in [*(here / "ssh").iterdir(), *(here / "conf.d").iterdir()]}
    third = host_add(daemon, *args)  # pinned already: no --yes needed
    assert third.returncode == 0, third.stdout + third.stderr
    assert printed(third.stdout, "restrict,") == [line]
    for unchanged in ("ssh/config", "conf.d/web1.toml"):
        assert f"unchanged {here / unchanged}" in third.stdout
    assert {path: path.read_bytes() for path in written} == written
    assert sorted(written) == sorted([*(here / "ssh").iterdir(), *(here / "conf.d").iterdir()])
    assert (here / "ssh/config").read_text().count("Host web1\n") == 1

    # Keys the admin adds to the host's drop-in stay when host add runs again.
    drop = here / "conf.d/web1.toml"
    drop.write_text(drop.read_text() + 'exclude = ["*.iso"]\n')
    assert host_add(daemon, *args).returncode == 0
    assert tomllib.loads(drop.read_text())["host"] == [{"name": "web1", "source": f"web1:{source}/",
                                                        "exclude": ["*.iso"]}]
    # rsync_path does not go through a forced rrsync: it is for logins without one.
    drop.write_text(f'[[host]]\nname = "web1"\nsource = "web1:{source}/"\nrsync_path = "sudo -n rsync"\n')
    assert daemon.bkctl_json("reload")["ok"]
    tested = json.loads(daemon.bkctl("--json", "hosts", "test", "web1").stdout)["results"]["web1"]
    assert tested["error"].startswith("rsync: rsync did not start on the host"), tested

    # The key reads DIR and nothing else: no shell, no other path.
    ssh = ["ssh", "-F", str(here / "ssh/config"), "-i", str(here / "ssh/id_ed25519"), "-o", "BatchMode=yes",
           "-o", f"UserKnownHostsFile={here / 'ssh/known_hosts'}"]
    shell = subprocess.run([*ssh, "web1", "cat", "/etc/hostname"], capture_output=True, text=True, timeout=60)
    assert shell.returncode != 0 and shell.stdout == ""
    outside = subprocess.run(["rsync", "--list-only", "-e", " ".join(ssh), "web1:/etc/"], capture_output=True,
                             text=True, timeout=60)
    assert outside.returncode != 0 and "hostname" not in outside.stdout


def host_add_on_a_terminal(daemon, answer: str, *args: str) -> str:
    """host add with a terminal as its stdin (as an admin runs it), answering its question."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([str(BIN / "bkd"), "--config", str(daemon.config_path), "host", "add", *args],
                            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.close(terminal)
    try:
        os.write(controller, f"{answer}\n".encode())  # the terminal keeps it until the question reads it
        out, _ = proc.communicate(timeout=120)
    finally:
        os.close(controller)
    return out


def test_the_host_key_is_pinned_when_the_admin_says_yes_on_a_terminal(tmp_path, daemon_factory, ssh_fleet):
    address, port = ssh_fleet.add_host("web1")
    daemon = daemon_for_host_add(daemon_factory)
    known_hosts = daemon.workdir / "ssh/known_hosts"
    args = ("web1", f"{address}:{port}", "--path", str(make_tree(tmp_path / "srv", files=2)))

    declined = host_add_on_a_terminal(daemon, "n", *args)
    assert "Pin this host key for web1? [y/N]" in declined and "is not pinned" in declined
    assert not known_hosts.exists()
    accepted = host_add_on_a_terminal(daemon, "y", *args)
    assert f"pinned in {known_hosts}" in accepted and "restrict," in accepted
    host_key = Path(f"{ssh_fleet.root}/web1_host_key.pub").read_text().split()
    assert known_hosts.read_text() == f"web1 {host_key[0]} {host_key[1]}\n"  # sshd here has one key


def test_a_wrong_from_address_fails_the_login_check_and_a_daemon_not_running_is_told_later(
        tmp_path, daemon_factory, ssh_fleet):
    source = make_tree(tmp_path / "srv", files=2)
    address, port = ssh_fleet.add_host("web1")
    daemon = daemon_factory([])  # not started
    args = ("web1", f"{address}:{port}", "--path", str(source), "--yes")
    first = host_add(daemon, *args, "--from", "192.0.2.77")
    (line,) = printed(first.stdout, "restrict,")
    assert line.startswith('restrict,from="192.0.2.77",')
    install(ssh_fleet.authorized_keys, line)
    again = host_add(daemon, *args, "--from", "192.0.2.77")
    assert again.returncode == 1
    assert "web1 refused bkd's key" in again.stdout and "it must come from 192.0.2.77" in again.stdout
    assert not (daemon.workdir / "conf.d").exists()

    ssh_fleet.authorized_keys.write_text(line.replace("192.0.2.77", "127.0.0.1") + "\n")
    right = host_add(daemon, *args)
    assert right.returncode == 0, right.stdout + right.stderr
    assert "bkd is not running" in right.stdout and "it reads the new host when it starts" in right.stdout
    daemon.start()
    assert daemon.run_snapshot("web1")["status"] == "ok"


def test_a_host_whose_rsync_speaks_an_older_protocol_fails_the_rsync_check(tmp_path, daemon_factory, ssh_fleet):
    """rsync before 3.4.0 speaks protocol 31: told apart through a key that runs nothing but rsync."""
    source = make_tree(tmp_path / "srv", files=2)
    old = tmp_path / "rsync-3.3"
    old.write_text('#!/bin/sh\nexec rsync --protocol=31 ${SSH_ORIGINAL_COMMAND#rsync }\n')
    old.chmod(0o755)
    address, port = ssh_fleet.add_host("web1")
    daemon = daemon_for_host_add(daemon_factory)
    args = ("web1", f"{address}:{port}", "--path", str(source), "--yes")
    (line,) = printed(host_add(daemon, *args).stdout, "restrict,")
    install(ssh_fleet.authorized_keys, line.replace(f"rrsync -ro -absolute {source}", str(old)))
    checked = host_add(daemon, *args)
    assert checked.returncode == 1
    assert "ok      login" in checked.stdout
    assert "FAILED  rsync     the host's rsync speaks protocol 31: it is older than 3.4.0" in checked.stdout
    assert "fix: upgrade rsync on the host to 3.4.0 or newer" in checked.stdout
    assert not (daemon.workdir / "conf.d").exists()


def test_host_add_refuses_before_touching_anything_what_it_would_not_manage(tmp_path, daemon_factory):
    """No host needed: these are refused before a key is made or a host asked."""
    daemon = daemon_factory([{"name": "web1", "source": str(tmp_path)}])
    taken = host_add(daemon, "web1", "web1.invalid")
    assert taken.returncode == 1
    assert f"host web1 is already defined in {daemon.config_path}" in taken.stderr

    theirs = tmp_path / "ssh_config"
    theirs.write_text("Host *\n    Port 2222\n")  # ssh takes the first value it finds
    daemon.config["ssh"] = {"config_file": str(theirs)}
    daemon.write_config()
    shadowed = host_add(daemon, "web2", "web2.invalid")
    assert shadowed.returncode == 1
    assert "something before the Host web2 block decides for it (port is '2222', not '22')" in shadowed.stderr
    assert theirs.read_text() == "Host *\n    Port 2222\n"
    assert not (daemon.workdir / "ssh").exists() and not (daemon.workdir / "conf.d").exists()

    usage = host_add(daemon, "web2", "web2.invalid:/srv")
    assert usage.returncode == 2 and "--path" in usage.stderr


def test_a_changed_host_key_after_enrolment_is_refused_and_host_add_says_how_to_re_pin(tmp_path, daemon_factory,
                                                                                         ssh_fleet):
    source = make_tree(tmp_path / "srv", files=3)
    address, port = ssh_fleet.add_host("web1")
    daemon = daemon_for_host_add(daemon_factory)
    args = ("web1", f"{address}:{port}", "--path", str(source), "--yes")
    enrol(daemon, ssh_fleet.authorized_keys, *args)
    assert daemon.run_snapshot("web1")["status"] == "ok"
    known_hosts = daemon.workdir / "ssh/known_hosts"
    pinned = known_hosts.read_text()

    ssh_fleet.replace_host_key("web1")  # same address and port, another key
    job = daemon.run_snapshot("web1")
    assert job["status"] == "failed" and "Host key verification failed" in job["hosts"][0]["detail"]
    tested = daemon.bkctl("hosts", "test", "web1")
    assert tested.returncode == 1
    assert f"login: the host key of web1 is not the one pinned in {known_hosts}" in tested.stdout
    assert f"ssh-keygen -R web1 -f {known_hosts}" in tested.stdout  # the fix

    refused = host_add(daemon, *args)
    assert refused.returncode == 1
    assert "THE HOST KEY OF web1" in refused.stderr and "HAS CHANGED" in refused.stderr
    assert f"ssh-keygen -R web1 -f {known_hosts}\n  bkd host add web1 {address}:{port} --path {source}" \
           in refused.stderr
    assert known_hosts.read_text() == pinned  # never accepted by itself

    # After checking the new key on the host: what the message says to do.
    subprocess.run(["ssh-keygen", "-R", "web1", "-f", str(known_hosts)], check=True, capture_output=True)
    repinned = host_add(daemon, *args)
    assert repinned.returncode == 0, repinned.stdout + repinned.stderr
    assert daemon.run_snapshot("web1")["status"] == "ok"


# ---- a login other than root -----------------------------------------------------------------------------


@pytest.fixture
def login():
    """A Unix user of this test only (its password field '*': sshd without PAM
    refuses a locked '!' account). Asked for before the daemon and the sshd,
    so that it is removed after them; its last sessions may still be ending."""
    name = f"bkdt{RUN_ID}"[:31]
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", "-p", "*", name], check=True, capture_output=True)
    yield name
    wait_until(lambda: subprocess.run(["pgrep", "-u", name], capture_output=True).returncode == 1, 30,
               what=f"the sessions of {name} to end")
    subprocess.run(["userdel", name], check=True, capture_output=True)


@pytest.fixture
def sudoers():
    """sudoers(lines) installs them as /etc/sudoers.d/bkd-test-RUNID (checked by visudo first); removed after."""
    if not shutil.which("sudo"):
        pytest.fail("sudo is not installed: run the README's test command (make test)")
    path = Path(f"/etc/sudoers.d/bkd-test-{RUN_ID}")

    def install_lines(lines: list[str]) -> None:
        draft = path.with_name(f".bkd-test-{RUN_ID}")  # sudo skips names with a dot
        draft.write_text("".join(f"{line}\n" for line in lines))
        checked = subprocess.run(["visudo", "-cf", str(draft)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        draft.chmod(0o440)
        draft.replace(path)

    yield install_lines
    path.unlink(missing_ok=True)
    path.with_name(f".bkd-test-{RUN_ID}").unlink(missing_ok=True)


@pytest.fixture
def readable_keys():
    """An authorized_keys file a non-root login can read (sshd reads it as that user)."""
    directory = Path(tempfile.mkdtemp(prefix="bkd-keys-", dir="/tmp"))
    directory.chmod(0o755)
    keys = directory / "authorized_keys"
    keys.touch(mode=0o644)
    yield keys
    shutil.rmtree(directory)


def root_only_tree(root: Path) -> Path:
    make_tree(root, files=4)
    (root / "secret").write_text("root only\n")
    os.chmod(root / "secret", 0o600)
    (root / "theirs").write_text("someone else's\n")
    os.chown(root / "theirs", 4321, 4321)
    os.chmod(root, 0o700)
    return root


def test_the_sudo_variant_backs_up_root_only_files_with_their_owners_and_needs_ssh_original_command(
        tmp_path, login, sudoers, readable_keys, daemon_factory, ssh_fleet):
    source = root_only_tree(tmp_path / "srv")
    address, port = ssh_fleet.add_host("db1", authorized_keys=readable_keys)
    daemon = daemon_for_host_add(daemon_factory)
    args = ("db1", f"{login}@{address}:{port}", "--path", str(source), "--sudo", "--yes")

    first = host_add(daemon, *args)
    assert first.returncode == 1
    (line,) = printed(first.stdout, "restrict,")
    assert f'command="sudo -n rrsync -ro -absolute {source}"' in line
    rules = printed(first.stdout, "Defaults!") + printed(first.stdout, f"{login} ALL=")
    assert rules == ['Defaults!/usr/bin/rrsync env_keep += "SSH_ORIGINAL_COMMAND"',
                     f"{login} ALL=(root) NOPASSWD: /usr/bin/rrsync -ro -absolute {source}"]
    install(readable_keys, line)

    sudoers(rules[1:])  # without keeping SSH_ORIGINAL_COMMAND, rrsync cannot tell what rsync asked for
    without = host_add(daemon, *args)
    assert without.returncode == 1
    assert "ok      login" in without.stdout and "rsync did not start on the host" in without.stdout
    assert "the sudoers lines above must be in /etc/sudoers.d/" in without.stdout
    assert not (daemon.workdir / "conf.d").exists()

    sudoers(rules)
    enrolled = host_add(daemon, *args)
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    assert f"User {login}" in (daemon.workdir / "ssh/config").read_text()
    job = daemon.run_snapshot("db1")
    assert job["status"] == "ok", job
    latest = daemon.workdir / "backup/db1/latest"
    assert (latest / "secret").read_text() == "root only\n"
    kept = {name: (os.lstat(latest / name).st_uid, stat.S_IMODE(os.lstat(latest / name).st_mode))
            for name in ("secret", "theirs")}
    assert kept == {"secret": (0, 0o600), "theirs": (4321, 0o644)}


def test_rsync_path_is_used_by_snapshots_hosts_test_the_self_check_and_restores(tmp_path, login, sudoers,
                                                                               readable_keys, daemon_factory,
                                                                               ssh_fleet):
    """A non-root login without a forced command, whose rsync runs as root
    through `sudo -n rsync` (host.rsync_path); the same login without it
    reads and writes only as itself."""
    source = root_only_tree(tmp_path / "srv")
    install(readable_keys, Path(f"{ssh_fleet.client_key}.pub").read_text().strip())
    address, port = ssh_fleet.add_host("web1", authorized_keys=readable_keys)
    ssh_fleet.alias("elsewhere", address, port)  # the same sshd under a name no configured host uses
    sudoers([f"{login} ALL=(root) NOPASSWD: /usr/bin/rsync"])
    hosts = [{"name": "web1", "source": f"{login}@web1:{source}/", "rsync_path": "sudo -n rsync"},
             {"name": "plain", "source": f"{login}@web1:{source}/"}]
    daemon = daemon_factory(hosts, ssh=ssh_fleet.ssh_settings(restore_identity_file=str(ssh_fleet.client_key),
                                                              options=["ConnectTimeout=5"])).start()

    job = daemon.run_snapshot()
    runs = {run["host"]: run for run in job["hosts"]}
    assert runs["web1"]["status"] == "ok", runs["web1"]
    assert os.lstat(daemon.workdir / "backup/web1/latest/theirs").st_uid == 4321
    assert runs["plain"]["status"] == "failed" and "Permission denied" in runs["plain"]["detail"]

    # The self-check's marker is made in the socket's directory (mode 0700): only a root rsync sees it.
    # (One host at a time: the two share [user@]host, and so one probe when tested at once.)
    tested = daemon.bkctl_json("hosts", "test", "web1")["results"]["web1"]
    assert tested["ok"] and tested["this_machine"] is True, tested
    answer = daemon.bkctl("--json", "hosts", "test", "plain")
    tested = json.loads(answer.stdout)["results"]["plain"]
    assert answer.returncode == 1
    assert tested["error"] == f"read: cannot read {source}: rsync exited with code 23 (partial transfer due to error)"
    assert tested["this_machine"] is False, tested  # without sudo the marker is out of sight: it looks like a clone

    parent = Path(tempfile.mkdtemp(prefix="bkd-dest-", dir="/tmp"))
    try:
        parent.chmod(0o755)
        dest = parent / "restored"
        dest.mkdir(mode=0o700)  # root's: the login alone may not write here
        done = daemon.bkctl("--json", "restore", "web1", "latest", "/theirs", "--to", f"{login}@web1:{dest}")
        assert done.returncode == 0, done.stdout + done.stderr
        assert (dest / "theirs").read_text() == "someone else's\n" and os.lstat(dest / "theirs").st_uid == 4321

        # No configured host is there, so no rsync_path: the login writes as itself, and cannot.
        refused = daemon.bkctl("--json", "restore", "web1", "latest", "/secret", "--to", f"{login}@elsewhere:{dest}")
        assert refused.returncode == 1
        record = json.loads(refused.stdout.splitlines()[-1])["job"]["hosts"][0]
        assert record["status"] == "failed"
        assert f"writes as {login}@elsewhere, logged in with bkd's restore key {ssh_fleet.client_key}" \
               in record["detail"]
        assert "that login must be able to write there" in record["detail"]
        assert not (dest / "secret").exists()
    finally:
        shutil.rmtree(parent)


# ---- restores to a host: the restore key, not the backup key -----------------------------------------------


def restore_error(daemon, dest: str) -> RemoteError:
    with pytest.raises(RemoteError) as refused:
        daemon.call("restore", host="web1", snapshot="latest", path="/dir0", dest=dest)
    assert refused.value.code == protocol.ErrorCode.INVALID_PARAMS, refused.value.message  # never -32603
    return refused.value


def test_a_restore_to_the_host_needs_the_restore_key_and_works_with_it(tmp_path, daemon_factory, ssh_fleet):
    source = make_tree(tmp_path / "srv", files=8)
    os.chown(source / "dir0" / "file0.txt", 4321, 4321)
    address, port = ssh_fleet.add_host("web1")
    daemon = daemon_for_host_add(daemon_factory)
    args = ("web1", f"{address}:{port}", "--path", str(source), "--yes")
    enrol(daemon, ssh_fleet.authorized_keys, *args)
    assert daemon.run_snapshot("web1")["status"] == "ok"
    dest = tmp_path / "put-back"

    unset = restore_error(daemon, f"web1:{dest}")
    assert "[ssh] restore_identity_file is not set" in unset.message and "--restore-key" in unset.message
    shown = daemon.bkctl("restore", "web1", "latest", "/dir0", "--to", f"web1:{dest}")
    assert shown.returncode == 1 and "restore_identity_file is not set" in shown.stderr

    # The backup key as the restore key: its forced `rrsync -ro` runs instead of the probe.
    (daemon.workdir / "conf.d/50-restore.toml").write_text(
        f'[ssh]\nrestore_identity_file = "{daemon.workdir / "ssh/id_ed25519"}"\n')
    assert daemon.bkctl_json("reload")["ok"]
    read_only = restore_error(daemon, f"web1:{dest}")
    assert "ran something other than bkd's probe" in read_only.message
    assert "a forced command (such as the read-only `rrsync -ro` of bkd's backup key)" in read_only.message
    (daemon.workdir / "conf.d/50-restore.toml").unlink()

    with_key = host_add(daemon, *args, "--restore-key")
    assert with_key.returncode == 0, with_key.stdout + with_key.stderr
    restore_public = (daemon.workdir / "ssh/id_ed25519_restore.pub").read_text().strip()
    assert printed(with_key.stdout, 'restrict,from="127.0.0.1" ') == [f'restrict,from="127.0.0.1" {restore_public}']
    not_installed = restore_error(daemon, f"web1:{dest}")
    assert f"refused bkd's restore key {daemon.workdir / 'ssh/id_ed25519_restore'}" in not_installed.message

    install(ssh_fleet.authorized_keys, f'restrict,from="127.0.0.1" {restore_public}')
    done = daemon.bkctl("--json", "restore", "web1", "latest", "/dir0", "--to", f"web1:{dest}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (dest / "dir0/file4.txt").read_text() == (source / "dir0/file4.txt").read_text()
    assert os.lstat(dest / "dir0/file0.txt").st_uid == 4321  # written as root: owners kept
    assert not any(h["host"] == "web1" and h["status"] == "failed"
                   for h in daemon.call("job.get", job_id=json.loads(done.stdout.splitlines()[-1])["job"]["job_id"])
                   ["job"]["hosts"])
