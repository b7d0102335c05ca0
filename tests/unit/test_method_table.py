"""The daemon's method table and the client's list of methods agree."""

from bkctl import protocol
from bkd.rpc.methods import Api, method_table


def test_the_method_table_matches_the_protocol_list():
    table = method_table(Api(None))
    assert sorted(table) == sorted(protocol.METHODS)
    assert {m.role for m in table.values()} <= {"viewer", "operator", "admin"}
