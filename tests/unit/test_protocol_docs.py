"""docs/protocol.md says which role each method needs and what each answers;
the method table decides the role and names each method's result type.
They agree."""

import re
from pathlib import Path

from bkd.rpc.methods import Api, method_table

DOC = Path(__file__).parents[2] / "docs" / "protocol.md"


def test_every_method_is_documented_with_the_role_it_needs():
    documented = dict(re.findall(r"^\| `([a-z.]+)` \| (viewer|operator|admin) \|", DOC.read_text(), re.M))
    assert documented == {name: method.role for name, method in method_table(Api()).items()}


def _fields_at_a_glance() -> dict[str, list[str]]:
    text = DOC.read_text().split("| method | result fields |", 1)[1]
    return {name: re.findall(r"`([a-z_]+\??)`", fields)
            for name, fields in re.findall(r"^\| `([a-z.]+)` \| (.*) \|$", text.split("\n\n", 1)[0], re.M)}


def test_every_result_type_is_documented_field_by_field():
    table = method_table(Api())
    glance = _fields_at_a_glance()
    assert set(glance) == set(table)
    for name, method in table.items():
        result = method.result
        assert glance[name] == [f"{key}?" if key in result.__optional_keys__ else key
                                for key in result.__annotations__], name


def test_the_methods_table_names_every_field_of_each_result():
    """Each field at a glance is in its method's row of the detailed table, in backticks."""
    rows = dict(re.findall(r"^\| `([a-z.]+)` \| (?:viewer|operator|admin) \| .*? \| (.*) \|$", DOC.read_text(), re.M))
    for name, fields in _fields_at_a_glance().items():
        spans = re.findall(r"`([^`]*)`", rows[name])
        for field in fields:
            assert any(re.search(rf"(?<![\w.]){field.rstrip('?')}\b", span) for span in spans), (name, field)
