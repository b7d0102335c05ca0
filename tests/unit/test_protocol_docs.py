"""docs/protocol.md says which role each method needs; the method table decides it. They agree."""

import re
from pathlib import Path

from bkd.rpc.methods import Api, method_table

DOC = Path(__file__).parents[2] / "docs" / "protocol.md"


def test_every_method_is_documented_with_the_role_it_needs():
    documented = dict(re.findall(r"^\| `([a-z.]+)` \| (viewer|operator|admin) \|", DOC.read_text(), re.M))
    assert documented == {name: method.role for name, method in method_table(Api()).items()}
