"""Config loading: every fixture under fixtures/config, drop-ins, init and show."""

import subprocess
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from bkd.config import ConfigError, load_config, to_toml
from bkd.config.models import DEFAULT_EXCLUDES, parse_duration
from conftest import BIN

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"


def bkd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bkd"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", sorted((FIXTURES / "valid").glob("*.toml")), ids=lambda p: p.stem)
def test_valid_configs_pass_check_config_silently(path):
    result = bkd("--config", path.name, "check-config", cwd=path.parent)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("path", sorted((FIXTURES / "invalid").glob("*.toml")), ids=lambda p: p.stem)
def test_invalid_configs_report_every_problem_as_file_key_message(path):
    result = bkd("--config", path.name, "check-config", cwd=path.parent)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == path.with_suffix(".expected").read_text()


def test_defaults_are_filled_in():
    config = load_config(FIXTURES / "valid" / "minimal.toml")
    assert config.schedule.snapshot_every == timedelta(hours=1)
    assert config.retention.hourly_hours == 720
    assert config.archive.compression == "zstd" and config.archive.level == 3
    assert config.rsync.exclude == DEFAULT_EXCLUDES
    assert "ConnectTimeout=10" in config.ssh.options
    assert config.access.admins == ["bkd-admin"]


def test_host_overrides_merge_over_the_global_sections():
    config = load_config(FIXTURES / "valid" / "full.toml")
    db = config.settings(config.find_host("db.example-2"))
    assert db.schedule.snapshot_every == timedelta(hours=6)
    assert db.schedule.archive_every == timedelta(hours=4)  # inherited
    assert db.retention.daily_days == 30 and db.retention.hourly_hours == 720
    assert (db.archive.compression, db.archive.level) == ("gzip", 9)
    assert db.rsync.bwlimit == "1m" and db.rsync.timeout == timedelta(minutes=5)
    web = config.settings(config.find_host("web1"))
    assert web.excludes == [".cache/", "*.tmp", "*.iso"]  # the host's exclude adds to the list


def test_drop_ins_merge_in_name_order_and_errors_name_their_file(tmp_path):
    main = tmp_path / "bkd.toml"
    main.write_text('backup_root = "/srv/bkd"\n[[host]]\nname = "web1"\nsource = "web1:/"\n')
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "20-late.toml").write_text('[schedule]\nsnapshot_every = "2h"\n')
    (conf_d / "10-early.toml").write_text(
        '[schedule]\nsnapshot_every = "30m"\nenabled = false\n[[host]]\nname = "db1"\nsource = "db1:/srv/"\n')
    config = load_config(main)
    assert [h.name for h in config.host] == ["web1", "db1"]
    assert config.schedule.snapshot_every == timedelta(hours=2)
    assert config.schedule.enabled is False

    (conf_d / "30-bad.toml").write_text('[[host]]\nname = "ok"\nsource = "/a"\n[[host]]\nname = "bad name"\nsource = "/b"\n')
    with pytest.raises(ConfigError) as error:
        load_config(main)
    assert [str(p) for p in error.value.problems] == [
        f"{conf_d / '30-bad.toml'}:host[1].name: invalid host name 'bad name': "
        "use only letters, digits, '.', '_' and '-'"
    ]


def test_a_missing_config_file_is_a_clear_error(tmp_path):
    result = bkd("--config", "nope.toml", "check-config", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "nope.toml: cannot read config: No such file or directory\n"


def test_config_show_prints_the_effective_config_which_loads_back_the_same(tmp_path):
    result = bkd("--config", str(FIXTURES / "valid" / "full.toml"), "config", "show", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown["schedule"]["snapshot_every"] == "1h"
    assert shown["monthly"]["keep_months"] == 24
    assert shown["host"][1]["schedule"] == {"snapshot_every": "6h"}
    copy = tmp_path / "copy.toml"
    copy.write_text(result.stdout)
    assert load_config(copy) == load_config(FIXTURES / "valid" / "full.toml")
    assert to_toml(load_config(copy)) == result.stdout


def test_init_writes_a_valid_starter_config_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "etc" / "bkd.toml"
    args = ["--config", str(target), "init", "--backup-root", "/srv/bkd",
            "--host", "web1=web1:/home/", "--host", "local=/srv/data"]
    assert bkd(*args, cwd=tmp_path).returncode == 0
    config = load_config(target)
    assert [(h.name, h.source) for h in config.host] == [("web1", "web1:/home/"), ("local", "/srv/data")]

    again = bkd(*args, cwd=tmp_path)
    assert again.returncode == 1 and "exists; use --force" in again.stderr
    assert bkd(*args, "--force", cwd=tmp_path).returncode == 0

    to_stdout = bkd("init", "--backup-root", "/srv/x", "--output", "-", cwd=tmp_path)
    assert tomllib.loads(to_stdout.stdout)["backup_root"] == "/srv/x"


def test_init_refuses_a_bad_host(tmp_path):
    result = bkd("init", "--backup-root", "/srv/x", "--host", "bad name=/x", "--output", "-", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("-:host[0].name: invalid host name 'bad name'")


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800),
                                          ("1h30m", 5400), ("2w", 1209600)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0s", "1", "h", "1x", "-1h", "1.5h", "1 h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
