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


def write_config(directory: Path, **keys) -> Path:
    config = {"backup_root": str(directory / "backup"), "state_dir": str(directory / "state"),
              "host": [{"name": "h1", "source": "/srv/h1"}], **keys}
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
    ]


def test_a_directory_key_with_a_bad_value_is_reported_once(tmp_path):
    config = write_config(tmp_path, backup_root="relative")
    result = check_config(config)
    assert result.stderr == f"{config}:backup_root: must be an absolute path, not 'relative'\n"


def test_no_dirs_skips_the_directory_checks(tmp_path):
    (tmp_path / "backup").mkdir()
    os.chmod(tmp_path / "backup", 0o777)
    result = subprocess.run([str(BIN / "bkd"), "--config", str(write_config(tmp_path)), "check-config",
                             "--no-dirs"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")


def test_the_example_output_in_the_docs_is_real(tmp_path):
    doc = (Path(__file__).parent.parent.parent / "docs" / "configuration.md").read_text()
    example = doc[doc.index("```\n/etc/bkd/bkd.toml") + 4:]
    example = example[:example.index("```")]
    etc, srv = tmp_path / "etc", tmp_path / "srv"
    (etc / "conf.d").mkdir(parents=True)
    srv.mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o700)
    (etc / "bkd.toml").write_text(
        f'backup_root = "{srv}"\nstate_dir = "{tmp_path}/state"\n[schedule]\nsnapshot_evry = "1h"\n'
        '[retention]\ndaily_days = 99999\n[[host]]\nname = "web1"\nsource = "web1:/"\n')
    (etc / "conf.d" / "10-db.toml").write_text(
        '[[host]]\nname = "db 1"\nsource = "/x"\n[[host]]\nname = "web1"\nsource = "/y"\n')
    result = check_config(etc / "bkd.toml", in_mount_namespace(srv))
    assert result.returncode == 1
    assert result.stderr == example.replace("/etc/bkd", str(etc)).replace("/srv/bkd", str(srv))
