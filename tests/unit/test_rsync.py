"""rsync: command line, --stats parsing, exit codes, version gate."""

import os
import subprocess
from pathlib import Path

import pytest

from bkd.config.models import Config
from bkd.pipeline import rsync
from bkd.pipeline.snapshot import _deleted_files

FIXTURES = Path(__file__).parent.parent / "fixtures" / "rsync"


def test_stats_of_an_incremental_run():
    stats = rsync.parse_stats((FIXTURES / "stats_incremental.txt").read_text().splitlines())
    assert stats["files"] == 98765
    assert stats["created_files"] == 1000
    assert stats["changed_files"] == 1210
    assert stats["bytes"] == 2684354560
    assert stats["transferred_bytes"] == 26843545
    assert stats["received_bytes"] == 27000000


def test_deleted_files_are_derived_from_the_previous_count():
    # 98,765 files now, 1,000 of them new: 97,765 carried over from 98,000 → 235 deleted.
    assert _deleted_files(98000, {"files": 98765, "created_files": 1000}) == 235
    assert _deleted_files(None, {"files": 5, "created_files": 5}) == 0


@pytest.mark.parametrize("text,version", [
    ("rsync  version 3.5.0  protocol version 32", (3, 5, 0)),
    ("rsync  version v3.2.7  protocol version 31", (3, 2, 7)),
    ("nonsense", None),
])
def test_version_parsing(text, version):
    assert rsync.parse_version(text) == version


def test_an_rsync_with_path_escape_bugs_is_refused(tmp_path):
    fake = tmp_path / "rsync"
    fake.write_text("#!/bin/sh\necho 'rsync  version 3.2.3  protocol version 31'\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="rsync 3.2.3 has known receiver path-escape bugs"):
        rsync.check_rsync(str(fake))
    with pytest.raises(RuntimeError, match="not installed"):
        rsync.check_rsync(str(tmp_path / "missing"))


def test_failures_name_the_cause():
    said = ["ssh: connect to host 127.0.0.9 port 22: Connection refused"]  # ssh -E: its own log
    tail = ["rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]",
            "rsync error: unexplained error (code 255) at io.c(232) [Receiver=3.5.0]"]
    assert rsync.describe_failure(255, tail, said) == (
        "rsync exited with code 255 (the SSH connection failed): "
        "ssh: connect to host 127.0.0.9 port 22: Connection refused")
    assert rsync.describe_failure(11, []) == "rsync exited with code 11 (error in file I/O (is the backup disk full?))"
    enospc = ["rsync: [receiver] write failed on \"/srv/bkd/h/hourly/.partial-1/f\": No space left on device (28)"]
    refused = ["ssh: connect to host 127.0.0.59 port 52253: Connection refused"]
    assert rsync.describe_failure(12, [], refused) == (
        "rsync exited with code 12 (the SSH connection failed): " + refused[0])
    assert rsync.describe_failure(12, enospc) == (
        "rsync exited with code 12 (the backup disk is full): " + enospc[0])


def test_ssh_command_is_batch_mode_with_strict_host_keys_and_the_configured_options():
    config = Config.model_validate({
        "backup_root": "/srv/bkd",
        "ssh": {"config_file": "/etc/bkd/ssh config", "known_hosts_file": "/etc/bkd/kh"},
        "host": [{"name": "web1", "source": "web1:/home/"}],
    })
    settings = config.hosts["web1"]
    argv = rsync.snapshot_command(config, settings, Path("/srv/bkd/web1/hourly/.partial-1"),
                                  [Path("/srv/bkd/web1/hourly/prev")])
    remote_shell = argv[argv.index("-e") + 1]
    assert remote_shell.startswith("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -F '/etc/bkd/ssh config'")
    assert "-o UserKnownHostsFile=/etc/bkd/kh" in remote_shell
    assert "-o ConnectTimeout=10" in remote_shell and "-o ServerAliveInterval=15" in remote_shell
    assert " -C" not in remote_shell
    assert "--link-dest=/srv/bkd/web1/hourly/prev" in argv
    assert "--trust-sender" not in argv
    assert argv[-3:] == ["--", "web1:/home/", "/srv/bkd/web1/hourly/.partial-1/"]
    assert "--timeout=300" in argv


def test_ssh_s_own_messages_go_to_a_log_of_bkd_s_apart_from_the_host_s_stderr():
    config = Config.model_validate({"backup_root": "/srv/bkd", "host": [{"name": "web1", "source": "web1:/home/"}]})
    settings = config.hosts["web1"]
    with rsync.SshLog() as ssh_log:
        assert os.stat(os.path.dirname(ssh_log.path)).st_mode & 0o077 == 0  # private
        argv = rsync.reachability_command(config, settings, ssh_log)
        assert f"-E {ssh_log.path}" in argv[argv.index("-e") + 1]
        assert ssh_log.said() == []  # ssh said nothing (yet)
        with open(ssh_log.path, "ab") as f:
            f.write(b"x" * 100_000 + b"\nHost key verification failed.\r\n")
        assert ssh_log.said()[-1] == "Host key verification failed."
        assert sum(map(len, ssh_log.said())) <= rsync.SshLog.READ_LIMIT
    assert not os.path.exists(ssh_log.path)


def test_progress2_lines():
    assert rsync.parse_progress("     10,846,208  41%    9.78MB/s    0:00:01  ") == {
        "percent": 41, "bytes": 10846208, "rate": 10255073, "eta_s": 2}
    assert rsync.parse_progress(" 26,214,400 100%    9.90MB/s    0:00:02 (xfr#2, to-chk=0/3)")["eta_s"] == 0
    assert rsync.parse_progress("         32,768   0%    0.00kB/s    0:00:00  ")["eta_s"] is None
    assert rsync.parse_progress("Number of files: 3 (reg: 2, dir: 1)") is None


def test_an_ssh_failure_is_named_whatever_exit_code_rsync_chose():
    from bkd.pipeline.rsync import describe_failure
    said = ["ssh: connect to host 127.0.0.9 port 2222: Connection refused"]  # ssh -E: its own log
    refused = ["rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]",
               "rsync error: error in rsync protocol data stream (code 12) at io.c(232) [Receiver=3.5.0]"]
    for code in (12, 255):
        message = describe_failure(code, refused, said)
        assert message.startswith(f"rsync exited with code {code} (the SSH connection failed): ")
        assert message.endswith("Connection refused")
    assert describe_failure(12, ["rsync: read error: Connection reset"]).startswith(
        "rsync exited with code 12 (error in rsync protocol data stream)")


def rsync_escaped(line: bytes) -> bytes:
    r"""What rsync 3.5 with -8 prints for a line (log.c, filtered_fwrite): every
    byte below 0x20 but TAB as \#ooo, and a backslash as \#134 where \#ddd
    (decimal digits) follows it."""
    out = bytearray()
    for index, byte in enumerate(line):
        escape = (byte < 0x20 and byte != 0x09) or (
            line[index:index + 2] == b"\\#" and index + 4 < len(line) and line[index + 2:index + 5].isdigit())
        out += b"\\#%03o" % byte if escape else bytes([byte])
    return bytes(out)


# Names a decoder could get wrong: every byte 0x01-0xff but "/" alone, leading,
# trailing and doubled; rsync's own escapes and the format's literals as names.
TRICKY = [bytes([b]) for b in range(1, 256) if b != 0x2F]
TRICKY += [bytes([b]) + b"x" for b in range(1, 256) if b != 0x2F] + [b"x" + bytes([b]) for b in range(1, 256) if b != 0x2F]
TRICKY += [bytes([b, b]) for b in range(1, 256) if b != 0x2F]
TRICKY += [b"\\", b"\\#", b"\\#001", b"\\#01", b"\\#999", b"\\#134#001", b"a\\#0\x01", b"x\\", b"\\\\#012",
           b"victim\x01a", b"a => b", b"a -> b", b" => ", b"*deleting   x", b">f+++++++++ y", b" lead",
           b"trail ", b"\r\n", b"\xff\xfe-utf8", "\u2603".encode()]
TRICKY = [name for name in TRICKY if name not in (b".", b"..")]  # not names: the directory and its parent


def test_every_name_decodes_exactly_from_rsyncs_escaped_item_lines():
    """A name is any bytes but "/" and NUL: each of them, in a file's, a
    directory's, a deleted entry's and a hard link's line (issue 17 item 1:
    the old list cut a name at an escaped 0x01, its own separator)."""
    for name in TRICKY:
        for parent in (b"", b"dir\x01/", b"a => b/"):
            path = parent + name
            assert rsync.parse_item(rsync_escaped(b">f+++++++++ " + path + b"//")) == rsync.Item(
                ">", "f", "+" * 9, path), path
            assert rsync.parse_item(rsync_escaped(b"cd+++++++++ " + path + b"///")).name == path
            assert rsync.parse_item(rsync_escaped(b"*deleting   " + path + b"//")) == rsync.Item("*", "", "", path)
            linked = rsync.parse_item(rsync_escaped(b"hf+++++++++ " + path + b"// => other/" + name))
            assert (linked.name, linked.linked_to) == (path, b"other/" + name)
            symlink = rsync.parse_item(rsync_escaped(b"cL+++++++++ " + path + b"// -> " + name + b"//x => y"))
            assert (symlink.type, symlink.name, symlink.linked_to) == ("L", path, None)


def test_a_line_that_is_not_an_item_or_names_something_outside_the_tree_is_none():
    for noise in (b"receiving file list", b"Number of files: 52 (reg: 44, dir: 5)", b"file has vanished: \"/x\"",
                  b"created directory /srv/x", b">f+++++++++ no-separator", b"xf+++++++++ bad-update//",
                  b">x+++++++++ bad-type//", b"*deleted    x//", b">f+++++++++ //", b"",
                  # a hostile host's message shaped like an item: nothing outside the snapshot
                  b">f+++++++++ ../../etc/passwd//", b"*deleting   a/../../x//", b">f+++++++++ /etc/x//",
                  b"hf+++++++++ a// => ../b", b"hf+++++++++ a// => /b"):
        assert rsync.parse_item(noise) is None, noise
    assert rsync.parse_item(b"hf          d2/same//") == rsync.Item("h", "f", " " * 9, b"d2/same")
    assert rsync.parse_item(b">f+++++++++ a..b/..c//").name == b"a..b/..c"


def test_rsync_prints_names_as_the_parser_expects(tmp_path):
    """The escaping the parser undoes is rsync's own: a tree of every tricky
    name through a real dry run, read back in chunks of every size."""
    source = os.fsencode(tmp_path / "src")
    os.makedirs(os.path.join(source, b"sub\x01"))
    for index, name in enumerate(TRICKY):
        directory = os.path.join(source, b"sub\x01") if index % 2 else source
        with open(os.path.join(directory, name), "wb") as f:
            f.write(b"x")
    os.link(os.path.join(source, b"\x01"), os.path.join(source, b"hardlink\n"))
    os.symlink(b"//t\x01\n => x", os.path.join(source, b"symlink"))
    argv = ["rsync", "-aH", "--dry-run", *rsync.ITEMS, "--", os.fsencode(tmp_path / "src") + b"/",
            os.fsencode(tmp_path / "dst") + b"/"]
    printed = subprocess.run(argv, capture_output=True, check=True).stdout
    assert b"\\#001" in printed and b"\\#134#001" in printed  # escaped, as the parser expects
    expected = set()
    for directory, dirs, files in os.walk(source):
        for name in dirs + files:
            expected.add(os.path.relpath(os.path.join(directory, name), source))
    for size in (1, 2, 3, 7, 64, 4096, len(printed)):
        items = []
        output = rsync.Output(items.append)
        for start in range(0, len(printed), size):
            output.feed(printed[start:start + size])
        output.close()
        names = {item.name for item in items} - {b"."}
        assert names == expected, size
    assert {(i.name, i.linked_to) for i in items if i.linked_to} in (
        {(b"hardlink\n", b"\x01")}, {(b"\x01", b"hardlink\n")})


@pytest.mark.parametrize("line,wrote,in_place", [
    (b">f.st...... changed//", True, False),
    (b">f+++++++++ new//", True, False),
    (b"hf+++++++++ new-link// => x", True, False),
    (b".f...p..... chmod//", False, True),
    (b".f....og... chown//", False, True),
    (b".f........x xattr//", False, True),
    (b".f...p...a. acl//", False, True),
    (b".L....og... symlink-owner// -> x", False, True),
    (b"hf...p..... linked-chmod//", True, True),
    (b".d..t...... dir///", False, False),  # directories are never shared
    (b"cL+++++++++ new-link// -> x", False, False),
    (b"*deleting   gone//", False, False),
])
def test_which_items_write_a_file_and_which_change_an_inode_in_place(line, wrote, in_place):
    item = rsync.parse_item(line)
    assert (item.wrote_file, item.in_place) == (wrote, in_place)


def test_the_itemized_list_of_a_real_run_accounts_for_its_statistics():
    # tests/fixtures/rsync/itemized.out: a real dry run's stdout (rsync 3.5.0).
    items = []
    output = rsync.Output(items.append)
    output.feed((FIXTURES / "itemized.out").read_bytes())
    output.close()
    stats = rsync.parse_stats(output.lines)
    assert len(items) == 24 and rsync.items_match_stats(items, stats)
    assert rsync.Item(">", "f", ".st......", b"ctl\x01name") in items
    assert rsync.Item("h", "f", "+" * 9, b"hard\\#001link", b"new\nline") in items
    assert not rsync.items_match_stats(items[:-1], stats)  # one line lost: noticed
    assert not rsync.items_match_stats([i for i in items if i.update != "*"], stats)


def test_the_reader_keeps_a_bounded_tail_of_other_lines_and_drops_endless_ones():
    items = []
    output = rsync.Output(items.append)
    output.feed(b"message\n" * 10_000)
    output.feed(b"x" * (rsync.MAX_LINE + 10))
    output.feed(b"x" * (rsync.MAX_LINE + 10))  # the same line goes on
    output.feed(b"y" * 1000 + b"\n>f+++++++++ after//\nNumber of files: 1\n")
    output.close()
    assert len(output.lines) == rsync.KEPT_LINES and output.lines[-1] == "Number of files: 1"
    assert output.dropped == 1 and items == [rsync.Item(">", "f", "+" * 9, b"after")]


def test_progress_is_parsed_at_most_five_times_a_second_and_its_last_line_always():
    seen, items = [], []
    output = rsync.Output(items.append, seen.append, every=0.2)
    for done in range(1, 1001):  # rsync prints a line per file, each after a CR, items between
        output.feed(b">f+++++++++ f%d//\n\r     %s  %d%%   10.00MB/s    0:00:01 (xfr#%d, to-chk=%d/1000)\n"
                    % (done, f"{done * 1000:,}".encode(), done // 10, done, 1000 - done))
    output.feed(b"\nNumber of files: 1,000 (reg: 1,000)\n")
    output.close()
    assert 1 <= len(seen) <= 3 and seen[-1]["percent"] == 100 and seen[-1]["bytes"] == 1_000_000
    assert len(items) == 1000 and list(output.lines) == ["Number of files: 1,000 (reg: 1,000)"]


def test_the_progress_of_one_large_file_is_reported_while_it_transfers():
    """rsync updates one file's progress after a CR each time, with no LF
    until the file is done: each update counts, and none piles up."""
    seen = []
    output = rsync.Output(None, seen.append, every=0)
    output.feed(b">f+++++++++ big.bin//\n")
    for done in range(1, 2001):
        output.feed(b"\r  %s  %d%%  800.00kB/s    0:00:05  " % (f"{done * 2000:,}".encode(), done // 20))
        if done == 1000:
            assert seen and seen[-1]["bytes"] == 999 * 2000  # the newest complete line, while it runs
    assert len(output._pending) < 100
    output.feed(b"\n\nNumber of files: 2\n")
    output.close()
    assert seen[-1]["bytes"] == 2000 * 2000 and list(output.lines) == ["Number of files: 2"]


def test_the_copy_is_taken_again_when_a_directory_appears_or_goes_between_the_two_reads():
    from bkd.pipeline.snapshot import _Plan

    def item(line: bytes) -> rsync.Item:
        return rsync.parse_item(line)

    plan = _Plan([item(b">f+++++++++ d/new//"), item(b"cL+++++++++ was-dir// -> /root"),
                  item(b">f.st...... file//"), item(b"*deleting   gone//")])
    assert plan.types == {b"d": "d", b"d/new": "f", b"was-dir": "L", b"file": "f"}
    assert plan.moved([item(b".d          d///"), item(b">f+++++++++ d/new//")]) is None
    assert plan.moved([item(b"cL+++++++++ d// -> /root")]) == b"d"  # the parent of a listed entry
    assert plan.moved([item(b"cd+++++++++ was-dir///")]) == b"was-dir"  # back: an empty directory
    assert plan.moved([item(b"cd+++++++++ file///")]) == b"file"
    assert plan.moved([item(b"cL+++++++++ file// -> elsewhere")]) is None  # taken as it is now
    assert plan.moved([item(b"cd+++++++++ unlisted///")]) is None
