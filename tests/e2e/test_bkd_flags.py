"""bkd's global options work on either side of the command, as bkctl's do:
`bkd serve --log-level debug --config PATH` is the same daemon as
`bkd --config PATH --log-level debug serve`."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import BIN, make_tree, wait_until


def events(daemon) -> list[dict]:
    """The daemon's log (JSON lines: its stderr is not a terminal)."""
    return [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("order", ["after", "before"])
def test_serve_takes_log_level_and_config_on_either_side(tmp_path, daemon_factory, order):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 2))}])
    flags = ["--config", str(daemon.config_path), "--log-level", "debug"]
    argv = ["serve", *flags] if order == "after" else [*flags, "serve"]
    with daemon.log_path.open("ab") as log:
        daemon.proc = subprocess.Popen([str(BIN / "bkd"), *argv], stdout=log, stderr=log)
    wait_until(daemon._listening, 30, what="bkd to listen")
    assert daemon.run_snapshot()["status"] == "ok"
    daemon.stop()
    assert any(e.get("event") == "exec" and e.get("level") == "debug" for e in events(daemon)), daemon.log()[-2000:]


def test_a_quieter_level_after_the_command_keeps_info_out(tmp_path, daemon_factory):
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 2))}])
    with daemon.log_path.open("ab") as log:
        daemon.proc = subprocess.Popen([str(BIN / "bkd"), "serve", "--log-level", "warning",
                                        "--config", str(daemon.config_path)], stdout=log, stderr=log)
    wait_until(daemon._listening, 30, what="bkd to listen")
    assert daemon.run_snapshot()["status"] == "ok"
    daemon.stop()
    assert events(daemon) == [] or all(e["level"] in ("warning", "error", "critical") for e in events(daemon))


@pytest.mark.parametrize("argv", [
    ["check-config", "--config", "{path}"],
    ["--config", "{path}", "check-config"],
    ["config", "show", "--config", "{path}"],
])
def test_every_command_takes_config_after_it(tmp_path, argv):
    path = tmp_path / "bkd.toml"
    path.write_text(f'backup_root = "{tmp_path}/nowhere"\nstate_dir = "{tmp_path}/state"\n'
                    'schedule_typo = 1\n')
    result = subprocess.run([str(BIN / "bkd"), *[a.format(path=path) for a in argv]], capture_output=True, text=True)
    assert result.returncode == 1 and f"{path}:schedule_typo:" in result.stderr, result.stderr
