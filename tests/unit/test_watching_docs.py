"""The worked examples in docs/watching.md are valid configuration."""

import re
import tomllib
from pathlib import Path

import pytest

from bkd.config.models import Config

DOC = Path(__file__).parent.parent.parent / "docs" / "watching.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)


def test_there_are_two_worked_examples():
    assert len(BLOCKS) == 2


@pytest.mark.parametrize("block", BLOCKS)
def test_a_worked_example_is_a_valid_config(block):
    data = tomllib.loads(block)
    data.setdefault("backup_root", "/srv/bkd")
    data.setdefault("host", [{"name": "web1", "source": "web1:/home/"}])
    Config.model_validate(data)


def test_the_documented_signature_check_accepts_what_bkd_signs():
    from bkd.notify.sinks import signature
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)[1]
    body = b'{"event":"test"}'

    class Request:
        headers = {"X-Bkd-Signature": signature(b"k3y", body)}

    scope = {"secret": b"k3y", "raw_body": body, "request": Request}
    exec(code, scope)
    assert scope["ok"] is True
