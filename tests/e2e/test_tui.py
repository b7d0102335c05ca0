"""`bkctl top` under tmux against a real daemon running real snapshots."""

import pytest

from conftest import BIN, make_tree, slow_source, wait_until


def screen(tmux) -> str:
    return tmux("capture-pane", "-p").stdout


def host_row(tmux, host: str) -> str:
    return next((line for line in screen(tmux).splitlines() if line[2:].startswith(host)), "")


def wait_screen(tmux, predicate, what: str, timeout: float = 15) -> None:
    try:
        wait_until(predicate, timeout, what=what)
    except AssertionError:
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen(tmux)}") from None


def test_top_shows_a_run_live_starts_one_with_r_and_survives_a_resize(tmp_path, daemon_factory, tmux):
    daemon = daemon_factory([{"name": "web1", "source": str(slow_source(tmp_path / "src", 3))},
                             {"name": "db1", "source": str(make_tree(tmp_path / "db", 3))}],
                            rsync={"bwlimit": "1000"}).start()
    tmux("new-session", "-d", "-x", "120", "-y", "40",
         f"{BIN / 'bkctl'} --socket {daemon.socket} top")
    wait_screen(tmux, lambda: "web1" in host_row(tmux, "web1"), "the host row", 15)
    assert "free" in screen(tmux).splitlines()[0]

    job_id = daemon.call("job.start", hosts=["web1"])["job_id"]
    wait_screen(tmux, lambda: "running snapshot" in " ".join(host_row(tmux, "web1").split()) and "web1" in host_row(tmux, "web1"), "the running stage", 15)
    wait_screen(tmux, lambda: "%" in host_row(tmux, "web1"), "a progress bar", 15)
    daemon.wait_job(job_id)
    snapshot = daemon.call("status")["hosts"]["web1"]["last_snapshot"]
    wait_screen(tmux, lambda: host_row(tmux, "web1").endswith(" ok") and "idle" in host_row(tmux, "web1"),
                "the completed run")
    tmux("send-keys", "j")  # select web1 (hosts are sorted: db1, web1)
    wait_screen(tmux, lambda: snapshot in screen(tmux), "the snapshot in the detail pane", 15)

    tmux("send-keys", "k")  # back to db1
    tmux("send-keys", "r")
    wait_screen(tmux, lambda: any(j["hosts"][0]["host"] == "db1" for j in daemon.call("jobs.list")["jobs"]),
                "r to start a run of db1")
    wait_screen(tmux, lambda: "started job" in screen(tmux), "the confirmation line")

    tmux("resize-window", "-x", "50", "-y", "12")
    tmux("resize-window", "-x", "130", "-y", "35")
    wait_screen(tmux, lambda: "db1" in host_row(tmux, "db1"), "a redraw after resizing", 10)
    assert tmux("list-panes", "-F", "#{pane_dead}").stdout.strip() == "0"
    tmux("send-keys", "q")
    wait_until(lambda: tmux("has-session").returncode != 0, 10, what="q to quit")


def test_top_refuses_to_start_without_a_terminal(daemon_factory):
    daemon = daemon_factory([]).start()
    result = daemon.bkctl("top")
    assert result.returncode == 2
    assert "needs a terminal" in result.stderr and "status --json" in result.stderr


def test_top_refuses_a_daemon_that_speaks_another_protocol(tmp_path, short_tmp, tmux):
    import json
    import socket
    import threading

    path = short_tmp / "other.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()

    def serve():  # answers every request as a bkd of a future protocol would
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                for line in lines:
                    request = json.loads(line)
                    conn.sendall(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": {
                        "version": "9.0", "protocol": 999, "pid": 1, "hosts": {}}}).encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    marker = tmp_path / "exit"
    tmux("new-session", "-d", "-x", "120", "-y", "20",
         f"{BIN / 'bkctl'} --socket {path} top 2>{tmp_path / 'err'}; echo $? > {marker}; sleep 30")
    wait_until(lambda: marker.exists() and marker.read_text().strip(), 15, what="top to exit")
    listener.close()
    assert marker.read_text().strip() == "1"
    assert "speaks protocol 999" in (tmp_path / "err").read_text()


def test_top_shows_open_alerts_in_a_pane_and_a_acknowledges_the_selected_hosts(tmp_path, daemon_factory, tmux):
    daemon = daemon_factory([{"name": "db1", "source": str(make_tree(tmp_path / "db", 2))},
                             {"name": "web1", "source": str(tmp_path / "missing")}]).start()
    tmux("new-session", "-d", "-x", "140", "-y", "40", f"{BIN / 'bkctl'} --socket {daemon.socket} top")
    wait_screen(tmux, lambda: "alerts: none" in screen(tmux), "the empty alerts pane")
    daemon.run_snapshot()  # web1 fails: the alert arrives as an event
    wait_screen(tmux, lambda: "alerts: 1 current, 1 unacknowledged" in screen(tmux), "the alert in the pane")
    assert "web1" in screen(tmux) and "run_failed" in screen(tmux)
    assert host_row(tmux, "web1").split()[-2:] == ["1", "failed"]  # the ALERTS column

    tmux("send-keys", "a")  # db1 is selected: nothing of its own to acknowledge
    wait_screen(tmux, lambda: "db1 has no unacknowledged alerts" in screen(tmux), "the refusal")
    tmux("send-keys", "j")
    tmux("send-keys", "a")
    wait_screen(tmux, lambda: "acknowledge 1 alert(s) of web1? (y/n)" in screen(tmux), "the question")
    tmux("send-keys", "y")
    wait_screen(tmux, lambda: "alerts: 1 current, 0 unacknowledged" in screen(tmux), "the acknowledgement")
    (alert,) = daemon.bkctl_json("alerts")["alerts"]
    assert (alert["state"], alert["acked_by"]) == ("acked", "root")
    tmux("send-keys", "q")


@pytest.mark.parametrize("locale, block, corner", [("LANG=C.UTF-8", "▁", "┌"), ("LC_ALL=C", "_", "+")])
def test_v_shows_host_cards_with_tiers_archives_and_a_month_of_sizes(tmp_path, daemon_factory, tmux,
                                                                      locale, block, corner):
    from test_report import plant_history
    daemon = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "web1", 4))},
                             {"name": "db1", "source": str(tmp_path / "missing")}]).start()
    daemon.run_snapshot()
    assert daemon.call("job.start", hosts=["web1"], kind="archive")["job_id"]
    wait_until(lambda: daemon.call("status")["hosts"]["web1"]["state"] == "idle"
               and (daemon.workdir / "backup/web1/archives").exists(), 30, what="the archive")
    plant_history(daemon, "web1")
    tmux("-u", "new-session", "-d", "-x", "130", "-y", "40",
         f"env {locale} {BIN / 'bkctl'} --socket {daemon.socket} top")
    wait_screen(tmux, lambda: "web1" in host_row(tmux, "web1"), "the host table")
    tmux("send-keys", "v")
    wait_screen(tmux, lambda: any(line.startswith(corner) for line in screen(tmux).splitlines()), "the host cards")
    lines = screen(tmux).splitlines()
    top = next((line for line in lines if " web1 " in line and line.startswith(corner)), None)
    assert top, screen(tmux)
    column = top.index(" web1 ") - 2  # the web1 card's left edge
    card = [line[column:column + 42] for line in lines[lines.index(top):lines.index(top) + 9]]
    text = "\n".join(card)
    assert "tiers: hourly 29 daily 0 monthly 0" in text and "monthly copies 0" in text  # + latest
    archive = next(daemon.workdir.glob("backup/web1/archives/*.tar.zst")).name
    assert f"archives 1, newest {archive.removeprefix('web1_').split('.tar')[0]}" in text  # the copies by name
    assert "4 files" in text  # the newest snapshot's
    assert "on disk " in text and "30d: on disk" in text  # the chart is the real space (planted: unique_bytes)
    spark = next(line for line in card if "30d " in line).split("30d ", 1)[1]
    assert spark.count(block) >= 1 and len(spark.rstrip(" |│")) == 30  # a mark for each of the 30 days
    assert "> db1" in top or ">db1" in " ".join(lines[:4])  # the selection is marked
    tmux("send-keys", "v")
    wait_screen(tmux, lambda: host_row(tmux, "web1"), "the table again")
    tmux("send-keys", "q")
