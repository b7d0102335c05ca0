"""What a run stores of a child's output. Found by the hostile-host test: a
byte that is not UTF-8 in a hook's or a host's stderr (carried as a
surrogate) made SQLite refuse the job's record — the run ended as an
internal error and no alert opened. It is stored escaped (\\xNN), as the
audit log stores outcomes."""

from conftest import make_tree, wait_until


def test_a_byte_that_is_not_utf8_in_a_failing_hook_s_output_is_stored_escaped_and_alerted(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 2)),
                              "pre": "printf 'dump failed: \\233\\377 \\033[2J\\n' >&2; exit 3"}]).start()
    run = daemon.run_snapshot()["hosts"][0]
    assert run["status"] == "failed" and run["error"] == "pre hook exited with code 3"
    assert run["detail"] == "pre hook exited with code 3: dump failed: \\x9b\\xff \x1b[2J"
    alerts = wait_until(lambda: daemon.call("alerts.list")["alerts"], 20, what="the run_failed alert")
    assert [a["kind"] for a in alerts] == ["run_failed"]
    assert daemon.call("jobs.list")["jobs"][0]["hosts"][0]["status"] == "failed"
