"""Every method's answer, from a real daemon over its socket, has exactly the
fields of its result type (views/results.py, which tests/unit/
test_protocol_docs.py checks against docs/protocol.md): every required one,
no other. restore.stream hands its connection over and is left out here
(tests/e2e/test_restore.py attaches for real), and so is hosts.release, which
needs a host held after an anomaly (tests/e2e/test_anomaly.py checks its
answer against its type)."""

import os

from bkd.rpc.methods import Api, method_table
from conftest import make_tree


def test_every_answer_has_the_fields_of_its_result_type(tmp_path, daemon_factory):
    source = make_tree(tmp_path / "web1", 8)
    daemon = daemon_factory([{"name": "web1", "source": str(source)}]).start()
    assert daemon.run_snapshot()["status"] == "ok"
    dest = tmp_path / "restored"  # not there yet: the restore's receiver would create it
    receiver = {"kinds": ["N", "N"], "dest_empty": True, "missing": "restored",
                "ancestors": [[os.stat(p).st_dev, os.stat(p).st_ino] for p in (tmp_path, *tmp_path.parents)]}
    calls = {
        "daemon.info": {}, "status": {}, "schedule.list": {}, "metrics": {}, "hosts.list": {},
        "job.get": {"job_id": 1}, "jobs.list": {}, "snapshots.list": {"host": "web1"},
        "snapshots.browse": {"host": "web1", "path": "/dir0"},
        "find": {"host": "web1", "pattern": "file0.txt"}, "du": {"snapshots": True},
        "prune": {"dry_run": True}, "verify": {"host": "web1"},
        "alerts.list": {"all": True}, "alerts.ack": {"all": True},
        "alerts.silence": {"host": "web1", "for": "1h"}, "alerts.unsilence": {"host": "web1"},
        "notify.status": {}, "notify.test": {}, "report": {}, "audit.list": {"verify": True},
        "hosts.test": {"hosts": ["web1"]}, "holds.list": {}, "replicas.list": {}, "config.reload": {}, "events.subscribe": {},
        "restore": {"host": "web1", "snapshot": "latest", "path": "/dir0", "dest": str(dest),
                    "receiver": receiver},
        "job.start": {"hosts": ["web1"], "dry_run": True},
        "job.cancel": {"hosts": ["web1"]},
    }
    table = method_table(Api())
    assert set(calls) == set(table) - {"restore.stream", "hosts.release"}
    for method, params in calls.items():
        result = daemon.call(method, **params)
        expected = table[method].result
        assert expected.__required_keys__ <= set(result) <= set(expected.__annotations__), (method, sorted(result))
    verify = daemon.call("verify", host="web1", sample=True)  # the sample pass names the snapshot it sampled
    assert {"snapshot", "host"} <= set(verify) <= set(table["verify"].result.__annotations__)
