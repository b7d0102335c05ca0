"""Config loading: every fixture under fixtures/config, ranges, drop-ins, init and show."""

import subprocess
import tomllib
from datetime import time, timedelta
from pathlib import Path

import pydantic
import pytest
import tomli_w

from bkd.config import ConfigError, load_config, to_dict, to_toml
from bkd.config import models
from bkd.config.models import (
    DEFAULT_EXCLUDES,
    Config,
    EmailSink,
    HostName,
    Range,
    WebhookSink,
    parse_duration,
    redact_url,
    valid_host_name,
)
from conftest import BIN

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"


def bkd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bkd"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "bkd.toml"
    path.write_text(text)
    return load_config(path)


def problems_of(tmp_path: Path, data: dict) -> list[str]:
    path = tmp_path / "bkd.toml"
    path.write_text(tomli_w.dumps(data))
    try:
        load_config(path)
    except ConfigError as e:
        return [str(p).removeprefix(f"{path}:") for p in e.problems]
    return []


# ---------------------------------------------------------------- fixtures

@pytest.mark.parametrize("path", sorted((FIXTURES / "valid").glob("*.toml")), ids=lambda p: p.stem)
def test_valid_configs_pass_check_config_silently(path):
    # --no-dirs: the fixtures name /srv/bkd; directory checks have their own tests.
    result = bkd("--config", path.name, "check-config", "--no-dirs", cwd=path.parent)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("path", sorted((FIXTURES / "invalid").glob("*.toml")), ids=lambda p: p.stem)
def test_invalid_configs_report_every_problem_as_file_key_message(path):
    result = bkd("--config", path.name, "check-config", "--no-dirs", cwd=path.parent)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == path.with_suffix(".expected").read_text()


def test_the_daemon_refuses_to_start_on_an_unknown_key_and_says_which_was_meant(tmp_path):
    """The same messages as check-config (and reload): one loader."""
    (tmp_path / "bkd.toml").write_text('backup_root = "/srv/bkd"\n[schedule]\nsnapshot_evry = "1h"\n'
                                       '[[host]]\nname = "h"\nsource = "/s"\n[host.retention]\ndaily = 3\n')
    result = bkd("--config", "bkd.toml", "serve", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("bkd.toml:schedule.snapshot_evry: unknown key; did you mean 'snapshot_every'?\n"
                             "bkd.toml:host[0].retention.daily: unknown key; did you mean 'daily_days'?\n")


def test_control_characters_in_a_key_or_a_path_are_shown_escaped(tmp_path):
    """A quoted TOML key, a path or a drop-in's file name may hold escape
    sequences; check-config wrote them to the terminal as they were."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "bkd.toml").write_text(f'backup_root = "{tmp_path}/backup"\nstate_dir = "{tmp_path}/state"\n'
                                       '"evil\\u001b[31m" = 1\n[ssh]\nidentity_file = "/x\\u001b[2J\\u009b"\n')
    (tmp_path / "conf.d" / "1\x1b]0;t\x07.toml").write_text("[schedule]\nenabled = 1\n")
    result = bkd("--config", "bkd.toml", "check-config", cwd=tmp_path)
    assert result.stderr.splitlines() == [
        "conf.d/1\\x1b]0;t\\x07.toml:schedule.enabled: must be a valid boolean, not 1",
        "bkd.toml:evil\\x1b[31m: unknown key",
        "bkd.toml:ssh.identity_file: warning: /x\\x1b[2J\\x9b does not exist",
    ]


def test_cross_field_problems_are_reported_with_per_key_problems():
    # Issue 9 defect 14: the duplicate host name used to appear only once the
    # unknown keys were fixed.
    expected = (FIXTURES / "invalid" / "cross_field_with_per_key_problems.expected").read_text()
    assert "unknown key" in expected and "duplicate host name 'web1'" in expected
    assert "duplicate sink name" in expected and "gzip levels are 1-9" in expected
    assert "no [[notify]] sink is named 'ops-mail'" in expected


def test_a_bad_value_is_reported_once_not_again_by_a_cross_field_check(tmp_path):
    assert problems_of(tmp_path, {"backup_root": "/srv/bkd",
                                  "archive": {"compression": "gzip", "level": 25},
                                  "rpc": {"max_connections": 0}}) == [
        "rpc.max_connections: must be from 1 to 65536, not 0",
        "archive.level: must be from 1 to 19, not 25",
    ]


# ---------------------------------------------------------------- defaults

def test_defaults_are_filled_in():
    config = load_config(FIXTURES / "valid" / "minimal.toml")
    assert config.schedule.snapshot_every == timedelta(hours=1)
    assert config.retention.hourly_hours == 720
    assert config.archive.compression == "zstd" and config.archive.level == 3
    assert config.rsync.exclude == [] and config.rsync.exclude_defaults is True
    assert "ConnectTimeout=10" in config.ssh.options
    assert config.access.admins == ["bkd-admin"] and config.access.remote_restorers == []
    assert (config.max_parallel_heavy, config.server_name) == (1, "")
    assert config.history.keep == timedelta(days=400)
    assert (config.rpc.max_connections, config.rpc.max_connections_per_uid) == (256, 32)
    assert config.rpc.idle_timeout == timedelta(minutes=10)
    assert (config.rpc.max_in_flight, config.rpc.unread_grace) == (8, timedelta(seconds=30))
    alerts = config.alerts
    assert (alerts.failures_before_alert, alerts.hung_after, alerts.disk_free_percent,
            alerts.disk_full_days, alerts.remind_every) == (1, None, 10, 14, timedelta(days=1))
    assert config.notify == []
    assert (config.heartbeat.url, config.heartbeat.every) == ("", timedelta(minutes=5))
    report = config.report
    assert (report.enabled, report.at, report.timezone, report.notify) == (False, time(7, 0), "UTC", [])


def test_the_spec_example_loads_with_every_key():
    config = load_config(FIXTURES / "valid" / "full.toml")
    mail, chat = config.notify
    assert (mail.type, mail.from_, mail.to, mail.smtp_port) == ("email", "bkd@backup1", ["ops@example.org"], 25)
    assert (chat.type, chat.secret_file, chat.kinds) == ("webhook", "/etc/bkd/webhook.secret",
                                                         ["run_failed", "auth", "integrity"])
    assert chat.url == "https://hooks.example.org/bkd/T0KEN?sig=abc"  # the real URL; only dumps redact
    assert config.find_sink("ops-mail") is mail and config.find_sink("nope") is None
    assert config.report.zone.key == "Europe/Berlin"
    assert config.hosts["web1"].host.ping_url == "https://hc-ping.com/0d1e2f3a-web1"
    assert config.hosts["db.example-2"].host.hook_timeout == timedelta(minutes=30)


def test_from_is_a_key_of_email_sinks_and_from_underscore_is_not(tmp_path):
    sink = {"name": "m", "type": "email", "to": ["a@b.c"]}
    assert problems_of(tmp_path, {"backup_root": "/r", "notify": [{**sink, "from_": "x@y.z"}]}) == [
        "notify[0].from_: unknown key; did you mean 'from'?"]
    assert problems_of(tmp_path, {"backup_root": "/r", "notify": [{**sink, "from": "x@y.z"}]}) == []


def test_an_email_sink_with_a_webhook_key_is_an_unknown_key(tmp_path):
    sink = {"name": "m", "type": "email", "to": ["a@b.c"], "url": "https://x.org/"}
    assert problems_of(tmp_path, {"backup_root": "/r", "notify": [sink]}) == ["notify[0].url: unknown key"]


def test_the_default_report_validates_without_sinks_but_an_enabled_one_needs_a_sink(tmp_path):
    assert problems_of(tmp_path, {"backup_root": "/r", "report": {"at": "23:59"}}) == []
    assert problems_of(tmp_path, {"backup_root": "/r", "report": {"enabled": True}}) == [
        "report.notify: the daily report is enabled but sent to no sink: name one here, or set enabled = false"]


def test_report_at_is_hh_mm_as_a_string_or_a_toml_local_time(tmp_path):
    assert load_text(tmp_path, 'backup_root = "/r"\n[report]\nat = 06:30:00\n').report.at == time(6, 30)
    assert load_text(tmp_path, 'backup_root = "/r"\n[report]\nat = "23:59"\n').report.at == time(23, 59)
    for bad in ('"7:00"', '"24:00"', '"12:60"', "07:00:30", '"07:00:00"'):
        path = tmp_path / "bkd.toml"
        path.write_text(f'backup_root = "/r"\n[report]\nat = {bad}\n')
        with pytest.raises(ConfigError, match="report.at: invalid time of day"):
            load_config(path)


def test_server_name_is_one_line_of_at_most_253_characters(tmp_path):
    assert problems_of(tmp_path, {"backup_root": "/r", "server_name": "b" * 253}) == []
    assert problems_of(tmp_path, {"backup_root": "/r", "server_name": "b" * 254}) == [
        "server_name: at most 253 characters, not 254"]
    assert problems_of(tmp_path, {"backup_root": "/r", "server_name": "b\r\nBcc: x@y.z"}) == [
        "server_name: control characters are not allowed: 'b\\r\\nBcc: x@y.z'"]


def test_strings_are_not_numbers_and_numbers_are_not_booleans(tmp_path):
    assert problems_of(tmp_path, {"backup_root": "/r", "max_parallel_hosts": "4",
                                  "schedule": {"enabled": 1}}) == [
        "max_parallel_hosts: must be a valid integer, not '4'",
        "schedule.enabled: must be a valid boolean, not 1",
    ]


# ------------------------------------------------------------------ ranges

def _range_fields(model: type[pydantic.BaseModel], prefix: tuple = ()):
    """(key, Range, type) of every ranged key, found from the models themselves
    so that a new range cannot go untested ([[host]] overrides: below)."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name,)
        yield from ((key, m, field.annotation) for m in field.metadata if isinstance(m, Range))
        if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel):
            yield from _range_fields(field.annotation, key)
    if model is Config:
        for sink in (EmailSink, WebhookSink):
            yield from _range_fields(sink, ("notify",))


RANGES = list(_range_fields(Config))


def _with(key: tuple, value) -> dict:
    """A minimal config that sets key (a [[notify]] sink's key on an email sink)."""
    data = {"backup_root": "/srv/bkd"}
    if key[0] == "notify":
        data["notify"] = [{"name": "m", "type": "email", "to": ["a@b.c"], key[1]: value}]
    elif len(key) == 1:
        data[key[0]] = value
    else:
        data[key[0]] = {key[1]: value}
    if key[0] == "rpc":  # the per-uid limit may not exceed the total
        data["rpc"] = {"max_connections": 65536, "max_connections_per_uid": 1, **data["rpc"]}
    return data


def test_every_numeric_key_has_a_range():
    keys = {".".join(k) for k, _, _ in RANGES}
    assert keys == {
        "max_parallel_hosts", "max_parallel_heavy", "rpc.max_connections", "rpc.max_connections_per_uid",
        "rpc.max_in_flight", "schedule.monthly_day", "schedule.stale_factor", "retention.hourly_hours", "retention.daily_days",
        "retention.monthly_months", "archive.level", "archive.keep_days", "monthly.keep_months",
        "verify.sample_percent", "alerts.failures_before_alert", "alerts.disk_free_percent",
        "alerts.disk_full_days", "notify.smtp_port", "anomaly.baseline", "anomaly.min_files", "anomaly.factor",
    }


@pytest.mark.parametrize("key,bounds,kind", RANGES, ids=[".".join(k) for k, _, _ in RANGES])
def test_each_range_accepts_its_bounds_and_refuses_beyond(tmp_path, key, bounds, kind):
    location = f"notify[0].{key[1]}" if key[0] == "notify" else ".".join(key)
    step = 1 if kind is int else 0.5
    low, high = kind(bounds.low), kind(bounds.high)
    assert problems_of(tmp_path, _with(key, high)) == []
    assert problems_of(tmp_path, _with(key, low + step if bounds.low_open else low)) == []
    too_low = low if bounds.low_open else low - step
    for value in (too_low, high + step) + ((float("inf"), float("nan"), float("-inf")) if kind is float else ()):
        assert problems_of(tmp_path, _with(key, value)) == [
            f"{location}: must be {bounds.describe()}, not {value!r}"]


@pytest.mark.parametrize("section,key,value", [("retention", "hourly_hours", 876001),
                                               ("retention", "daily_days", 36501),
                                               ("archive", "keep_days", 36501),
                                               ("schedule", "stale_factor", float("inf"))])
def test_host_overrides_have_the_same_ranges(tmp_path, section, key, value):
    data = {"backup_root": "/r", "host": [{"name": "h", "source": "/s", section: {key: value}}]}
    [problem] = problems_of(tmp_path, data)
    assert problem.startswith(f"host[0].{section}.{key}: must be from ")


def _duration_fields(model=Config, prefix=()):
    for name, field in model.model_fields.items():
        parsers = {getattr(m, "func", None) for m in field.metadata}
        if parsers & {parse_duration, models._parse_optional_duration}:
            yield prefix + (name,)
        if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel):
            yield from _duration_fields(field.annotation, prefix + (name,))


DURATIONS = list(_duration_fields())


def test_the_duration_keys_are_found():
    assert {".".join(k) for k in DURATIONS} == {
        "history.keep", "history.copy_every", "rpc.idle_timeout", "rpc.unread_grace", "schedule.snapshot_every",
        "schedule.archive_every",
        "rsync.timeout", "verify.every", "alerts.hung_after", "alerts.remind_every", "alerts.retry_after",
        "heartbeat.every"}


@pytest.mark.parametrize("key", DURATIONS, ids=[".".join(k) for k in DURATIONS])
def test_every_duration_is_1s_to_10_years(tmp_path, key):
    assert problems_of(tmp_path, _with(key, "1s")) == []
    assert problems_of(tmp_path, _with(key, "3650d")) == []
    for bad in ("0s", "3651d", "99999999999999w"):
        assert problems_of(tmp_path, _with(key, bad)) == [
            f"{'.'.join(key)}: invalid duration {bad!r}: must be from 1s to 10 years (3650d)"]


def test_an_absurd_duration_is_a_clean_error_not_an_overflow():
    # Issue 9 defect 12: OverflowError traceback from check-config.
    with pytest.raises(ValueError, match="must be from 1s to 10 years"):
        parse_duration("99999999999999w")
    with pytest.raises(ValueError, match="must be from 1s to 10 years"):
        parse_duration("9" * 5000 + "s")  # beyond int()'s default digit limit too


def test_hung_after_is_empty_or_a_duration(tmp_path):
    assert load_text(tmp_path, 'backup_root = "/r"\n[alerts]\nhung_after = "2h"\n').alerts.hung_after \
        == timedelta(hours=2)
    assert load_text(tmp_path, 'backup_root = "/r"\n[alerts]\nhung_after = ""\n').alerts.hung_after is None


# -------------------------------------------------------------- host names

@pytest.mark.parametrize("name,ok", [
    ("web1", True), ("db.example-2", True), ("a_b", True), ("x" * 64, True),
    ("x" * 65, False), ("h" * 250, False), ("", False), (".hidden", False), ("..", False),
    ("a/b", False), ("../../etc", False), ("a b", False), ("a\0b", False), ("é", False),
    ("web1\n", False), (None, False), (5, False),
])
def test_valid_host_name(name, ok):
    assert valid_host_name(name) is ok


def test_host_name_type_for_rpc_params():
    class Params(pydantic.BaseModel):
        host: HostName

    assert Params(host="web1").host == "web1"
    with pytest.raises(pydantic.ValidationError, match="at most 64 characters"):
        Params(host="x" * 65)
    with pytest.raises(pydantic.ValidationError, match="invalid host name"):
        Params(host="../../root")


# ----------------------------------------------------------------- excludes

def test_user_excludes_add_to_the_defaults_never_replace_them(tmp_path):
    # Issue 10 defect 10: setting rsync.exclude dropped /proc/*, /sys/*, /dev/*.
    config = load_text(tmp_path, 'backup_root = "/r"\n[rsync]\nexclude = ["*.iso"]\n'
                                 '[[host]]\nname = "h"\nsource = "/"\nexclude = ["/srv/big/"]\n')
    excludes = config.hosts["h"].excludes
    assert excludes == [*DEFAULT_EXCLUDES, "*.iso", "/srv/big/"]
    assert {"/proc/*", "/sys/*", "/dev/*"} <= set(excludes)


def test_an_empty_exclude_list_keeps_the_defaults(tmp_path):
    config = load_text(tmp_path, 'backup_root = "/r"\n[rsync]\nexclude = []\n[[host]]\nname = "h"\nsource = "/"\n')
    assert config.hosts["h"].excludes == list(DEFAULT_EXCLUDES)


def test_exclude_defaults_can_be_turned_off_globally_and_per_host(tmp_path):
    config = load_text(tmp_path, 'backup_root = "/r"\n[rsync]\nexclude_defaults = false\nexclude = ["a"]\n'
                                 '[[host]]\nname = "off"\nsource = "/"\n'
                                 '[[host]]\nname = "on"\nsource = "/"\n[host.rsync]\nexclude_defaults = true\n')
    assert config.hosts["off"].excludes == ["a"]
    assert config.hosts["on"].excludes == [*DEFAULT_EXCLUDES, "a"]


def test_host_overrides_merge_over_the_global_sections():
    config = load_config(FIXTURES / "valid" / "full.toml")
    db = config.hosts["db.example-2"]
    assert db.schedule.snapshot_every == timedelta(hours=6)
    assert db.schedule.archive_every == timedelta(hours=4)  # inherited
    assert db.retention.daily_days == 30 and db.retention.hourly_hours == 720
    assert (db.archive.compression, db.archive.level) == ("gzip", 9)
    assert db.rsync.bwlimit == "1m" and db.rsync.timeout == timedelta(minutes=5)
    assert db.excludes == [".cache/", "*.tmp"]  # exclude_defaults = false for this host
    web = config.hosts["web1"]  # web1:/home/ holds none of the host paths of the defaults
    assert web.excludes == [*models.default_excludes("/home/"), ".cache/", "*.tmp", "*.iso"]
    assert "/proc/*" not in web.excludes and "*.pyc" in web.excludes


def test_host_settings_are_built_once_per_config_and_never_go_stale_in_a_copy():
    # `status` asked for every host's settings several times per call, each a
    # model_copy of four sections; a config is frozen, so once is enough.
    config = load_config(FIXTURES / "valid" / "full.toml")
    db = config.hosts["db.example-2"]
    assert config.hosts["db.example-2"] is db and "nope" not in config.hosts
    assert list(config.hosts) == [host.name for host in config.host]
    assert config.model_dump() == load_config(FIXTURES / "valid" / "full.toml").model_dump()
    assert config == load_config(FIXTURES / "valid" / "full.toml")  # the index is not part of the value
    # A copy must see its own sections and hosts, not the index of the config it was copied from.
    copy = config.model_copy(update={"retention": config.retention.model_copy(update={"hourly_hours": 5}),
                                     "host": [db.host.model_copy(update={"name": "renamed"})]})
    assert "db.example-2" not in copy.hosts and copy.hosts["renamed"].host.name == "renamed"
    assert copy.hosts["renamed"].retention.hourly_hours == 5
    assert config.hosts["db.example-2"].retention.hourly_hours == 720
    assert config.hosts["db.example-2"] is db


# ------------------------------------------------------ drop-ins, show, init

def test_a_single_host_table_in_a_drop_in_is_an_error_not_a_silent_loss_of_hosts(tmp_path):
    """`[host]` instead of `[[host]]` in a drop-in replaced every host defined
    before it, and a later drop-in's [[host]] hid the error: check-config
    passed and a reload removed the hosts, whose backups then simply stopped."""
    main = tmp_path / "bkd.toml"
    main.write_text('[[host]]\nname = "web1"\nsource = "web1:/"\n')
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "20-typo.toml").write_text('[host]\nname = "t1"\nsource = "t1:/"\n')
    (conf_d / "30-more.toml").write_text('[[host]]\nname = "db1"\nsource = "db1:/"\n')
    with pytest.raises(ConfigError) as error:
        load_config(main)
    assert [str(p) for p in error.value.problems] == [
        f"{conf_d / '20-typo.toml'}:host: must be an array of tables ([[host]]), not a table ([host])"]
    (conf_d / "20-typo.toml").write_text('notify = "mail"\n')
    with pytest.raises(ConfigError) as error:
        load_config(main)
    assert [str(p) for p in error.value.problems] == [
        f"{conf_d / '20-typo.toml'}:notify: must be an array of tables ([[notify]]), not 'mail'"]


def test_drop_ins_merge_in_name_order_and_errors_name_their_file(tmp_path):
    main = tmp_path / "bkd.toml"
    main.write_text('backup_root = "/srv/bkd"\n[[host]]\nname = "web1"\nsource = "web1:/"\n'
                    '[[notify]]\nname = "mail"\ntype = "email"\nto = ["a@b.c"]\n')
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "20-late.toml").write_text('[schedule]\nsnapshot_every = "2h"\n')
    (conf_d / "10-early.toml").write_text(
        '[schedule]\nsnapshot_every = "30m"\nenabled = false\n[[host]]\nname = "db1"\nsource = "db1:/srv/"\n'
        '[[notify]]\nname = "hook"\ntype = "webhook"\nurl = "https://x.org/h"\n')
    config = load_config(main)
    assert [h.name for h in config.host] == ["web1", "db1"]
    assert [s.name for s in config.notify] == ["mail", "hook"]
    assert config.schedule.snapshot_every == timedelta(hours=2)
    assert config.schedule.enabled is False

    (conf_d / "30-bad.toml").write_text(
        '[[host]]\nname = "ok"\nsource = "/a"\n[[host]]\nname = "bad name"\nsource = "/b"\n'
        '[[host]]\nname = "web1"\nsource = "/c"\n'
        '[[notify]]\nname = "mail"\ntype = "webhook"\nurl = "https://x.org/h"\nsecret = "x"\n')
    with pytest.raises(ConfigError) as error:
        load_config(main)
    bad = conf_d / "30-bad.toml"
    assert [str(p) for p in error.value.problems] == [
        f"{bad}:notify[0].secret: unknown key; did you mean 'secret_file'?",
        f"{bad}:host[1].name: invalid host name 'bad name': use only letters, digits, '.', '_' and '-'",
        f"{bad}:host[2].name: duplicate host name 'web1' (first defined at {main}:host[0])",
        f"{bad}:notify[0].name: duplicate sink name 'mail' (first defined at {main}:notify[0])",
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
    assert shown["alerts"]["hung_after"] == ""
    copy = tmp_path / "copy.toml"
    copy.write_text(result.stdout)
    check = bkd("--config", str(copy), "check-config", "--no-dirs", cwd=tmp_path)
    assert (check.returncode, check.stderr) == (0, "")
    # Equal but for the redacted URLs, which the dumps of both redact.
    assert to_dict(load_config(copy)) == to_dict(load_config(FIXTURES / "valid" / "full.toml"))
    assert to_toml(load_config(copy)) == result.stdout


def test_config_show_prints_the_users_excludes_and_the_flag_not_the_merged_list(tmp_path):
    result = bkd("--config", str(FIXTURES / "valid" / "full.toml"), "config", "show", cwd=tmp_path)
    shown = tomllib.loads(result.stdout)
    assert shown["rsync"]["exclude"] == [".cache/", "*.tmp"]
    assert shown["rsync"]["exclude_defaults"] is True
    assert shown["host"][1]["rsync"]["exclude_defaults"] is False
    assert "/proc/*" not in result.stdout


def test_config_show_never_prints_a_token_url(tmp_path):
    result = bkd("--config", str(FIXTURES / "valid" / "full.toml"), "config", "show", cwd=tmp_path)
    for secret in ("T0KEN", "sig=abc", "5f2c6a1e", "0d1e2f3a"):
        assert secret not in result.stdout
    shown = tomllib.loads(result.stdout)
    assert shown["notify"][1]["url"] == "https://hooks.example.org/...redacted..."
    assert shown["heartbeat"]["url"] == "https://hc-ping.com/...redacted..."
    assert shown["host"][0]["ping_url"] == "https://hc-ping.com/...redacted..."
    assert shown["notify"][1]["secret_file"] == "/etc/bkd/webhook.secret"  # a path, never the secret


@pytest.mark.parametrize("url,shown", [
    ("", ""),
    ("https://hc-ping.com/5f2c6a1e-uuid", "https://hc-ping.com/...redacted..."),
    ("https://hooks.example.org/bkd?token=abc#frag", "https://hooks.example.org/...redacted..."),
    ("https://user:pw@example.org", "https://example.org/...redacted..."),
    ("http://example.org:8080/x", "http://example.org:8080/...redacted..."),
    ("http://[::1]:9/x", "http://[::1]:9/...redacted..."),
    ("https://example.org", "https://example.org"),
    ("https://example.org/", "https://example.org"),
    ("https://example.org?k=v", "https://example.org/...redacted..."),
    ("not a url with token abc", "...redacted..."),
    ("http://[bad/token", "...redacted..."),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_a_redacted_url_is_still_a_valid_url(tmp_path):
    redacted = redact_url("https://hc-ping.com/secret?x=1")
    assert problems_of(tmp_path, {"backup_root": "/r", "heartbeat": {"url": redacted}}) == []


def test_a_bad_url_is_reported_without_its_token(tmp_path):
    problems = problems_of(tmp_path, {"backup_root": "/r", "heartbeat": {"url": "ftp://h.org/SECRET-TOKEN"}})
    assert problems == ["heartbeat.url: invalid URL 'ftp://h.org/...redacted...': "
                        "use http://HOST/PATH or https://HOST/PATH"]


def test_the_config_is_frozen():
    config = load_config(FIXTURES / "valid" / "full.toml")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.max_parallel_hosts = 9
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.host[0].name = "other"
    settings = config.hosts["web1"]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.retention.hourly_hours = 1


def test_a_config_built_in_code_gets_the_cross_field_checks_too():
    with pytest.raises(pydantic.ValidationError, match=r"host\[1\]\.name: duplicate host name 'a'"):
        Config.model_validate({"backup_root": "/r", "host": [{"name": "a", "source": "/x"},
                                                             {"name": "a", "source": "/y"}]})


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


def test_init_refuses_duplicate_hosts(tmp_path):
    result = bkd("init", "--backup-root", "/srv/x", "--host", "a=/x", "--host", "a=/y", "--output", "-",
                 cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "-:host[1].name: duplicate host name 'a' (first defined at host[0])\n"


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800),
                                          ("1h30m", 5400), ("2w", 1209600), ("1s", 1), ("3650d", 315360000)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0s", "1", "h", "1x", "-1h", "1.5h", "1 h", "3651d", 3600, None])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def _path_fields(model=Config, prefix=()):
    """(key, field) of every key that holds an optional path ("" or absolute)."""
    models_ = (model,) if model is not Config else (Config, EmailSink, WebhookSink)
    for each in models_:
        for name, field in each.model_fields.items():
            key = prefix + ((field.alias or name),) if each is model else ("notify", field.alias or name)
            if models._check_optional_path in {getattr(m, "func", None) for m in field.metadata}:
                yield key, field
            if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel):
                yield from _path_fields(field.annotation, key)


def test_every_key_that_names_a_file_says_what_bkd_does_with_it():
    """check-config checks the files keys name by the schema's NamedFile mark:
    a new path key without one would go unchecked."""
    marked = {".".join(key): [m.role for m in field.metadata if isinstance(m, models.NamedFile)]
              for key, field in _path_fields()}
    assert marked == {"ssh.config_file": ["read"], "ssh.identity_file": ["key"], "ssh.known_hosts_file": ["read"],
                      "ssh.restore_identity_file": ["key"],
                      "metrics.textfile": ["written"], "notify.password_file": ["secret"],
                      "notify.secret_file": ["secret"]}
