"""The pure parts of `bkd host add` and the readiness checks: TARGET, the
arguments, the lines it prints, the ssh_config block, host keys and pins,
the drop-ins; host.rsync_path and the keys on rsync's and ssh's command lines."""

from __future__ import annotations

import base64
import hashlib
import struct
import tomllib
from pathlib import Path

import pytest

from bkd import readiness
from bkd.config.models import Config
from bkd.config.remote import Target
from bkd.enrol import (
    HostKey,
    authorized_line,
    changed,
    drop_in,
    host_block,
    parse_keys,
    pinned_keys,
    request,
    restore_line,
    sudoers_lines,
    with_block,
)
from bkd.pipeline import restore, rsync


@pytest.mark.parametrize("text, parsed", [
    ("web1", (None, "web1", None)),
    ("root@web1.example.org", ("root", "web1.example.org", None)),
    ("bkd@web1:2222", ("bkd", "web1", 2222)),
    ("10.0.0.5:22", (None, "10.0.0.5", 22)),
    ("[2001:db8::7]", (None, "2001:db8::7", None)),
    ("bkd@[fe80::1]:2222", ("bkd", "fe80::1", 2222)),
])
def test_target_forms(text, parsed):
    target = Target.parse(text)
    assert (target.user, target.host, target.port) == parsed


@pytest.mark.parametrize("text, problem", [
    ("2001:db8::7", "write an IPv6 address in brackets"),
    ("fe80::1:22", "write an IPv6 address in brackets"),
    ("[10.0.0.5]", "is not an IPv6 address"),
    ("[fe80::1%eth0]", "a zone (%...) cannot be written into an ssh_config"),
    ("web1:0", "the port '0' is not a number from 1 to 65535"),
    ("web1:ssh", "the port 'ssh' is not a number"),
    ("-oProxyCommand=x", "starts with '-'"),
    ("a b", "contains spaces or control characters"),
    ("web1\n", "contains spaces or control characters"),
    ("@web1", "the user is empty"),
    ("us$er@web1", "may hold only letters, digits"),
    ("web1%h", "may hold only letters, digits"),
    ("web1:/srv", "without a path (`bkd host add` takes the directory as --path)"),
])
def test_target_refusals_say_what_is_wrong(text, problem):
    with pytest.raises(ValueError, match=None) as error:
        Target.parse(text)
    assert problem in str(error.value)


@pytest.mark.parametrize("args, problem", [
    (("web 1", "web1"), "NAME 'web 1'"),
    ((".web1", "web1"), "not starting with '.'"),
    (("00-ssh", "web1"), "conf.d/00-ssh.toml is bkd's own drop-in"),
    (("web1", "web1:/srv"), "TARGET 'web1:/srv'"),
    (("web1", "web1", "srv"), "--path 'srv': give an absolute path"),
    (("web1", "web1", "/srv/my data"), "--path '/srv/my data'"),
    (("web1", "web1", '/srv/"x'), "--path"),
    (("web1", "web1", "/", True), "--sudo is for a login other than root"),
    (("web1", "root@web1", "/", True), "--sudo is for a login other than root"),
    (("web1", "web1", "/", False, 'x" y'), "--from 'x\" y'"),
])
def test_arguments_are_checked_before_anything_happens(args, problem):
    with pytest.raises(ValueError) as error:
        request(*args)
    assert problem in str(error.value)


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG2hdMbhn8jS10iW19q2VDat9FzHt34sYxrOQfkK8Geq bkd@backup1"


def test_the_authorized_keys_line_is_restricted_to_a_read_only_rrsync_from_this_server():
    whole = request("web1", "web1.example.org", "/")
    assert authorized_line(whole, KEY, "192.0.2.10") == f'restrict,from="192.0.2.10",command="rrsync -ro /" {KEY}'
    # Below /, rrsync must take bkd's absolute paths as paths on the host (-absolute).
    srv = request("web1", "web1.example.org", "/srv/data/")
    assert srv.path == "/srv/data" and srv.source == "web1:/srv/data/"
    assert authorized_line(srv, KEY, "192.0.2.10") == \
        f'restrict,from="192.0.2.10",command="rrsync -ro -absolute /srv/data" {KEY}'
    assert restore_line(KEY, "192.0.2.10") == f'restrict,from="192.0.2.10" {KEY}'


def test_the_sudo_variant_runs_rrsync_through_sudo_and_its_sudoers_lines_keep_ssh_original_command():
    req = request("db1", "bkd@db1:2222", "/var/lib", sudo=True, from_="10.0.0.1")
    assert authorized_line(req, KEY, req.from_) == \
        f'restrict,from="10.0.0.1",command="sudo -n rrsync -ro -absolute /var/lib" {KEY}'
    assert sudoers_lines(req) == ['Defaults!/usr/bin/rrsync env_keep += "SSH_ORIGINAL_COMMAND"',
                                  "bkd ALL=(root) NOPASSWD: /usr/bin/rrsync -ro -absolute /var/lib"]
    assert req.command == "bkd host add db1 bkd@db1:2222 --path /var/lib --sudo --from 10.0.0.1"


def test_the_host_block_pins_by_name_and_logs_in_as_root_without_a_user():
    assert host_block(request("web1", "[2001:db8::7]:2200")) == [
        "Host web1", "    # bkd host add web1: rewritten when it runs again", "    HostName 2001:db8::7",
        "    Port 2200", "    User root", "    HostKeyAlias web1", ""]
    assert "    Port" not in "\n".join(host_block(request("web1", "bkd@web1")))


def test_the_host_block_is_added_once_and_replaced_in_place():
    block = host_block(request("web1", "10.0.0.5:2222"))
    first = with_block("", "web1", block)
    assert first.startswith("Host web1\n") and first.count("Host web1\n") == 1
    assert with_block(first, "web1", block) == first  # the same again: nothing changes
    theirs = "# mine\nHost web10\n  User x\n\nHost web1\n  HostName old\n  Port 1\n\nHost *\n  ServerAliveInterval 5\n"
    moved = with_block(theirs, "web1", host_block(request("web1", "10.0.0.6")))
    assert moved.count("Host web1\n") == 1 and "HostName old" not in moved and "HostName 10.0.0.6" in moved
    assert moved.index("Host web10") < moved.index("Host web1\n") < moved.index("Host *")  # where it was
    assert "# mine\n" in moved and "  User x\n" in moved and "ServerAliveInterval 5" in moved
    assert with_block("Host=web1\n  Port 9\n", "web1", block).count("Port") == 1


def blob(kind: str, body: bytes = b"k" * 32) -> str:
    raw = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", len(body)) + body
    return base64.b64encode(raw).decode()


def test_host_keys_are_read_from_a_hostile_keyscan_strictly():
    good = blob("ssh-ed25519")
    lines = [f"[10.0.0.5]:2222 ssh-ed25519 {good}", "# 10.0.0.5:2222 SSH-2.0-OpenSSH_9.2p1",
             f"[10.0.0.5]:2222 ssh-rsa {blob('ssh-ed25519')}",  # its blob says another type
             "[10.0.0.5]:2222 ssh-dss AAAA", "[10.0.0.5]:2222 ssh-ed25519 !!notbase64!!", "\x1b[2J garbage",
             f"[10.0.0.5]:2222 ssh-ed25519 {good}",
             f"[10.0.0.5]:2222 ecdsa-sha2-nistp256 {blob('ecdsa-sha2-nistp256')}"]
    keys = parse_keys(lines)
    assert [k.kind for k in keys] == ["ssh-ed25519", "ecdsa-sha2-nistp256"]
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(good)).digest()).decode().rstrip("=")
    assert keys[0].fingerprint == f"SHA256:{digest}"


def test_a_pin_that_differs_is_a_change_and_a_new_type_is_not():
    ed, ed2, ecdsa = (HostKey("ssh-ed25519", blob("ssh-ed25519")),
                      HostKey("ssh-ed25519", blob("ssh-ed25519", b"x" * 32)),
                      HostKey("ecdsa-sha2-nistp256", blob("ecdsa-sha2-nistp256")))
    known = f"web1 {ed.kind} {ed.blob}\nweb10 {ed2.kind} {ed2.blob}\n@revoked web1 {ed2.kind} {ed2.blob}\n"
    assert pinned_keys(known, "web1") == [ed]
    assert not changed([], [ed]) and not changed([ed], [ed, ecdsa])
    assert changed([ed], [ed2]) and changed([ed], [ecdsa])  # another key, or none of the pinned type


def test_drop_ins_are_toml_with_a_host_table_of_its_own():
    data = {"host": [{"name": "web1", "source": "web1:/srv/", "exclude": ["*.iso"],
                      "rsync": {"bwlimit": "10m"}}]}
    text = drop_in(data).decode()
    assert text.startswith("# Written by `bkd host add`") and "[[host]]\n" in text and "[host.rsync]\n" in text
    assert tomllib.loads(text) == data


def test_the_protocol_check_stands_for_the_version_bkd_needs():
    # Protocol 32 is what tells rsync 3.4.0 from older ones; a newer minimum needs another test.
    assert rsync.MIN_RSYNC_VERSION == (3, 4, 0) and rsync.MIN_PROTOCOL == 32


def test_the_remote_rsyncs_protocol_is_read_from_the_local_clients_own_first_line():
    assert rsync.remote_protocol(["(Client) Protocol versions: remote=32, negotiated=32", "drwx …"]) == 32
    assert rsync.remote_protocol(["(Client) Protocol versions: remote=31, negotiated=31"]) == 31
    # Anything later on stdout may come from the host (its MSG_INFO): only the first line counts.
    assert rsync.remote_protocol(["drwx .", "(Client) Protocol versions: remote=32, negotiated=32"]) is None
    assert rsync.remote_protocol([]) is None


def config(**ssh) -> Config:
    return Config.model_validate({
        "backup_root": "/srv/bkd", "ssh": {"identity_file": "/etc/bkd/ssh/id_ed25519", **ssh},
        "host": [{"name": "web1", "source": "bkd@web1:/srv/", "rsync_path": "sudo -n rsync"},
                 {"name": "web2", "source": "web2:/srv/"}, {"name": "local", "source": "/srv/data/"}]})


def test_rsync_path_goes_to_every_rsync_against_that_host_and_no_other():
    conf = config()
    web1, web2, local = (conf.settings(h) for h in conf.host)
    dest = Path("/srv/bkd/web1/hourly/.partial-1")
    for argv in (rsync.snapshot_command(conf, web1, dest, []), rsync.compare_command(conf, web1, dest),
                 rsync.reachability_command(conf, web1),
                 rsync.fetch_command(conf, web1, dest, dest, dest / "list", "/dev/fd/9")):
        assert "--rsync-path=sudo -n rsync" in argv and argv.index("--rsync-path=sudo -n rsync") < argv.index("--")
    for settings in (web2, local):
        assert not [a for a in rsync.snapshot_command(conf, settings, dest, []) if a.startswith("--rsync-path")]
    remote = restore.check_destination("root@web1:/restore")
    assert restore.rsync_path_at(conf, remote, "web2") == "sudo -n rsync"  # a host configured there
    assert restore.rsync_path_at(conf, restore.check_destination("web3:/x"), "web1") == ""


def test_ssh_logs_in_with_the_configured_key_only_and_a_restore_with_the_restore_key():
    conf = config(restore_identity_file="/etc/bkd/ssh/id_ed25519_restore")
    backup = rsync.ssh_command(conf)
    assert backup[backup.index("-i"):backup.index("-i") + 4] == ["-i", "/etc/bkd/ssh/id_ed25519", "-o",
                                                               "IdentitiesOnly=yes"]
    restoring = rsync.ssh_command(conf, identity=restore.restore_key(conf))
    assert "/etc/bkd/ssh/id_ed25519_restore" in restoring and "/etc/bkd/ssh/id_ed25519" not in restoring
    assert "-i" not in rsync.ssh_command(Config(backup_root="/srv/bkd"))  # none: ssh's own defaults


def test_a_restore_to_a_host_without_a_restore_key_is_refused_with_what_to_do():
    from bkd.errors import InvalidArgument
    with pytest.raises(InvalidArgument) as error:
        restore.restore_key(config())
    assert "[ssh] restore_identity_file is not set" in error.value.message
    assert "bkd host add NAME TARGET --restore-key" in error.value.message


@pytest.mark.parametrize("code, stderr, problem", [
    (255, ["root@web1: Permission denied (publickey)."], readiness.REFUSED),
    (255, ["Host key verification failed."], readiness.HOST_KEY),
    (255, ["ssh: connect to host 10.0.0.5 port 22: Connection refused"], readiness.UNREACHABLE),
    (12, ["/usr/bin/rrsync error: Restricted directory does not exist!"], None),  # logged in; rsync did not start
])
def test_why_ssh_ran_nothing_on_the_host(code, stderr, problem):
    assert readiness.login_problem(code, stderr) == problem


def test_the_space_check_wants_room_and_inodes_for_the_first_pull(tmp_path):
    assert readiness.space(tmp_path / "not yet" / "backup", 1, 1).ok  # the nearest existing parent's filesystem
    short = readiness.space(tmp_path, 2 ** 62, 1)
    assert not short.ok and short.problem == readiness.NO_SPACE and "a first pull needs" in short.message
