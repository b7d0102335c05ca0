"""rsync: command line, --stats parsing, exit codes, version gate."""

import os
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
    settings = config.settings(config.host[0])
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
    settings = config.settings(config.host[0])
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


def test_itemized_lines_from_stdout_and_from_a_log_file():
    assert rsync.parse_item(">f+++++++++ dir/new file") == rsync.Item(">", "f", "+" * 9, b"dir/new file")
    assert rsync.parse_item("2026/11/29 03:27:31 [21029] .f...p..... d1/f1") == rsync.Item(".", "f", "...p.....",
                                                                                          b"d1/f1")
    assert rsync.parse_item("cd+++++++++ t/file2dir/").name == b"t/file2dir"
    assert rsync.parse_item("*deleting    lead").name == b" lead"  # a name starting with a space
    assert rsync.parse_item("*deleting   gone/").update == "*"
    assert rsync.parse_item(">f+++++++++ a\\#134#012b").name == b"a\\#012b"  # rsync escapes the backslash
    assert rsync.parse_item(">f+++++++++ nl\\#012x\\#377").name == b"nl\nx\xff"
    assert rsync.parse_item("hf          d2/same") == rsync.Item("h", "f", " " * 9, b"d2/same")
    for noise in ("receiving file list", "Number of files: 52 (reg: 44, dir: 5)", "file has vanished: \"/x\"",
                  "2026/11/29 03:27:31 [21029] sent 193 bytes  received 1,285 bytes  total size 269", ""):
        assert rsync.parse_item(noise) is None


@pytest.mark.parametrize("line,wrote,in_place", [
    (">f.st...... changed", True, False),
    (">f+++++++++ new", True, False),
    ("hf+++++++++ new-link", True, False),
    (".f...p..... chmod", False, True),
    (".f....og... chown", False, True),
    (".f........x xattr", False, True),
    (".f...p...a. acl", False, True),
    (".L....og... symlink-owner", False, True),
    ("hf...p..... linked-chmod", True, True),
    (".d..t...... dir", False, False),  # directories are never shared
    ("cL+++++++++ new-link", False, False),
    ("*deleting   gone", False, False),
])
def test_which_items_write_a_file_and_which_change_an_inode_in_place(line, wrote, in_place):
    item = rsync.parse_item(line)
    assert (item.wrote_file, item.in_place) == (wrote, in_place)


def test_the_itemized_list_of_a_real_run_accounts_for_its_statistics():
    items = [rsync.parse_item(line) for line in (FIXTURES / "itemized.log").read_text().splitlines()]
    items = [item for item in items if item]
    stats = rsync.parse_stats((FIXTURES / "itemized_stats.txt").read_text().splitlines())
    assert len(items) == 19 and rsync.items_match_stats(items, stats)
    assert not rsync.items_match_stats(items[:-1], stats)  # one line lost: noticed
    assert not rsync.items_match_stats([i for i in items if i.update != "*"], stats)


def test_progress_is_reported_at_most_five_times_a_second_and_its_last_line_always():
    from bkd.pipeline.snapshot import _Transfer
    seen, stats = [], []
    transfer = _Transfer(None, None, None, None, seen.append)
    on_stdout = transfer._progress_and_stats(stats)
    for done in range(1, 1001):  # rsync prints a line per file
        on_stdout(f"     {done * 1000:,}  {done // 10}%   10.00MB/s    0:00:01 (xfr#{done}, to-chk={1000 - done}/1000)")
    on_stdout("Number of files: 1,000 (reg: 1,000)")
    assert 1 <= len(seen) <= 3 and seen[-1]["percent"] == 100 and seen[-1]["phase"] == "transfer"
    assert stats == ["Number of files: 1,000 (reg: 1,000)"]
