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
