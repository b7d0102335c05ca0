"""`bkd config sample` and `bkd init`: config files written from the schema,
every key with its description, type, range and default as comments. The
sample loads as it is; with every commented-out line restored it still
loads, and holds exactly the schema's defaults."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from pydantic import Field

from bkd.config import load_config, to_dict
from bkd.config.models import Config, Section, example
from bkd.config.sample import render
from bkd.config.schema import Table, table_of
from conftest import BIN


def bkd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bkd"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def uncomment(text: str) -> str:
    """Every commented-out line restored: `#key = value`, `#[table]` and an
    array's `#    item,` lines lose their '#'; prose (`# text`) stays."""
    return "\n".join(re.sub(r"^#(?=\S|    )", "", line) for line in text.split("\n"))


def commented_keys(text: str) -> list[str]:
    return re.findall(r"^#(\w+) = ", text, re.M)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> str:
    result = bkd("config", "sample", cwd=tmp_path_factory.mktemp("cwd"))
    assert (result.returncode, result.stderr) == (0, "")
    return result.stdout


def test_the_sample_loads_unchanged(sample, tmp_path):
    (tmp_path / "bkd.toml").write_text(sample)
    # --no-dirs: /srv/bkd is the example's backup root, not this machine's.
    result = bkd("--config", "bkd.toml", "check-config", "--no-dirs", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert load_config(tmp_path / "bkd.toml") == Config(backup_root="/srv/bkd")


def test_the_sample_needs_no_config(tmp_path):
    result = bkd("--config", str(tmp_path / "missing.toml"), "config", "sample", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == render()


def test_every_line_restored_the_sample_still_loads_with_the_schemas_defaults(sample, tmp_path):
    """What a commented-out line shows is the key's real default (and a valid
    value), and the examples of [[notify]] and [[host]] are valid entries."""
    (tmp_path / "bkd.toml").write_text(uncomment(sample))
    config = load_config(tmp_path / "bkd.toml")
    defaults = to_dict(Config(backup_root="/srv/bkd"))
    shown = to_dict(config)
    assert {k: v for k, v in shown.items() if k not in ("notify", "host", "replica")} == {
        k: v for k, v in defaults.items() if k not in ("notify", "host", "replica")}
    assert [(s.name, s.type) for s in config.notify] == [("ops-mail", "email"), ("chat", "webhook")]
    assert [(h.name, h.source) for h in config.host] == [("web1", "web1:/home/")]
    assert [(r.name, r.source) for r in config.replica] == [("primary1", "bkd-primary:/srv/bkd/")]
    # Each entry's keys beyond the example's hold their defaults too.
    assert to_dict(config)["host"][0] == {**to_dict(Config(backup_root="/r", host=[
        {"name": "web1", "source": "web1:/home/"}]))["host"][0], "schedule": {}, "retention": {},
        "archive": {}, "rsync": {}, "anomaly": {}}


def test_every_key_comes_with_its_description_type_and_range(sample):
    """Above each `#key = value`: the description, then type and range."""
    blocks = re.findall(r"((?:^# .*\n)+)#?(\w+) = ", sample, re.M)
    facts = {}
    for comments, key in blocks:
        lines = [line[2:] for line in comments.splitlines()]
        facts.setdefault(key, " ".join(lines))
    assert "snapshot_every" in facts and "the interval between snapshots of a host" in facts["snapshot_every"]
    assert facts["max_parallel_hosts"].endswith("integer, from 1 to 1000")
    assert facts["compression"].endswith('one of "gzip", "pigz", "zstd"')
    assert facts["backup_root"].endswith("absolute path; required")
    assert len(blocks) == len(re.findall(r"^#?\w+ = ", sample, re.M))  # no key without its comments


def walk(table: Table, path: str = ""):
    """(dotted name, table) of every table of the schema, tagged array members included."""
    yield path, table
    for _, member in table.members:
        yield path, member
    for sub in table.tables:
        yield from walk(sub, f"{path}.{sub.name}" if path else sub.name)


def test_every_key_has_a_one_line_description_and_every_table_a_docstring():
    """The descriptions live in the schema (Field(description=...), the
    models' docstrings): the sample, bkd.toml(5) and the docs read them there."""
    missing, long = [], []
    for path, table in walk(table_of(Config)):
        if not table.description:
            missing.append(path or "(top level)")
        for key in table.keys:
            name = f"{path}.{key.name}" if path else key.name
            if not key.description:
                missing.append(name)
            elif "\n" in key.description or len(key.description) > 100:
                long.append(name)
    assert (missing, long) == ([], [])


def test_every_required_key_of_an_array_of_tables_has_an_example():
    """The sample shows a commented-out entry of each array of tables, with
    example values (models.example) for its required keys."""
    for path, table in walk(table_of(Config)):
        for key in table.keys:
            if key.required and (table.array or not path) and not table.tag:
                assert key.example, f"{path}.{key.name}: no example value (models.example)"


def test_the_sample_follows_the_schema_whatever_it_holds():
    """A table, an array of tables or a key added to the schema is in the
    sample without a change to the generator; a required key without an
    example is an error, not a silent gap."""

    class Mirror(Section):
        """A second copy elsewhere."""
        model_config = example(name="m1", source="backup2:/srv/")
        name: str = Field(description="its name")
        source: str = Field(description="where it is")
        every: int = Field(3, description="how often")

    class Knobs(Section):
        """How the knobs turn."""
        speed: int = Field(3, description="turns per second")

    class Demo(Section):
        """A demo."""
        model_config = example(root="/r")
        root: str = Field(description="the root")
        knobs: Knobs = Field(default_factory=Knobs)
        mirror: list[Mirror] = Field(default_factory=list)

    text = render(model=Demo)
    assert '\nroot = "/r"\n' in text and "\n[knobs]\n" in text and "\n#speed = 3\n" in text
    assert "\n#[[mirror]]\n" in text and '\n#source = "backup2:/srv/"\n' in text
    restored = tomllib.loads(uncomment(text))
    assert restored == {"root": "/r", "knobs": {"speed": 3}, "mirror": [{"name": "m1", "source": "backup2:/srv/",
                                                                          "every": 3}]}
    assert tomllib.loads(render({"root": "/x", "mirror": [{"name": "a", "source": "/b"}]}, model=Demo)) == {
        "root": "/x", "knobs": {}, "mirror": [{"name": "a", "source": "/b"}]}

    class Bare(Section):
        """No example."""
        root: str = Field(description="the root")

    with pytest.raises(ValueError, match="the required key root has no example"):
        render(model=Bare)


# ---------------------------------------------------------------- bkd init

def test_init_writes_host_tables_with_comments_not_an_inline_array(tmp_path):
    """Issue 23: `bkd init` wrote `host = [{ name = ..., source = ... }]` and no comment."""
    result = bkd("init", "--backup-root", "/srv/x", "--host", "web1=web1:/home/", "--host", "db=/srv/db",
                 "--output", "-", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    text = result.stdout
    assert "host = [" not in text and text.count("\n[[host]]\n") == 2
    web1 = text[text.index("\n[[host]]\n"):]
    assert re.match(r"\n\[\[host\]\]\n\n# names \{backup_root\}/\{name\}/.*\n# host name; required\n"
                    r'name = "web1"\n', web1)
    assert '\n# absolute path; required\nbackup_root = "/srv/x"\n' in text
    assert "\n#snapshot_every = \"1h\"\n" in text  # every other key, commented out at its default
    data = tomllib.loads(text)
    assert data == {"backup_root": "/srv/x", "history": {}, "rpc": {}, "schedule": {}, "retention": {},
                    "archive": {}, "monthly": {}, "rsync": {}, "ssh": {}, "verify": {}, "anomaly": {}, "metrics": {},
                    "alerts": {}, "heartbeat": {}, "report": {}, "access": {},
                    "host": [{"name": "web1", "source": "web1:/home/"}, {"name": "db", "source": "/srv/db"}]}
    (tmp_path / "bkd.toml").write_text(text)
    check = bkd("--config", "bkd.toml", "check-config", "--no-dirs", cwd=tmp_path)
    assert (check.returncode, check.stderr) == (0, "")


def test_init_without_hosts_shows_a_commented_out_host(tmp_path):
    result = bkd("init", "--backup-root", "/srv/x", "--output", "-", cwd=tmp_path)
    assert result.returncode == 0
    assert "\n#[[host]]\n" in result.stdout and "host" not in tomllib.loads(result.stdout)
    # the example host, the two example sinks and the example replica
    assert commented_keys(result.stdout).count("name") == 4


def test_init_writes_any_value_as_valid_toml(tmp_path):
    """Values are escaped as TOML wants: quotes, backslashes, a DEL (JSON leaves it raw; TOML forbids it)."""
    root = '/srv/a "quoted" \\ back\x7fslash'
    result = bkd("init", "--backup-root", root, "--output", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)["backup_root"] == root
