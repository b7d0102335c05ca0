"""Resuming an interrupted snapshot (SPEC §7): the next run writes a fresh
staging directory linked against both the last complete snapshot and the
interrupted partial, so what the partial already holds is not pulled again;
the partial goes once the new snapshot is complete."""

import os
import shutil

from bkd.config.models import Config
from bkd.tree.layout import HostDir
from bkd.pipeline.snapshot import take_snapshot


async def test_a_resumed_run_links_what_the_interrupted_run_pulled_and_what_the_last_snapshot_holds(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "old.txt").write_text("in the last complete snapshot\n")
    config = Config.model_validate({"backup_root": str(tmp_path / "backup"), "state_dir": str(tmp_path / "state"),
                                    "host": [{"name": "h", "source": str(source)}]})
    settings = config.hosts[config.host[0].name]
    first = await take_snapshot(config, settings)
    hourly = HostDir.of(config.backup_root, "h").hourly

    (source / "big.bin").write_bytes(os.urandom(4 << 20))
    partial = hourly / ".partial-2026-01-01_000000-abcdef"  # the interrupted run had pulled big.bin whole
    partial.mkdir()
    shutil.copy2(source / "big.bin", partial / "big.bin")
    pulled = (partial / "big.bin").stat().st_ino

    second = await take_snapshot(config, settings)
    assert second.status == "ok", second.warning
    taken = hourly / second.name
    assert (taken / "big.bin").stat().st_ino == pulled  # linked, not pulled again
    assert (taken / "old.txt").stat().st_ino == (hourly / first.name / "old.txt").stat().st_ino
    assert (taken / "big.bin").read_bytes() == (source / "big.bin").read_bytes()
    assert not partial.exists()
    assert sorted(p.name for p in hourly.iterdir()) == sorted([first.name, second.name])

