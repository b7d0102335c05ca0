"""Benchmark: the version index behind `find` and `du`, on a year of history made by bkd itself.

    sudo .venv/bin/python bench/versions.py --state DIR [--files 100000] [--snapshots 900]
                                            [--kib 4] [--queries 50] [--image-gib 24]

A host of FILES files gets SNAPSHOTS snapshots, each taken by the real daemon
(`bkctl run --wait`) after about 1 % of its files changed (modified, added,
deleted, renamed; one file in a hundred is a `.conf`). Their dates do not
matter for `find` and `du`; retention keeps them all. The filesystem is a
journaled ext4 image under DIR with enough inodes (`mkfs.ext4 -N`: every
snapshot has directories of its own), and the history built is kept there:
run again with the same DIR (and a larger --snapshots) and it goes on from
where it stopped. Needs root (the loop device).

Then it measures, through the daemon's socket (not counting bkctl's start):

- `find` of one path (QUERIES random paths that exist or existed) and of
  `**/*.conf`: p50 and p99 latency (SPEC §8: under a second);
- `du --snapshots`: p50 and p99;
- the index step of each incremental run, `index_s`, against the run
  (`duration_s` + `manifest_s` of the run's own stats, and its wall time);
- the index's size on disk against the sum of the host's manifests;
- the rebuild: the index file removed, the time until `find` answers again.

Smoke run: --files 2000 --snapshots 12 --queries 5 --image-gib 2.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Daemon  # noqa: E402  (the real daemon, as the tests run it)

from bkctl.client import Client, RemoteError  # noqa: E402

HOST = "bench"


def sh(*argv, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if check and result.returncode != 0:
        sys.exit(f"{argv[0]} failed ({result.returncode}): {result.stderr[-800:]}")
    return result


def mount_state(state: Path, gib: int, inodes: int) -> Path:
    """DIR/fs.img (made once: journaled ext4 with enough inodes) mounted on DIR/mnt."""
    image, mount = state / "fs.img", state / "mnt"
    state.mkdir(parents=True, exist_ok=True)
    if not image.exists():
        sh("truncate", "-s", f"{gib}G", image)
        sh("mkfs.ext4", "-q", "-F", "-N", inodes, image)
    mount.mkdir(exist_ok=True)
    if not os.path.ismount(mount):
        sh("mount", "-o", "loop", image, mount)
    return mount


def generate(source: Path, files: int, kib: int, rng: random.Random) -> None:
    for index in range(files):
        directory = source / f"d{index // 1000:03d}" / f"s{index // 100 % 10}"
        if index % 100 == 0:
            directory.mkdir(parents=True, exist_ok=True)
        name = f"f{index}.conf" if index % 100 == 7 else f"f{index}.dat"
        (directory / name).write_bytes(rng.randbytes(max(1, int(rng.expovariate(1 / (kib * 1024))))))


def change(source: Path, files: list[Path], number: int, rng: random.Random) -> None:
    """About 1 % of the files: 60 % of them modified, 15 % deleted, 5 % renamed, 20 % new."""
    share = max(1, len(files) // 100)
    picked = rng.sample(range(len(files)), share)
    for position, index in enumerate(picked):
        path = files[index]
        kind = position * 20 // share
        if kind < 12 or not path.exists():
            path.write_bytes(rng.randbytes(rng.randrange(100, 8000)))
        elif kind < 15:
            path.unlink()
        elif kind < 16:
            target = path.with_name(f"r{number}_{position}{path.suffix}")
            path.rename(target)
            files[index] = target
        else:
            new = path.with_name(f"a{number}_{position}{'.conf' if position % 10 == 0 else '.dat'}")
            new.write_bytes(rng.randbytes(rng.randrange(100, 8000)))
            files.append(new)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def timed_call(client: Client, method: str, params: dict) -> tuple[float, dict | None]:
    started = time.perf_counter()
    try:
        result = client.call(method, params)
    except RemoteError as e:
        if e.code == -32007:
            return time.perf_counter() - started, None
        raise
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, required=True, help="where the filesystem image and history live")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--snapshots", type=int, default=900)
    parser.add_argument("--kib", type=int, default=4, help="mean file size of the generated tree")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--image-gib", type=int, default=24)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the loop device needs it")
    # Each snapshot has directories of its own and new inodes for what changed: about 600 a snapshot for
    # 20,000 files (measured: the former estimate, half that, ran out at 713 snapshots); twice that, to be safe.
    inodes = args.files * 3 + args.snapshots * (args.files // 100 + args.files // 1000 + 20) * 6
    root = mount_state(args.state, args.image_gib, inodes)
    socket_dir = Path(tempfile.mkdtemp(prefix="bkd-bench-"))
    workdir = root / "daemon"
    workdir.mkdir(exist_ok=True)
    config = {"backup_root": str(root / "backup"), "state_dir": str(root / "state"),
              "socket": str(socket_dir / "bkd.sock"), "schedule": {"enabled": False},
              "archive": {"enabled": False}, "monthly": {"enabled": False},
              "retention": {"hourly_hours": 876000},
              "host": [{"name": HOST, "source": str(root / "src")}]}
    daemon = Daemon(workdir, Path(config["socket"]), config)
    progress_file = root / "built.json"
    built = json.loads(progress_file.read_text()) if progress_file.exists() else {"snapshots": 0, "runs": []}
    rng = random.Random(21 + built["snapshots"])
    source = root / "src"
    if built["snapshots"] == 0:
        shutil.rmtree(source, ignore_errors=True)
        print(f"generating {args.files} files …", flush=True)
        generate(source, args.files, args.kib, rng)
    files = sorted(p for p in source.rglob("*") if p.is_file())
    daemon.start()
    try:
        with Client(str(daemon.socket), timeout=3600) as client:
            while built["snapshots"] < args.snapshots:
                if built["snapshots"]:
                    change(source, files, built["snapshots"], rng)
                started = time.perf_counter()
                job_id = client.call("job.start", {"hosts": [HOST]})["job_id"]
                job = daemon.wait_job(job_id, timeout=3600)
                wall = time.perf_counter() - started
                run = job["hosts"][0]
                if run["status"] not in ("ok", "warning"):
                    sys.exit(f"run {built['snapshots']} failed: {run}")
                stats = run["stats"]
                built["runs"].append({"wall_s": round(wall, 3), "duration_s": stats.get("duration_s"),
                                      "manifest_s": stats.get("manifest_s"), "index_s": stats.get("index_s")})
                built["snapshots"] += 1
                if built["snapshots"] % 10 == 0 or built["snapshots"] == args.snapshots:
                    progress_file.write_text(json.dumps(built))
                    print(f"  {built['snapshots']} snapshots, last run {wall:.1f} s, index_s {stats.get('index_s')}",
                          flush=True)
            report(daemon, client, root, files, built, args)
    finally:
        daemon.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
        sh("umount", root, check=False)


def report(daemon: Daemon, client: Client, root: Path, files: list[Path], built: dict, args) -> None:
    rng = random.Random(5)
    prefix = len(str(root / "src"))
    paths = [str(p)[prefix:] for p in rng.sample(files, min(args.queries, len(files)))]
    single = [timed_call(client, "find", {"host": HOST, "path": path, "limit": 100_000})[0] for path in paths]
    conf, found = [], None
    for _ in range(args.queries):
        seconds, found = timed_call(client, "find", {"host": HOST, "pattern": "**/*.conf", "limit": 100_000})
        conf.append(seconds)
    du = [timed_call(client, "du", {"hosts": [HOST], "snapshots": True})[0] for _ in range(args.queries)]
    incremental = [r for r in built["runs"][1:] if r["index_s"] is not None]
    shares = [r["index_s"] / ((r["duration_s"] or 0) + (r["manifest_s"] or 0) + r["index_s"]) for r in incremental]
    wall_shares = [r["index_s"] / r["wall_s"] for r in incremental]
    meta = root / "backup" / HOST / "meta"
    manifests = sum(p.stat().st_size for p in meta.glob("*.manifest"))
    records = len(list(meta.glob("*.changes")))
    index = root / "state/versions" / f"{HOST}.sqlite"
    index_bytes = sum(p.stat().st_size for p in (index, index.with_name(index.name + "-wal")) if p.exists())
    index.unlink()
    started = time.perf_counter()
    while timed_call(client, "find", {"host": HOST, "path": paths[0]})[1] is None:
        time.sleep(0.5)
    rebuild = time.perf_counter() - started

    def line(name: str, values: list[float], unit: str = "s") -> str:
        return (f"{name:<34} p50 {percentile(values, 0.5):8.3f} {unit}   p99 {percentile(values, 0.99):8.3f} {unit}"
                f"   ({len(values)} calls)")

    print()
    print(f"{args.files} files, {built['snapshots']} snapshots ({records} with a change record), "
          f"{os.cpu_count()} cores, load average {Path('/proc/loadavg').read_text().split()[0]}")
    print(line("find one path", single))
    print(line(f"find **/*.conf ({len(found['versions']) if found else '?'} versions)", conf))
    print(line("du --snapshots", du))
    if shares:
        print(f"{'index_s of an incremental run':<34} median {statistics.median(shares) * 100:6.2f} % of its "
              f"stages (max {max(shares) * 100:.2f} %), {statistics.median(wall_shares) * 100:.2f} % of its "
              f"wall time; median {statistics.median(r['index_s'] for r in incremental):.3f} s")
    print(f"{'index size':<34} {index_bytes / 2**20:8.1f} MiB = {index_bytes / max(manifests, 1) * 100:.2f} % of "
          f"the manifests' {manifests / 2**20:.1f} MiB")
    print(f"{'rebuild (index removed)':<34} {rebuild:8.1f} s until find answers again")


if __name__ == "__main__":
    main()
