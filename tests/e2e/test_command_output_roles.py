"""Issue 18, item 6: a host's stderr reached viewers in `hosts.list`'s
`identity` (the self-backup probe's failure) and operators in `hosts.test`'s
`error`. They get a category and an exit code; only admins get the output."""

import json
import os
import subprocess

import pytest

from conftest import make_tree
from hostile import MARKER, HostileSsh
from unix_users import unix_users

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="users and groups need root (CI runs as root)")


def test_viewers_and_operators_get_a_category_admins_the_output(tmp_path, short_tmp, daemon_factory):
    ssh = HostileSsh(tmp_path / "fakebin")
    ssh.fail("broken")
    with unix_users() as users:
        sock_group, viewers, operators = (users.group(s) for s in "svo")
        viewer = users.user("V", [sock_group, viewers])
        operator = users.user("O", [sock_group, operators])
        daemon = daemon_factory([{"name": "broken", "source": f"broken:{make_tree(tmp_path / 'src', 2)}/"}],
                                access={"viewers": [viewers], "operators": [operators]})
        daemon.start(env=ssh.env(os.environ["PATH"]))
        short_tmp.chmod(0o711)
        os.chown(daemon.socket, -1, int(subprocess.check_output(["getent", "group", sock_group]).split(b":")[2]))
        try:
            admin = daemon.call("hosts.test", hosts=["broken"])["results"]["broken"]  # and the probe, afresh
            listed = users.calls(viewer, daemon.socket, [("hosts.list", {})])[0]["result"]["hosts"][0]
            tested = users.calls(operator, daemon.socket, [("hosts.test", {"hosts": ["broken"]})])[0]
        finally:
            daemon.stop()
    assert MARKER not in json.dumps(listed) and MARKER not in json.dumps(tested)
    assert MARKER in admin["detail"] and MARKER in admin["identity_detail"]
    assert listed["identity"].startswith("cannot tell whether broken is this machine (rsync exited with code ")
    result = tested["result"]["results"]["broken"]
    assert result["ok"] is False and "rsync exited with code " in result["error"]
    assert "SSH" not in result["error"]  # ssh itself never failed (rsync's exit code is 12 or 255, by a race)
    assert "detail" not in result and "identity_detail" not in result
