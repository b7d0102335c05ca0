"""Benchmark: bkd's incremental snapshot against bare `rsync --link-dest` and
`cp -al` + rsync on one generated tree, and archive throughput per compressor.

    .venv/bin/python bench/snapshot_bench.py [--files 100000] [--kib 25] [--changed 0.01] [--repeat 3]
                                             [--dir DIR] [--no-archives]

All methods run in one process on the same data with a warm cache and are
compared as ratios (the machine is shared and noisy; absolute seconds vary).
Every rsync uses bkd's own flags (-aHAX --numeric-ids --delete), so the
ratios isolate the method. Results print as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bkd import logs
from bkd.config.models import Archive, Config
from bkd.pipeline import manifest
from bkd.pipeline.archive import compressor_command
from bkd.pipeline.snapshot import take_snapshot

RSYNC = ["rsync", "-aHAX", "--numeric-ids", "--delete"]
PREVIOUS = "2026-01-01_000000"


def generate(source: Path, files: int, kib: int) -> None:
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


def change(source: Path, fraction: float) -> int:
    files = sorted(source.rglob("*.dat"))
    chosen = random.Random(11).sample(files, max(1, int(len(files) * fraction)))
    for path in chosen:
        with open(path, "ab") as f:
            f.write(b"changed\n")
    return len(chosen)


def warm(*trees: Path) -> None:
    for tree in trees:
        subprocess.run(["find", str(tree), "-printf", ""], check=True)


def timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{argv[0]} failed: {result.stderr[-500:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--kib", type=int, default=25, help="mean file size in KiB (exponential)")
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    parser.add_argument("--no-archives", action="store_true", help="skip the compressor comparison")
    args = parser.parse_args()
    logs.configure("warning")

    work = Path(args.dir or tempfile.mkdtemp(prefix="bkd-bench-"))
    source, backup = work / "source", work / "backup"
    hourly = backup / "bench" / "hourly"
    previous = hourly / PREVIOUS
    try:
        print(f"generating {args.files} files (mean {args.kib} KiB) in {work} …", file=sys.stderr)
        generate(source, args.files, args.kib)
        hourly.mkdir(parents=True)
        run([*RSYNC, f"{source}/", f"{previous}/"])
        (backup / "bench" / "latest").symlink_to(f"hourly/{PREVIOUS}")
        # The previous snapshot's manifest, as bkd would have written it.
        (backup / "bench" / "meta").mkdir()
        manifest.write(backup / "bench" / "meta" / f"{PREVIOUS}.manifest", manifest.by_inode(previous, None, None)[0])
        changed = change(source, args.changed)
        total = sum(p.stat().st_size for p in source.rglob("*.dat"))
        config = Config.model_validate({"backup_root": str(backup), "state_dir": str(work / "state"),
                                        "host": [{"name": "bench", "source": str(source), "exclude": []}],
                                        "rsync": {"exclude": []}})
        settings = config.settings(config.host[0])

        transfer_seconds: list[float] = []
        manifest_seconds: list[float] = []

        def bkd() -> None:
            result = asyncio.run(take_snapshot(config, settings))
            assert result.stats["changed_files"] == changed, result.stats
            assert result.stats["hashed_files"] == changed, result.stats  # only what changed is hashed
            transfer_seconds.append(result.stats["duration_s"] - result.stats["manifest_s"])
            manifest_seconds.append(result.stats["manifest_s"])
            shutil.rmtree(hourly / result.name)
            for record in (f"{result.name}.json", f"{result.name}.manifest"):
                (backup / "bench" / "meta" / record).unlink()
            (backup / "bench" / "latest").unlink()
            (backup / "bench" / "latest").symlink_to(f"hourly/{PREVIOUS}")

        def cp_al_rsync(durable: bool) -> None:
            run(["cp", "-al", str(previous), str(work / "dest")])
            run([*RSYNC, f"{source}/", f"{work / 'dest'}/"])
            if durable:
                run(["sync", "-f", str(work / "dest")])
            shutil.rmtree(work / "dest")

        def link_dest() -> None:
            run([*RSYNC, f"--link-dest={previous}", f"{source}/", f"{work / 'dest'}/"])
            run(["sync", "-f", str(work / "dest")])
            shutil.rmtree(work / "dest")

        methods = {
            "bkd incremental snapshot (flushed, committed)": bkd,
            "rsync --link-dest + sync -f": link_dest,
            "cp -al + rsync + sync -f": lambda: cp_al_rsync(True),
            "cp -al + rsync (not flushed)": lambda: cp_al_rsync(False),
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeat):
            for name, method in methods.items():  # interleaved, so drift hits all alike
                run(["sync"])  # each starts with nothing left to write back
                warm(source, previous)
                times[name].append(timed(method))
        times["bkd transfer step only (cp -al ‖ probe, rsync)"] = transfer_seconds
        times[f"bkd manifest step only (SHA-256 of the {changed:,} changed files)"] = manifest_seconds

        floor = statistics.median(times["cp -al + rsync + sync -f"])
        bare = statistics.median(times["cp -al + rsync (not flushed)"])
        print(f"\n{args.files:,} files, {total / 2**30:.2f} GiB, {changed:,} changed "
              f"({args.changed:.0%}), median of {args.repeat}, warm cache\n")
        print("| method | median s | × cp -al + rsync + sync | × cp -al + rsync |\n|---|---:|---:|---:|")
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"| {name} | {median:.2f} | {median / floor:.2f} | {median / bare:.2f} |")

        if args.no_archives:
            return
        print("\n| archive of the snapshot | s | MiB/s | × tar -czf |\n|---|---:|---:|---:|")
        archives = {"tar -czf (gzip -6)": ["tar", "-czf", str(work / "a.tgz"), "-C", str(previous), "."]}
        for compression, level in (("gzip", 6), ("pigz", 6), ("zstd", 3)):
            command = " ".join(compressor_command(Archive(compression=compression, level=level)))
            archives[f"tar | {command}"] = ["bash", "-c", f"tar -cf - -C {previous} . | {command} > {work / 'a.out'}"]
        results = {}
        for name, argv in archives.items():
            warm(previous)
            results[name] = timed(lambda: run(argv))
        baseline = results["tar -czf (gzip -6)"]
        for name, seconds in results.items():
            print(f"| {name} | {seconds:.1f} | {total / 2**20 / seconds:.0f} | {seconds / baseline:.2f} |")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
