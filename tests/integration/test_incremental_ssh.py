"""An incremental snapshot over SSH: one connection for the compare, one
shared by everything after it."""

import time

from bkd.config.models import Config
from bkd.tree.layout import HostDir
from bkd.pipeline import manifest
from bkd.pipeline.snapshot import take_snapshot


async def test_the_copy_after_the_compare_makes_no_new_ssh_connection(tmp_path, ssh_fleet):
    source = tmp_path / "remote"
    (source / "d").mkdir(parents=True)
    for index in range(20):
        (source / "d" / f"f{index}").write_text(f"{index}\n")
    ssh_fleet.add_host("web1")
    connections = tmp_path / "connections"
    with ssh_fleet.ssh_config.open("a") as f:  # runs once per new connection, not for a shared one
        f.write(f"Host *\n  PermitLocalCommand yes\n  LocalCommand echo connected >> {connections}\n")
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "ssh": ssh_fleet.ssh_settings(),
                                    "host": [{"name": "h", "source": f"web1:{source}/"}]})
    settings = config.hosts["h"]
    assert (await take_snapshot(config, settings)).status == "ok"
    assert connections.read_text().count("connected") == 1
    time.sleep(1.1)
    (source / "d" / "f1").write_text("changed\n")
    (source / "new").write_text("new\n")  # the top directory changes too: its own pass
    second = await take_snapshot(config, settings)
    assert second.status == "ok", second.warning
    # The compare's own, and the shared one opened beside it for the copy and the top directory.
    assert connections.read_text().count("connected") == 3
    recorded = manifest.read(HostDir.of(config.backup_root, "h").manifest_file(second.name))
    assert recorded[b"new"][1] == 4 and recorded[b"d/f1"][1] == 8
