"""Benchmark: a second copy (a replica pulling a primary's snapshots), through
two real daemons, against its floor.

    sudo .venv/bin/python bench/replica.py [--files 100000] [--kib 25] [--rounds 5]
                                           [--dir MOUNTED_FS] [--only full,incremental]

The tree, the change set and the journaled ext4 loop filesystem are
bench/snapshot.py's. A primary bkd snapshots the tree (a local source);
a replica bkd pulls it through a loopback sshd whose key is forced to
`rrsync -ro -absolute PRIMARY_ROOT`, as the README sets one up. Round after
round, interleaved and in a rotating order, it times:

- full: the first replication of a host (`bkctl run p1.once --wait` on the
  replica, its copy removed before: the primary holds one snapshot of it)
  against bkd's own first pull of the same tree (`bkctl run first --wait`,
  a host of the replica whose source is that snapshot on the primary);
- incremental: replicating one new snapshot (about 1 % changed; the primary
  takes it outside the timed region) — `bkctl run p1.web --wait` — against
  `cp -al PREV NEW && rsync -aHAX --numeric-ids --delete -e SSH
  primary:SNAPSHOT/ NEW/ && sync -f NEW` (the data path's own peer).

Every one of them reads the primary through the same sshd and the same
forced `rrsync` key, so the ratios are what replication adds.

Ratios are taken within each round and reported as medians with min–max.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Daemon, SshFleet  # noqa: E402  (real daemons and a loopback sshd, as the tests use)
from snapshot import PEER, arguments, change, generate, measure, sh, table, timed  # noqa: E402

from bkd.config.models import Config  # noqa: E402
from bkd.pipeline import rsync  # noqa: E402


class Bench:
    def __init__(self, root: Path, args):
        self.root, self.args = root, args
        self.src = root / "src"
        self.primary_root = root / "primary"
        self.fleet = SshFleet(Path(tempfile.mkdtemp(prefix="bkd-bench-ssh-")))
        public = Path(f"{self.fleet.client_key}.pub").read_text().strip()
        forced = self.fleet.root / "forced_keys"
        forced.write_text(f'restrict,command="/usr/bin/rrsync -ro -absolute {self.primary_root}" {public}\n')
        self.fleet.add_host("benchprimary", authorized_keys=forced)
        sockets = Path(tempfile.mkdtemp(prefix="bkd-bench-"))
        common = {"schedule": {"enabled": False}, "archive": {"enabled": False}, "monthly": {"enabled": False}}
        self.primary = self.daemon("primary", {
            **common, "backup_root": str(self.primary_root), "socket": str(sockets / "primary.sock"),
            "host": [{"name": "web", "source": str(self.src)}, {"name": "once", "source": str(self.src)}]})
        self.replica = self.daemon("replica", {
            **common, "backup_root": str(root / "replica"), "socket": str(sockets / "replica.sock"),
            "ssh": self.fleet.ssh_settings(),
            "replica": [{"name": "p1", "source": f"benchprimary:{self.primary_root}/", "every": "1h",
                         "lag_after": "3650d"}]})
        self.ssh = shlex.join(rsync.ssh_command(Config.model_validate(self.replica.config)))
        self.sockets = sockets
        self.times: dict[str, list[float]] = {}

    def daemon(self, name: str, config: dict) -> Daemon:
        workdir = self.root / f"{name}-daemon"
        workdir.mkdir()
        config["state_dir"] = str(workdir / "state")
        return Daemon(workdir, Path(config["socket"]), config)

    def run(self, daemon: Daemon, host: str) -> float:
        sh("sync")
        started = time.perf_counter()
        result = daemon.bkctl("--json", "run", host, "--wait", timeout=7200)
        seconds = time.perf_counter() - started
        final = json.loads(result.stdout.splitlines()[-1])
        job = final.get("job", final)
        if result.returncode != 0 or job["hosts"][0]["status"] != "ok":
            sys.exit(f"bkd run {host} failed: {job}")
        return seconds

    def setup(self) -> None:
        print(f"generating {self.args.files} files under {self.src} …", flush=True)
        generate(self.src, self.args.files, self.args.kib)
        self.primary.start()
        self.run(self.primary, "once")
        self.run(self.primary, "web")
        # bkd's own first pull of the tree the first replication copies, through the same key.
        self.replica.config["host"] = [{"name": "first", "source": f"benchprimary:{self.newest('once')}/"}]
        self.replica.write_config()
        self.replica.start()
        deadline = time.monotonic() + 120
        while {"p1.web", "p1.once"} - set(self.replica.call("status")["hosts"]):
            if time.monotonic() > deadline:
                sys.exit("the replica did not learn the primary's hosts within 2 minutes")
            time.sleep(0.2)
        self.run(self.replica, "p1.web")
        peer = self.root / "peer"
        peer.mkdir()
        sh(*PEER, f"{self.newest('web')}/", peer / "prev")

    def newest(self, host: str) -> Path:
        return (self.primary_root / host / "latest").resolve()

    def methods(self, group: str) -> list[tuple[str, object]]:
        return {
            "full": [("bkd first replication", self.first_replication), ("bkd first pull ssh", self.first_pull)],
            "incremental": [("bkd replicates one", lambda: self.run(self.replica, "p1.web")),
                            ("cp -al+rsync ssh", self.peer_incremental)],
        }[group]

    def first_replication(self) -> float:
        shutil.rmtree(self.root / "replica" / "p1.once", ignore_errors=True)
        return self.run(self.replica, "p1.once")

    def first_pull(self) -> float:
        shutil.rmtree(self.root / "replica" / "first", ignore_errors=True)
        return self.run(self.replica, "first")

    def peer_incremental(self) -> float:
        """cp -al PREV NEW && rsync … --delete primary:SNAPSHOT/ NEW/ && sync -f NEW; NEW becomes PREV."""
        prev, new = self.root / "peer" / "prev", self.root / "peer" / "new"
        source = f"benchprimary:{self.newest('web')}/"
        seconds = timed(["cp", "-al", prev, new], [*PEER, "--delete", "-e", self.ssh, source, f"{new}/"],
                        ["sync", "-f", new])
        shutil.rmtree(prev)
        new.rename(prev)
        return seconds

    def round(self, number: int) -> None:
        groups = self.args.only
        if "incremental" in groups:
            counts = change(self.src, number, self.args.files)
            time.sleep(1.1)  # a snapshot name of its own
            self.run(self.primary, "web")  # not timed: the primary's own snapshot
            print(f"round {number}: {counts}", flush=True)
        for group in groups:
            methods = self.methods(group)
            turn = number % len(methods)
            for key, method in methods[turn:] + methods[:turn]:
                seconds = method()
                self.times.setdefault(key, []).append(seconds)
                print(f"  {key:<28} {seconds:7.2f} s", flush=True)

    def report(self, load: tuple[str, str]) -> str:
        rows = table(self.times, [[key for key, _ in self.methods(group)] for group in self.args.only])
        facts = (f"{self.args.files} files, {self.args.rounds} rounds, rsync {rsync.check_rsync()}, "
                 f"{os.cpu_count()} cores, load average before: {load[0]}, after: {load[1]}")
        return "\n".join([facts, "", *rows])

    def close(self) -> None:
        for daemon in (self.replica, self.primary):
            daemon.stop()
        self.fleet.close()
        shutil.rmtree(self.fleet.root, ignore_errors=True)
        shutil.rmtree(self.sockets, ignore_errors=True)


def main() -> None:
    # The copies of two daemons and of the peer, and room.
    measure(Bench, arguments(__doc__, "full,incremental").parse_args(), 12)


if __name__ == "__main__":
    main()
