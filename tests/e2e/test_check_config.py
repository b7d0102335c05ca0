"""`bkd check-config` checks the directories as well as the config (issue 9
defect 11, SPEC §7): real directories, a real read-only mount, a real other
user. Every problem is one line, and all of them come in one run."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import tomli_w

from conftest import BIN

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, setpriv)")
NOBODY = 65534


@pytest.fixture
def tmp_path(tmp_path):
    """tmp_path, or a directory on a disk when it is in memory (Debian 13's
    /tmp is a tmpfs): check-config warns of a backup root in memory."""
    kind = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(tmp_path)],
                          capture_output=True, text=True, check=True).stdout.strip()
    if kind not in ("tmpfs", "ramfs"):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="bkd-cc-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(directory: Path, **keys) -> Path:
    (directory / "source").mkdir(exist_ok=True)
    config = {"backup_root": str(directory / "backup"), "state_dir": str(directory / "state"),
              "host": [{"name": "h1", "source": str(directory / "source")}], **keys}
    path = directory / "bkd.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def check_config(config: Path, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, str(BIN / "bkd"), "--config", str(config), "check-config"],
                          capture_output=True, text=True, timeout=60)


def in_mount_namespace(*mounts: Path) -> list[str]:
    """Run the command with a read-only tmpfs on each path, in a private mount
    namespace (`unshare -rm`: works with or without root, and the mounts vanish
    with the process)."""
    script = "".join(f'mount -t tmpfs -o ro,mode=0700 none "{m}" && ' for m in mounts)
    return ["unshare", "-rm", "sh", "-c", script + 'exec "$@"', "sh"]


def test_good_directories_pass_silently(tmp_path):
    (tmp_path / "backup").mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o700)
    result = check_config(write_config(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_missing_directories_that_can_be_created_pass_and_are_not_created(tmp_path):
    result = check_config(write_config(tmp_path))
    assert (result.returncode, result.stderr) == (0, "")
    assert not (tmp_path / "backup").exists() and not (tmp_path / "state").exists()


def test_a_read_only_backup_root_is_one_line(tmp_path):
    (tmp_path / "backup").mkdir(mode=0o700)
    config = write_config(tmp_path)
    result = check_config(config, in_mount_namespace(tmp_path / "backup"))
    assert result.returncode == 1
    assert result.stderr == (f"{config}:backup_root: cannot use backup root {tmp_path}/backup: "
                             "read-only file system (is it in ReadWritePaths=?)\n")


def test_a_missing_state_dir_on_a_read_only_file_system(tmp_path):
    (tmp_path / "backup").mkdir(mode=0o700)
    (tmp_path / "ro").mkdir()
    config = write_config(tmp_path, state_dir=str(tmp_path / "ro" / "state"))
    result = check_config(config, in_mount_namespace(tmp_path / "ro"))
    assert result.returncode == 1
    assert result.stderr == (f"{config}:state_dir: cannot use state directory {tmp_path}/ro/state: "
                             "does not exist and cannot be created: read-only file system "
                             "(is it in ReadWritePaths=?)\n")


def test_a_backup_root_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "state").mkdir(mode=0o700)
    config = write_config(tmp_path, backup_root=str(tmp_path / "file" / "backup"))
    result = check_config(config)
    assert result.returncode == 1
    assert result.stderr == (f"{config}:backup_root: cannot use backup root {tmp_path}/file/backup: "
                             f"{tmp_path}/file is not a directory: choose a path outside it\n")


def test_a_world_writable_backup_root(tmp_path):
    # Issue 11 defect 5: a 0777 root made beforehand by an ordinary user was used as it was.
    (tmp_path / "backup").mkdir()
    os.chmod(tmp_path / "backup", 0o777)
    config = write_config(tmp_path)
    result = check_config(config)
    assert result.returncode == 1
    assert result.stderr == (f"{config}:backup_root: cannot use backup root {tmp_path}/backup: "
                             f"writable by group or others (mode 0777): chmod go-w {tmp_path}/backup\n")


@root_only
def test_a_foreign_owned_state_dir(tmp_path):
    (tmp_path / "backup").mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o700)
    os.chown(tmp_path / "state", NOBODY, NOBODY)
    config = write_config(tmp_path)
    result = check_config(config)
    assert result.returncode == 1
    assert result.stderr == (f"{config}:state_dir: cannot use state directory {tmp_path}/state: "
                             "owned by uid 65534 (nobody), not by uid 0 (root) that bkd runs as: "
                             f"chown root {tmp_path}/state, or choose another directory\n")


def test_a_planted_symlink_as_a_host_directory(tmp_path):
    (tmp_path / "backup").mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "backup" / "h1").symlink_to(tmp_path / "elsewhere")
    config = write_config(tmp_path)
    result = check_config(config)
    assert result.returncode == 1
    assert result.stderr == (f"{config}:host[0].name: cannot use host directory {tmp_path}/backup/h1: "
                             "is a symlink: bkd does not follow symlinks inside its directories; "
                             "remove it (bkd creates the directory itself)\n")


@pytest.fixture
def shared_tmp():
    """A directory another user can read (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="bkd-cc-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@root_only
def test_checks_run_as_the_effective_uid(shared_tmp):
    # Root made the directories; the daemon would run as nobody here.
    (shared_tmp / "backup").mkdir(mode=0o700)
    config = write_config(shared_tmp)
    os.chmod(config, 0o644)
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    result = check_config(config, as_nobody)
    assert result.returncode == 1
    assert result.stderr == (
        f"{config}:backup_root: cannot use backup root {shared_tmp}/backup: owned by uid 0 (root), "
        f"not by uid 65534 (nobody) that bkd runs as: chown nobody {shared_tmp}/backup, "
        "or choose another directory\n"
        f"{config}:state_dir: cannot use state directory {shared_tmp}/state: does not exist, and "
        f"uid 65534 (nobody) cannot create it in {shared_tmp}: create it with owner nobody and mode 0700\n")


def test_directory_problems_come_with_config_problems_in_one_run(tmp_path):
    (tmp_path / "backup").mkdir()
    os.chmod(tmp_path / "backup", 0o777)
    (tmp_path / "state").write_text("not a directory")
    config = write_config(tmp_path, max_parallel_hosts=0,
                          host=[{"name": "h1", "source": "/a"}, {"name": "h1", "source": "/b"}])
    result = check_config(config)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{config}:max_parallel_hosts: must be from 1 to 1000, not 0",
        f"{config}:host[1].name: duplicate host name 'h1' (first defined at host[0])",
        f"{config}:backup_root: cannot use backup root {tmp_path}/backup: writable by group or others "
        f"(mode 0777): chmod go-w {tmp_path}/backup",
        f"{config}:state_dir: cannot use state directory {tmp_path}/state: is not a directory",
        f"{config}:host[0].source: warning: /a does not exist",
        f"{config}:host[1].source: warning: /b does not exist",
    ]


def test_a_directory_key_with_a_bad_value_is_reported_once(tmp_path):
    config = write_config(tmp_path, backup_root="relative")
    result = check_config(config)
    assert result.stderr == f"{config}:backup_root: must be an absolute path, not 'relative'\n"


def test_no_dirs_skips_the_directory_and_file_checks(tmp_path):
    (tmp_path / "backup").mkdir()
    os.chmod(tmp_path / "backup", 0o777)
    config = write_config(tmp_path, ssh={"identity_file": "/nonexistent/id"},
                          host=[{"name": "h1", "source": "/nonexistent/src"}])
    result = subprocess.run([str(BIN / "bkd"), "--config", str(config), "check-config", "--no-dirs"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")


def test_the_example_output_in_the_docs_is_real(tmp_path):
    doc = (Path(__file__).parent.parent.parent / "docs" / "configuration.md").read_text()
    example = doc[doc.index("```\n/etc/bkd/bkd.toml") + 4:]
    example = example[:example.index("```")]
    etc, srv, source = tmp_path / "etc", tmp_path / "srv", tmp_path / "source"
    (etc / "conf.d").mkdir(parents=True)
    srv.mkdir(mode=0o700)
    source.mkdir()
    (tmp_path / "state").mkdir(mode=0o700)
    (etc / "webhook.secret").write_text("key\n")
    os.chmod(etc / "webhook.secret", 0o644)
    (etc / "bkd.toml").write_text(
        f'backup_root = "{srv}"\nstate_dir = "{tmp_path}/state"\n[schedule]\nsnapshot_evry = "1h"\n'
        f'[retention]\ndaily_days = 99999\n[ssh]\nidentity_file = "{etc}/id_ed25519"\n'
        f'[[notify]]\nname = "chat"\ntype = "webhook"\nurl = "https://hooks.example.org/bkd"\n'
        f'secret_file = "{etc}/webhook.secret"\n[[host]]\nname = "web1"\nsource = "web1:/"\n')
    (etc / "conf.d" / "10-db.toml").write_text(
        f'[[host]]\nname = "db 1"\nsource = "{source}"\n[[host]]\nname = "web1"\nsource = "{source}"\n')
    result = check_config(etc / "bkd.toml", in_mount_namespace(srv))
    assert result.returncode == 1
    assert result.stderr == example.replace("/etc/bkd", str(etc)).replace("/srv/bkd", str(srv))


# ---- the files keys name, pseudo filesystems, memory (issue 23) ----------------

def test_every_file_a_key_names_is_checked_and_said_where_it_is_set(tmp_path):
    """Issue 23: a missing identity_file or known_hosts_file, a secret file that
    is a directory, a key ssh would ignore, a textfile in no directory, a
    local source that is not there: each one line at the key (and the file)
    that names it; none of them checked by check-config before. Warnings:
    the daemon starts with them (ExecStartPre runs check-config) and backs
    up what it can."""
    (tmp_path / "backup").mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o700)
    key, secret, config_file = tmp_path / "id_ed25519", tmp_path / "hook.secret", tmp_path / "ssh_config"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.chmod(key, 0o644)
    secret.write_text("hmac\n")
    os.chmod(secret, 0o600)
    config_file.write_text("Host *\n")
    (tmp_path / "password").mkdir()
    (tmp_path / "a file").write_text("not a directory\n")
    config = write_config(
        tmp_path, ssh={"config_file": str(config_file), "identity_file": str(key),
                       "known_hosts_file": str(tmp_path / "known_hosts")},
        metrics={"textfile": str(tmp_path / "node-exporter" / "bkd.prom")},
        notify=[{"name": "mail", "type": "email", "to": ["a@b.c"], "username": "bkd",
                 "password_file": str(tmp_path / "password")},
                {"name": "hook", "type": "webhook", "url": "https://x.org/h", "secret_file": str(secret)}],
        host=[{"name": "h1", "source": str(tmp_path / "source")}, {"name": "h2", "source": "h2:/srv/"}])
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "20-local.toml").write_text(f'[[host]]\nname = "gone"\nsource = "{tmp_path}/gone/"\n'
                                          f'[[host]]\nname = "file"\nsource = "{tmp_path}/a file"\n')
    result = check_config(config)
    assert result.returncode == 0  # warnings: the daemon starts, and backs up what it can
    assert result.stderr.splitlines() == [
        f"{config}:ssh.identity_file: warning: {key} may be read by group or others (mode 0644), so ssh ignores it: "
        f"chmod 600 {key}",
        f"{config}:ssh.known_hosts_file: warning: {tmp_path}/known_hosts does not exist",
        f"{config}:metrics.textfile: warning: the directory {tmp_path}/node-exporter does not exist: create it, "
        "or choose another path",
        f"{config}:notify[0].password_file: warning: {tmp_path}/password is not a regular file",
        f"{conf_d}/20-local.toml:host[0].source: warning: {tmp_path}/gone/ does not exist",
        f"{conf_d}/20-local.toml:host[1].source: warning: {tmp_path}/a file is not a directory",
    ]
    # Each fixed, nothing is left to say.
    os.chmod(key, 0o600)
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "node-exporter").mkdir()
    (tmp_path / "password").rmdir()
    (tmp_path / "password").write_text("pw\n")
    os.chmod(tmp_path / "password", 0o600)
    (tmp_path / "gone").mkdir()
    (conf_d / "20-local.toml").write_text(f'[[host]]\nname = "gone"\nsource = "{tmp_path}/gone/"\n')
    result = check_config(config)
    assert (result.returncode, result.stderr) == (0, "")


@root_only
def test_files_are_checked_as_the_user_check_config_runs_as(shared_tmp):
    """Root made the key and may read it; the daemon would run as nobody here."""
    (shared_tmp / "backup").mkdir(mode=0o700)
    (shared_tmp / "state").mkdir(mode=0o700)
    os.chown(shared_tmp / "backup", NOBODY, NOBODY)
    os.chown(shared_tmp / "state", NOBODY, NOBODY)
    key = shared_tmp / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.chmod(key, 0o600)
    config = write_config(shared_tmp, ssh={"identity_file": str(key)},
                          metrics={"textfile": str(shared_tmp / "bkd.prom")})
    os.chmod(config, 0o644)
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    result = check_config(config, as_nobody)
    assert result.stderr.splitlines() == [
        f"{config}:ssh.identity_file: warning: cannot read {key}: permission denied for uid 65534 (nobody)",
        f"{config}:metrics.textfile: warning: uid 65534 (nobody) cannot write in {shared_tmp}",
    ]
    assert result.returncode == 0


def test_a_secret_others_may_read_is_a_warning_and_warnings_alone_exit_0(tmp_path):
    (tmp_path / "backup").mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o700)
    secret = tmp_path / "hook.secret"
    secret.write_text("hmac\n")
    os.chmod(secret, 0o644)
    config = write_config(tmp_path, notify=[{"name": "hook", "type": "webhook", "url": "https://x.org/h",
                                             "secret_file": str(secret)}])
    result = check_config(config)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == (f"{config}:notify[0].secret_file: warning: {secret} may be read by any user "
                             f"(mode 0644): chmod o-rwx {secret}\n")


@pytest.mark.parametrize("root, fstype", [("/proc/bkd-test", "proc"), ("/sys/fs/bkd-test/backup", "sysfs")])
def test_a_backup_root_on_a_pseudo_filesystem_is_an_error(tmp_path, root, fstype):
    """Issue 23: /proc/bkd passed check-config (root may write in /proc's
    directory entry, so it looked creatable); the daemon then failed."""
    config = write_config(tmp_path, backup_root=f"{root}-{os.getpid()}")
    result = check_config(config)
    assert result.returncode == 1
    assert result.stderr == (f"{config}:backup_root: cannot use backup root {root}-{os.getpid()}: it is on "
                             f"{fstype}, a pseudo filesystem that holds no files: choose a directory on a disk\n")


def test_directories_in_memory_are_a_warning(tmp_path):
    """A tmpfs (here in a private mount namespace, on a path with a space, as
    mountinfo escapes it): fine for a test, lost at reboot; exit 0."""
    memory = tmp_path / "in memory"
    memory.mkdir()
    config = write_config(tmp_path, backup_root=str(memory / "backup"), state_dir=str(memory / "state"))
    in_memory = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o mode=0700 none "{memory}" && exec "$@"', "sh"]
    result = check_config(config, in_memory)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr.splitlines() == [
        f"{config}:backup_root: warning: backup root {memory}/backup is on tmpfs, in memory: what bkd keeps "
        "there is lost at the next reboot",
        f"{config}:state_dir: warning: state directory {memory}/state is on tmpfs, in memory: what bkd keeps "
        "there is lost at the next reboot",
    ]
