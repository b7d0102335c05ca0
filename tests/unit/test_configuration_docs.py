"""docs/configuration.md lists every key with the default and range the models have."""

import re
import tomllib
from pathlib import Path

import pytest

from bkd.config import models
from bkd.config.models import Config, EmailSink, Host, Range, Replica, Section, WebhookSink, zone

DOC = Path(__file__).parent.parent.parent / "docs" / "configuration.md"
ROW = re.compile(r"^\| `([a-z_.]+)` \|\s*(.*?)\s*\|\s*(.*?)\s*\|.*\|$")


def documented() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        if match := ROW.match(line):
            key, default, range_ = match.groups()
            assert key not in rows, f"{key} documented twice"
            rows[key] = (default, range_)
    return rows


def model_keys() -> dict[str, tuple[object, object]]:
    """key -> (pydantic field, the default as `config show` prints it)."""
    keys = {}
    defaults = Config(backup_root="/srv/bkd").model_dump(mode="json", by_alias=True)
    for name, field in Config.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            for sub, subfield in field.annotation.model_fields.items():
                keys[f"{name}.{subfield.alias or sub}"] = (subfield, defaults[name][subfield.alias or sub])
        elif name not in ("host", "notify", "replica"):
            keys[name] = (field, defaults.get(name))
    host = Host(name="h", source="/s").model_dump(mode="json")
    keys.update({f"host.{k}": (f, host[k]) for k, f in Host.model_fields.items()})
    replica = Replica(name="p", source="p:/srv/bkd/").model_dump(mode="json")
    keys.update({f"replica.{k}": (f, replica[k]) for k, f in Replica.model_fields.items()})
    for sink, required in ((EmailSink, {"type": "email", "to": ["a@b.c"]}),
                           (WebhookSink, {"type": "webhook", "url": "https://x.org/"})):
        dump = sink.model_validate({"name": "s", **required}).model_dump(mode="json", by_alias=True)
        keys.update({f"notify.{f.alias or k}": (f, dump[f.alias or k]) for k, f in sink.model_fields.items()})
    return keys


def test_every_key_is_documented_and_nothing_else():
    assert set(documented()) == set(model_keys())


@pytest.mark.parametrize("key", sorted(model_keys()))
def test_documented_default_matches_the_model(key):
    text, _ = documented()[key]
    field, value = model_keys()[key]
    if text == "(required)":
        assert field.is_required()
    elif text == "(inherited)":
        assert value is None
    else:
        assert not field.is_required()
        assert tomllib.loads(f"v = {text.strip('`')}")["v"] == value


@pytest.mark.parametrize("key", sorted(model_keys()))
def test_documented_range_matches_the_model(key):
    _, text = documented()[key]
    field, _ = model_keys()[key]
    ranges = [m for m in field.metadata if isinstance(m, Range)]
    parsers = {getattr(m, "func", None) for m in field.metadata}
    if ranges:
        [bounds] = ranges
        expected = (f"more than {bounds.low:g}, at most {bounds.high:g}" if bounds.low_open
                    else f"{bounds.low:g}–{bounds.high:g}")
        assert text == expected
    elif models.parse_duration in parsers:
        assert text == "1s–3650d"
    elif models._parse_optional_duration in parsers:
        assert text == '`""` or 1s–3650d'
    else:
        assert not re.fullmatch(r"[\d.]+–[\d.]+", text), f"{key}: a range the model does not have"


def test_utc_needs_no_tzdata(monkeypatch):
    def no_tzdata(name):
        raise models.zoneinfo.ZoneInfoNotFoundError(name)

    monkeypatch.setattr(models.zoneinfo, "ZoneInfo", no_tzdata)
    assert zone("UTC").utcoffset(None).total_seconds() == 0
    assert Config(backup_root="/r").report.timezone == "UTC"
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Berlin'"):
        Config.model_validate({"backup_root": "/r", "report": {"timezone": "Europe/Berlin"}})


def sample_keys() -> dict[str, object]:
    """key -> the value `bkd config sample` shows for it (every commented-out
    line restored); a host's override table, e.g. `host.schedule`, -> {}."""
    from test_config_sample import uncomment

    from bkd.config.sample import render
    keys = {}
    for name, value in tomllib.loads(uncomment(render())).items():
        entries = value if isinstance(value, list) else [value] if isinstance(value, dict) else None
        if entries is None:
            keys[name] = value
        for entry in entries or ():
            keys.update({f"{name}.{key}": v for key, v in entry.items()})
    return keys


def test_the_sample_names_every_documented_key_with_its_documented_default():
    """`bkd config sample`, docs/configuration.md and the models agree (the
    models and the docs: the tests above)."""
    shown, documented_keys = sample_keys(), documented()
    assert set(shown) == set(documented_keys)
    for key, (default, _) in documented_keys.items():
        if default == "(inherited)":
            assert shown[key] == {}, key
        elif default != "(required)":
            assert shown[key] == tomllib.loads(f"v = {default.strip('`')}")["v"], key
