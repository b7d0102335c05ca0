"""An SSH login the host refuses, or a host key that changed, is an `auth`
alert at once (a person must act); a host that is down is a run_failed one."""

import shutil
import subprocess

from conftest import make_tree, wait_until


def _alerts(daemon) -> dict[str, tuple[str, str]]:
    return {a["host"]: (a["kind"], a["message"]) for a in daemon.bkctl_json("alerts")["alerts"]}


def test_refused_login_and_changed_host_key_are_auth_alerts_an_unreachable_host_is_not(
        tmp_path, daemon_factory, ssh_fleet):
    source = make_tree(tmp_path / "home", files=3)
    addresses = {alias: ssh_fleet.add_host(alias) for alias in ("keyed", "rekeyed", "down")}
    # rekeyed: the key known_hosts holds for it is not its own any more
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    address, port = addresses["rekeyed"]
    kept = [line for line in ssh_fleet.known_hosts.read_text().splitlines()
            if not line.startswith(f"[{address}]:{port} ")]
    kind, key = (other.parent / f"{other.name}.pub").read_text().split()[:2]
    ssh_fleet.known_hosts.write_text("\n".join(kept + [f"[{address}]:{port} {kind} {key}"]) + "\n")
    # keyed: bkd's key is no longer authorized; down: nothing listens
    shutil.copy(ssh_fleet.authorized_keys, tmp_path / "authorized_keys")
    ssh_fleet.authorized_keys.write_text("")
    ssh_fleet.kill("down")
    options = ["ConnectTimeout=3", "ServerAliveInterval=2", "ServerAliveCountMax=2"]
    daemon = daemon_factory([{"name": alias, "source": f"{alias}:{source}/"} for alias in addresses],
                            ssh=ssh_fleet.ssh_settings(options=options),
                            alerts={"failures_before_alert": 2}).start()

    assert daemon.run_snapshot()["status"] == "failed"
    wait_until(lambda: len(_alerts(daemon)) == 2, 10, what="the auth alerts")
    alerts = _alerts(daemon)
    assert alerts["keyed"] == ("auth", "the host refused bkd's SSH login (authentication failed): check bkd's key "
                                       "on the host")
    assert alerts["rekeyed"][0] == "auth" and "host key verification failed" in alerts["rekeyed"][1]
    assert "down" not in alerts  # unreachable: an ordinary failure, after failures_before_alert of them
    daemon.run_snapshot()
    wait_until(lambda: "down" in _alerts(daemon), 10, what="run_failed for the host that is down")
    assert _alerts(daemon)["down"][0] == "run_failed"
    counts = {a["host"]: a["count"] for a in daemon.bkctl_json("alerts")["alerts"]}
    assert counts == {"keyed": 2, "rekeyed": 2, "down": 2}
    # The messages are for every role: no command output.
    assert "Permission denied" not in str(daemon.bkctl_json("alerts"))

    shutil.copy(tmp_path / "authorized_keys", ssh_fleet.authorized_keys)
    assert daemon.run_snapshot("keyed")["status"] == "ok"
    wait_until(lambda: "keyed" not in _alerts(daemon), 10, what="the auth alert to resolve")


def test_a_host_that_prints_ssh_s_refusal_is_not_an_auth_alert_and_a_restricted_key_still_works(
        tmp_path, daemon_factory, ssh_fleet):
    """Issue 18, item 7: a host could forge an `auth` alert by printing
    "Permission denied (publickey)" on stderr. Only the local ssh client's own
    messages (ssh -E, a file of bkd's) decide; through a key restricted to
    `rrsync -ro` (no other command can run on the host) too."""
    source = make_tree(tmp_path / "home", files=3)
    forged = "bkd@liar: Permission denied (publickey)."
    ssh_fleet.add_host("liar", sshd_extra=f"ForceCommand echo '{forged}' >&2; echo 'Host key verification failed.' "
                                          ">&2; exit 255\n")
    ssh_fleet.add_host("restricted", sshd_extra=f"ForceCommand /usr/bin/rrsync -ro {source}/\n")
    daemon = daemon_factory([{"name": "liar", "source": f"liar:{source}/"},
                             {"name": "restricted", "source": "restricted:/"}],
                            ssh=ssh_fleet.ssh_settings(options=["ConnectTimeout=3"])).start()

    job = daemon.run_snapshot()
    runs = {run["host"]: run for run in job["hosts"]}
    assert runs["restricted"]["status"] == "ok", runs["restricted"]
    assert runs["liar"]["status"] == "failed"
    wait_until(lambda: "liar" in _alerts(daemon), 10, what="the liar's alert")
    assert _alerts(daemon)["liar"][0] == "run_failed"  # not auth: ssh itself never said so
    assert forged in runs["liar"]["detail"]  # the host's words, for admins, as the host's
    assert "the SSH connection failed" not in runs["liar"]["error"]
    tested = daemon.call("hosts.test", hosts=["liar"])["results"]["liar"]
    assert not tested["ok"] and "refused" not in tested["error"] and "SSH" not in tested["error"], tested

    # Two more runs of the restricted host: incremental, through the shared connection, still fine.
    (source / "dir0" / "new.txt").write_text("new\n")
    assert daemon.run_snapshot("restricted")["status"] == "ok"
    assert _alerts(daemon).keys() == {"liar"}
