"""Planning is a pure function: (request, config of that moment) → phases of stages."""

import pytest

from bkctl.protocol import Kind
from bkd.config.models import Config
from bkd.restore.transfer import Where
from bkd.restore.request import RestoreTarget
from bkd.runs.plan import Lane, Phase, Request, Stage, Trigger, plan_run, stages_for

S = Stage


@pytest.mark.parametrize("kind,dry_run,pre,post,expected", [
    (Kind.SNAPSHOT, False, False, False, [(Lane.SNAPSHOT, [S.SNAPSHOT, S.PRUNE])]),
    (Kind.SNAPSHOT, False, True, True, [(Lane.SNAPSHOT, [S.PRE, S.SNAPSHOT, S.PRUNE, S.POST])]),
    (Kind.SNAPSHOT, True, True, True, [(Lane.SNAPSHOT, [S.SNAPSHOT])]),  # a dry run: no hooks, no prune
    (Kind.ALL, False, True, False, [(Lane.SNAPSHOT, [S.PRE, S.SNAPSHOT, S.PRUNE]),
                                    (Lane.HEAVY, [S.ARCHIVE, S.MONTHLY])]),
    (Kind.ALL, True, False, False, [(Lane.SNAPSHOT, [S.SNAPSHOT])]),
    (Kind.ARCHIVE, False, True, True, [(Lane.HEAVY, [S.ARCHIVE])]),  # hooks wrap snapshots only
    (Kind.MONTHLY, False, False, False, [(Lane.HEAVY, [S.MONTHLY])]),
    (Kind.RESTORE, False, True, True, [(Lane.RESTORE, [S.RESTORE])]),
])
def test_stages_of_each_kind(kind, dry_run, pre, post, expected):
    assert stages_for(kind, dry_run, pre, post) == tuple(Phase(lane, tuple(stages)) for lane, stages in expected)


def config(*hosts: dict) -> Config:
    return Config.model_validate({"backup_root": "/srv/bkd", "host": list(hosts)})


def test_a_plan_captures_the_config_of_its_moment():
    before = config({"name": "web1", "source": "/data", "pre": "dump", "retention": {"hourly_hours": 5}})
    plan = plan_run(7, Request("web1", Kind.SNAPSHOT, Trigger.SCHEDULE), before)
    after = config({"name": "web1", "source": "/other"})  # what a reload swaps in later
    assert plan.config is before and plan.settings.host.source == "/data"
    assert plan.settings.retention.hourly_hours == 5
    assert plan.stages == (S.PRE, S.SNAPSHOT, S.PRUNE)
    assert plan_run(8, Request("web1", Kind.SNAPSHOT, Trigger.SCHEDULE), after).stages == (S.SNAPSHOT, S.PRUNE)
    with pytest.raises(Exception):
        plan.settings.host.source = "/changed"  # frozen: nothing can change a plan afterwards


def test_a_host_removed_before_its_run_starts_has_no_plan_but_its_snapshots_can_still_be_restored():
    empty = config()
    assert plan_run(1, Request("gone", Kind.SNAPSHOT, Trigger.MANUAL), empty) is None
    assert plan_run(1, Request("gone", Kind.ARCHIVE, Trigger.SCHEDULE), empty) is None
    target = RestoreTarget("2026-01-01_000000", "/etc", "/tmp/x", False, (b"etc",), b"", ("--archive",),
                           Where(("N", "N")))
    restore = plan_run(1, Request("gone", Kind.RESTORE, Trigger.MANUAL, restore=target), empty)
    assert restore.settings is None and restore.stages == (S.RESTORE,)
