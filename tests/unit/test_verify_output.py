"""`bkctl verify` says how many snapshots were pruned while it ran (they are
not checked, and not counted as mismatches)."""

import argparse

from bkctl import cli


class _Client:
    def __init__(self, result: dict):
        self.result = result

    def set_timeout(self, timeout):
        pass

    def call(self, method: str, params: dict) -> dict:
        assert (method, params["all"]) == ("verify", True)
        return self.result


def test_snapshots_pruned_during_a_verify_are_counted_apart(capsys):
    args = argparse.Namespace(host="web1", all=True, sample=False, snapshot=None, json=False)
    result = {"ok": True, "checked": 40, "snapshots": ["2026-01-02_000000"], "archives": [], "mismatches": [],
              "gone": ["2026-01-01_000000", "2026-01-01_010000"]}
    assert cli.cmd_verify(_Client(result), args) == cli.EXIT_OK
    assert capsys.readouterr().out == ("web1: ok; checked 40 files and archives in 1 snapshot(s); "
                                       "2 pruned meanwhile, not checked\n")
    del result["gone"]  # an older daemon's answer
    assert cli.cmd_verify(_Client(result), args) == cli.EXIT_OK
    assert capsys.readouterr().out == "web1: ok; checked 40 files and archives in 1 snapshot(s)\n"
