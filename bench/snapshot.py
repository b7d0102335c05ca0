"""Benchmark: bkd's snapshots, through the real daemon, against their floor.

    sudo .venv/bin/python bench/snapshot.py [--files 100000] [--kib 25] [--rounds 5]
                                            [--dir MOUNTED_FS] [--only local,ssh,full,restore,restore-dir]

Without --dir it makes a journaled ext4 filesystem on a loop device (this
machine's root filesystem has no journal, which makes creating many inodes
after deleting many pathologically slow) and removes it afterwards. Needs
root: the loop device, and the change set changes owners.

On one generated tree (SRC) it times, round after round, interleaved and in
a rotating order:

- local incremental: `bkctl run local --wait` against
  `cp -al PREV NEW && rsync -aHAX --numeric-ids --delete SRC/ NEW/ && sync -f NEW`
  and `rsync -aHAX --numeric-ids --delete --link-dest=PREV SRC/ NEW/ && sync -f NEW`;
- the same pulled over SSH from a loopback sshd (the peers use bkd's own ssh command);
- a first full pull over SSH: `bkctl run first --wait` against
  `rsync -aHAX --numeric-ids -e SSH host:SRC/ NEW/ && sync -f NEW`;
- restores of the latest snapshot to a new local directory, the whole tree
  (`restore`) and one directory of 1,000 files (`restore-dir`):
  `bkctl restore local latest PATH --to NEW` against
  `rsync -aHAX --numeric-ids SNAPSHOT/PATH NEW/` and `cp -a` of the same
  (none of them syncs: a restore does not fsync).

Before each round SRC gets a realistic change set (about 1 % of the files:
modified, added, deleted, renamed, turned into directories and symlinks,
and metadata-only changes of mode, owner and xattrs). Only the method is
timed: changing the source, removing old copies and a `sync` happen
between timed regions. Ratios are taken within each round (the machine is
shared; compare ratios, not seconds) and reported as medians with min–max.
For each bkd run it also reports the daemon's CPU time (from its
`snapshot.cpu` log event): in all, reading rsync's output, and hashing
beside the transfer (the hashing left when rsync ends, the walk, the
manifest and the rest are the difference); and the shares of the manifest
step (`manifest_s`), of the anomaly step (`anomaly_s`: the change
record, the change profile and its verdict) and of the version index's
step (`index_s`) in the whole `bkctl run`. The
generated files hold random data, the worst case for the anomaly step:
every changed file looks random, so its previous version is sampled too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Daemon, SshFleet  # noqa: E402  (real daemon and loopback sshd, as the tests use)

from bkd.config.models import Config  # noqa: E402
from bkd.pipeline import rsync  # noqa: E402

PEER = ["rsync", "-aHAX", "--numeric-ids"]
RESTORED_DIR = "/d000"  # 1,000 files: 10 directories of 100 (see generate)


def generate(source: Path, files: int, kib: int) -> None:
    """files regular files (mean size kib KiB, exponential), 100 per directory,
    plus a symlink and a hard link in every directory."""
    rng = random.Random(7)
    block = os.urandom(1024 * 1024)
    for index in range(files):
        directory = source / f"d{index // 1000:03d}" / f"s{index // 100 % 10}"
        if index % 100 == 0:
            directory.mkdir(parents=True, exist_ok=True)
        size = max(1, int(rng.expovariate(1 / (kib * 1024))))
        offset = rng.randrange(0, len(block) - min(size, len(block)) + 1)
        with open(directory / f"f{index}.dat", "wb") as f:
            remaining = size
            while remaining:
                chunk = block[offset:offset + min(remaining, len(block) - offset)]
                f.write(chunk)
                remaining -= len(chunk)
                offset = 0
        if index % 100 == 99:
            os.symlink(f"f{index}.dat", directory / "latest")
            os.link(directory / f"f{index - 1}.dat", directory / "hardlinked.dat")


def change(source: Path, round_no: int, files: int) -> dict:
    """About 1 % of the files, changed the ways real trees change."""
    rng = random.Random(1000 + round_no)
    regular = sorted(p for p in source.rglob("*.dat") if p.is_file() and not p.is_symlink()
                     and p.name != "hardlinked.dat")
    share = max(1, files // 10000)  # 0.01 %
    picked = iter(rng.sample(regular, 120 * share))
    counts = {}

    def take(kind: str, n: int):
        counts[kind] = n
        return [next(picked) for _ in range(n)]

    for path in take("modified", 60 * share):
        with open(path, "r+b") as f:
            f.seek(rng.randrange(0, max(1, path.stat().st_size)))
            f.write(os.urandom(64))
    for path in take("deleted", 15 * share):
        path.unlink()
    for index, path in enumerate(take("renamed", 5 * share)):
        path.rename(path.with_name(f"r{round_no}_{index}.dat"))
    for path in take("file→directory", share):
        path.unlink()
        path.mkdir()
        (path / "inside.dat").write_bytes(os.urandom(4096))
    for path in take("file→symlink", share):
        path.unlink()
        path.symlink_to("elsewhere.dat")
    for path in take("chmod", 10 * share):
        os.chmod(path, 0o600 if path.stat().st_mode & 0o044 else 0o644)
    for path in take("chown", 3 * share):
        os.chown(path, rng.randrange(1000, 1010), rng.randrange(1000, 1010))
    for path in take("xattr", 3 * share):
        os.setxattr(path, "user.round", str(round_no).encode())
    added = source / f"added{round_no}"
    added.mkdir()
    counts["added"] = 20 * share
    for index in range(20 * share):
        directory = added if index % 2 else rng.choice(regular).parent
        if directory.exists():
            (directory / f"a{round_no}_{index}.dat").write_bytes(os.urandom(rng.randrange(1000, 60000)))
    return counts


def sh(*argv, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"{argv[0]} failed ({result.returncode}): {result.stderr[-800:]}")
    return result


def timed(*commands: list) -> float:
    """Seconds for the commands run one after another (each must succeed)."""
    sh("sync")
    started = time.perf_counter()
    for argv in commands:
        sh(*argv)
    return time.perf_counter() - started


@contextmanager
def journaled_ext4(size_gib: int):
    tag = f"bkd-bench-{os.getpid()}"
    image, mount = Path(f"/var/tmp/{tag}.img"), Path(f"/mnt/{tag}")
    sh("truncate", "-s", f"{size_gib}G", image)
    device = None
    try:
        sh("mkfs.ext4", "-q", "-F", image)
        device = sh("losetup", "--find", "--show", "--direct-io=on", image).stdout.strip()
        mount.mkdir(parents=True)
        sh("mount", device, mount)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        mount.rmdir() if mount.exists() else None
        image.unlink(missing_ok=True)


def cell(values: list[float]) -> str:
    digits = 3 if max(values) < 1 else 2  # a small restore takes a tenth of a second
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(times: dict[str, list[float]], groups: list[list[str]]) -> list[str]:
    """The results, a row per method: its seconds, and its ratio to its group's
    second method (its peer) taken within each round."""
    def ratio(key, base):
        pairs = [a / b for a, b in zip(times[key], times[base])]
        return f"{statistics.median(pairs):.2f}× ({min(pairs):.2f}–{max(pairs):.2f})"

    rows = ["| method | median s (min–max) | × peer, per round: median (min–max) |", "|---|---:|---:|"]
    for keys in groups:
        rows += [f"| {key} | {cell(times[key])} | {ratio(key, keys[1])} |" for key in keys]
    return rows


STEPS = ("manifest", "anomaly", "index")  # stats.STEP_s of a run, reported as shares of it

class Bench:
    def __init__(self, root: Path, args):
        self.root, self.args = root, args
        self.src = root / "src"
        self.fleet = SshFleet(Path(tempfile.mkdtemp(prefix="bkd-bench-ssh-")))
        self.fleet.add_host("benchhost")
        remote = f"benchhost:{self.src}/"
        self.config = {
            "backup_root": str(root / "bkd"), "state_dir": str(root / "bkd-state"),
            "socket": str(Path(tempfile.mkdtemp(prefix="bkd-bench-")) / "bkd.sock"),
            "schedule": {"enabled": False}, "archive": {"enabled": False}, "monthly": {"enabled": False},
            "ssh": self.fleet.ssh_settings(),
            "host": [{"name": "local", "source": str(self.src)}, {"name": "remote", "source": remote},
                     {"name": "first", "source": remote}],
        }
        workdir = root / "daemon"
        workdir.mkdir()
        self.daemon = Daemon(workdir, Path(self.config["socket"]), self.config)
        self.ssh = shlex.join(rsync.ssh_command(Config.model_validate(self.config)))
        self.remote = remote
        self.times: dict[str, list[float]] = {}
        # A step's share of each `bkctl run`, by step and host: the manifest, the change record with the
        # profile and its verdict (anomaly_s), and the version index (index_s).
        self.steps: dict[str, dict[str, list[float]]] = {step: {} for step in STEPS}
        self.cpu: dict[str, list[dict]] = {}
        self.log_offset = 0

    def bkd(self, host: str) -> float:
        sh("sync")
        started = time.perf_counter()
        result = self.daemon.bkctl("--json", "run", host, "--wait", timeout=3600)
        seconds = time.perf_counter() - started
        final = json.loads(result.stdout.splitlines()[-1])
        job = final.get("job", final)
        if result.returncode != 0 or job["hosts"][0]["status"] != "ok":
            sys.exit(f"bkd run {host} failed: {job}")
        stats = job["hosts"][0]["stats"]
        for step, by_host in self.steps.items():
            by_host.setdefault(host, []).append((stats.get(f"{step}_s") or 0) / seconds)
        self.cpu.setdefault(host, []).append(self.daemon_cpu(host))
        return seconds

    def daemon_cpu(self, host: str) -> dict:
        """The daemon's own account of the CPU time of host's last run."""
        with self.daemon.log_path.open("rb") as log:
            log.seek(self.log_offset)
            lines = log.read().splitlines()
            self.log_offset = log.tell()
        events = [json.loads(line) for line in lines if b'"snapshot.cpu"' in line]
        return next((e for e in reversed(events) if e.get("host") == host), {})

    def peer_incremental(self, name: str, source: str, link_dest: bool) -> float:
        """cp -al PREV NEW && rsync … --delete SRC/ NEW/ && sync -f NEW, or
        rsync --link-dest=PREV … SRC/ NEW/ && sync -f NEW; NEW becomes PREV."""
        prev, new = self.root / name / "prev", self.root / name / "new"
        shell = ["-e", self.ssh] if ":" in source else []
        if link_dest:
            seconds = timed([*PEER, "--delete", f"--link-dest={prev}", *shell, source, f"{new}/"],
                            ["sync", "-f", new])
        else:
            seconds = timed(["cp", "-al", prev, new], [*PEER, "--delete", *shell, source, f"{new}/"],
                            ["sync", "-f", new])
        shutil.rmtree(prev)
        new.rename(prev)
        return seconds

    def record(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)
        print(f"  {key:<28} {seconds:7.2f} s", flush=True)

    def setup(self) -> None:
        print(f"generating {self.args.files} files under {self.src} …", flush=True)
        generate(self.src, self.args.files, self.args.kib)
        self.daemon.start()
        for host in ("local", "remote"):
            self.bkd(host)
        seed = self.root / "seed"
        sh(*PEER, f"{self.src}/", seed)
        for name in ("cpal-local", "linkdest-local", "cpal-ssh", "linkdest-ssh"):
            (self.root / name).mkdir()
            sh("cp", "-al", seed, self.root / name / "prev")
        for by_host in self.steps.values():
            by_host.clear()
        self.cpu.clear()

    def methods(self, group: str) -> list[tuple[str, object]]:
        """The methods of a group, bkd first and its peer second."""
        local, remote = f"{self.src}/", self.remote
        return {
            "local": [("bkd local", lambda: self.bkd("local")),
                      ("cp -al+rsync local", lambda: self.peer_incremental("cpal-local", local, False)),
                      ("link-dest local", lambda: self.peer_incremental("linkdest-local", local, True))],
            "ssh": [("bkd ssh", lambda: self.bkd("remote")),
                    ("cp -al+rsync ssh", lambda: self.peer_incremental("cpal-ssh", remote, False)),
                    ("link-dest ssh", lambda: self.peer_incremental("linkdest-ssh", remote, True))],
            "full": [("bkd first pull ssh", self.first_pull), ("rsync full pull ssh", self.peer_full)],
            "restore": [("bkd restore tree", lambda: self.restore("/")),
                        ("rsync copy tree", lambda: self.peer_restore("/", PEER)),
                        ("cp -a tree", lambda: self.peer_restore("/", ["cp", "-a"]))],
            "restore-dir": [("bkd restore dir", lambda: self.restore(RESTORED_DIR)),
                            ("rsync copy dir", lambda: self.peer_restore(RESTORED_DIR, PEER)),
                            ("cp -a dir", lambda: self.peer_restore(RESTORED_DIR, ["cp", "-a"]))],
        }[group]

    def restore(self, path: str) -> float:
        """`bkctl restore local latest PATH --to NEW` (NEW does not exist yet)."""
        new = self.root / "restored"
        started = self.before_restore(new)
        result = self.daemon.bkctl("--json", "restore", "local", "latest", path, "--to", str(new), timeout=3600)
        seconds = time.perf_counter() - started
        final = json.loads(result.stdout.splitlines()[-1])
        if result.returncode != 0 or final["job"]["status"] != "ok":
            sys.exit(f"bkd restore {path} failed: {result.stdout[-800:]} {result.stderr[-800:]}")
        shutil.rmtree(new)
        return seconds

    def peer_restore(self, path: str, copy: list[str]) -> float:
        """The same copy of the latest snapshot's PATH into NEW by rsync or cp."""
        new = self.root / "restored"
        snapshot = (self.root / "bkd" / "local" / "latest").resolve()
        started = self.before_restore(new)
        if path == "/":
            sh(*copy, f"{snapshot}/" if copy == PEER else snapshot, new)
        else:
            new.mkdir()
            sh(*copy, snapshot / path.strip("/"), f"{new}/")
        seconds = time.perf_counter() - started
        shutil.rmtree(new)
        return seconds

    def before_restore(self, new: Path) -> float:
        """Clear NEW and flush what is dirty, outside the timed region; the start time."""
        shutil.rmtree(new, ignore_errors=True)
        sh("sync")
        return time.perf_counter()

    def round(self, number: int) -> None:
        counts = change(self.src, number, self.args.files)
        print(f"round {number}: {counts}", flush=True)
        for group in self.args.only:
            methods = self.methods(group)
            turn = number % len(methods)  # a different method goes first each round
            for key, method in methods[turn:] + methods[:turn]:
                self.record(key, method())

    def first_pull(self) -> float:
        shutil.rmtree(self.root / "bkd" / "first", ignore_errors=True)
        return self.bkd("first")

    def peer_full(self) -> float:
        new = self.root / "full-peer"
        shutil.rmtree(new, ignore_errors=True)
        return timed([*PEER, "-e", self.ssh, self.remote, f"{new}/"], ["sync", "-f", new])

    def report(self, load: tuple[str, str]) -> str:
        # The peer of each group: cp -al + rsync + sync, rsync + sync, or (restores) rsync.
        rows = table(self.times, [[key for key, _ in self.methods(group)] for group in self.args.only])
        for step, by_host in self.steps.items():
            for host, shares in by_host.items():
                percent = [share * 100 for share in shares]
                rows.append(f"| {step} step, share of `bkctl run {host}` | "
                            f"{statistics.median(percent):.1f} % ({min(percent):.1f}–{max(percent):.1f}) | |")
        for host, runs in self.cpu.items():
            for key, what in (("process_s", "in all"), ("reading_s", "reading rsync's output"),
                              ("hashing_beside_s", "hashing beside the transfer")):
                values = [run.get(key, 0.0) for run in runs]
                rows.append(f"| daemon CPU-s of `bkctl run {host}`, {what} | {cell(values)} | |")
        facts = (f"{self.args.files} files, {self.args.rounds} rounds, rsync {rsync.check_rsync()}, "
                 f"{os.cpu_count()} cores, load average before: {load[0]}, after: {load[1]}")
        return "\n".join([facts, "", *rows])

    def close(self) -> None:
        self.daemon.stop()
        self.fleet.close()
        shutil.rmtree(self.fleet.root, ignore_errors=True)
        shutil.rmtree(Path(self.config["socket"]).parent, ignore_errors=True)


def measure(make_bench, args, copies: int) -> None:
    """Set make_bench(root, args) up on args.dir, or on a journaled ext4 loop
    filesystem room for `copies` copies of the tree; run its rounds; print its report."""
    if os.geteuid() != 0:
        sys.exit("run as root: the loop device, the owner changes and the sshd need it")
    load_before = Path("/proc/loadavg").read_text().split()[0]

    def run(root: Path) -> None:
        bench = make_bench(root, args)
        try:
            bench.setup()
            for number in range(1, args.rounds + 1):
                bench.round(number)
        finally:
            bench.close()
        print()
        print(bench.report((load_before, Path("/proc/loadavg").read_text().split()[0])))

    if args.dir:
        run(args.dir)
    else:
        size = max(16, args.files * args.kib * copies // (1024 * 1024))
        with journaled_ext4(size) as root:
            run(root)


def arguments(doc: str, only: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--kib", type=int, default=25, help="mean file size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="an empty directory on the filesystem to measure on")
    parser.add_argument("--only", default=only, type=lambda s: s.split(","))
    return parser


def main() -> None:
    measure(Bench, arguments(__doc__, "local,ssh,full,restore,restore-dir").parse_args(), 10)  # six copies, and room


if __name__ == "__main__":
    main()
