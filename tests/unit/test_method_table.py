"""The daemon's method table and the client's list of methods agree."""

from bkctl import protocol
from bkd.rpc.methods import Api, method_table


def test_the_method_table_matches_the_protocol_list():
    table = method_table(Api(None))
    assert sorted(table) == sorted(protocol.METHODS)
    assert {m.role for m in table.values()} <= {"viewer", "operator", "admin"}


def test_the_roles_of_the_watching_methods():
    table = method_table(Api(None))
    roles = {name: (table[name].role, table[name].mutating) for name in
             ("alerts.ack", "alerts.silence", "alerts.unsilence", "notify.status", "notify.test")}
    assert roles == {"alerts.ack": ("operator", True), "alerts.silence": ("operator", True),
                     "alerts.unsilence": ("operator", True), "notify.status": ("viewer", False),
                     "notify.test": ("operator", True)}


def test_the_fleet_methods_are_for_viewers():
    """`bkctl report`, `metrics` and `check` (daemon.info, then report) need no more than the viewer role."""
    table = method_table(Api(None))
    for name in ("report", "metrics", "daemon.info"):
        assert (table[name].role, table[name].mutating) == ("viewer", False), name
