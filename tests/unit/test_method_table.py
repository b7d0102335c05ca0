"""The daemon's method table and the client's list of methods agree."""

from bkctl import protocol
from bkd.rpc.methods import Api, method_table


def test_the_method_table_matches_the_protocol_list():
    table = method_table(Api())
    assert sorted(table) == sorted(protocol.METHODS)
    assert {m.role for m in table.values()} <= {"viewer", "operator", "admin"}


def test_the_roles_of_the_watching_methods():
    table = method_table(Api())
    roles = {name: (table[name].role, table[name].mutating) for name in
             ("alerts.ack", "alerts.silence", "alerts.unsilence", "notify.status", "notify.test")}
    assert roles == {"alerts.ack": ("operator", True), "alerts.silence": ("operator", True),
                     "alerts.unsilence": ("operator", True), "notify.status": ("viewer", False),
                     "notify.test": ("operator", True)}


def test_the_fleet_methods_are_for_viewers():
    """`bkctl report`, `metrics` and `check` (daemon.info, then report) need no more than the viewer role."""
    table = method_table(Api())
    for name in ("report", "metrics", "daemon.info"):
        assert (table[name].role, table[name].mutating) == ("viewer", False), name


def test_every_limit_above_its_cap_is_clamped_and_marked_not_refused():
    """SPEC §5: a `limit` above a method's cap is clamped and the result says
    `truncated: true` (the server adds it for every method with a cap)."""
    table = method_table(Api())
    caps = {name: method.params.caps() for name, method in table.items() if method.params.caps()}
    assert caps == {"jobs.list": {"limit": 1000}, "snapshots.list": {"limit": 1_000_000},
                    "snapshots.browse": {"limit": 100_000}, "audit.list": {"limit": 10_000},
                    "find": {"limit": 100_000}}
    for name, fields in caps.items():
        model = table[name].params.model_fields
        required = {"host": "web1"} if "host" in model and model["host"].is_required() else {}
        required |= {"pattern": "*.conf"} if name == "find" else {}
        for field, cap in fields.items():
            params = table[name].params.model_validate({**required, field: cap * 10})
            assert (getattr(params, field), params.clamped) == (cap, True), name
            params = table[name].params.model_validate({**required, field: cap})
            assert (getattr(params, field), params.clamped) == (cap, False), name
    assert table["jobs.list"].params.model_validate({}).limit == 50


def test_the_per_method_limits_are_the_ones_docs_design_md_gives():
    import doctables
    documented = {row[0]: int(row[1]) for row in doctables.table("design.md", "**Per method.**")}
    table = method_table(Api())
    assert documented == {name: m.concurrency for name, m in table.items() if m.concurrency is not None}


def test_the_anomaly_methods_roles():
    """SPEC §5: holds.list is for viewers (no file names in it for them), hosts.release for admins, audited."""
    table = method_table(Api())
    assert (table["holds.list"].role, table["holds.list"].mutating) == ("viewer", False)
    assert (table["hosts.release"].role, table["hosts.release"].mutating) == ("admin", True)
