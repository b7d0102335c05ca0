"""False-positive study of bkd's anomaly detection, through the real daemon.

    .venv/bin/python bench/anomaly.py --dir DIR [--snapshots 240] [--files 3000] [--seed 1]
                                      [--per-day 6] [--json FILE]

Two seeded models of a changing tree, a workstation and a server, are
snapshotted round after round by one `bkd serve` (defaults: `[anomaly]`
as shipped). A round is 24/per-day hours of model time:

- workstation: mail arriving in a Maildir and filed into folders, documents
  edited, a source tree worked on and updated from upstream (`git pull`),
  downloads arriving and cleaned up, photos imported, repositories cloned;
  once a week a large reorganisation (project folders moved into an
  archive, files renamed by date);
- server: logs appended and rotated daily (compressed), a database's pages
  rewritten, mailboxes appended, uploads, a nightly compressed dump; once a
  week a package upgrade (hundreds of small files rewritten, a language
  runtime's and a kernel's module tree replaced by the next version's), a
  web site deployed, and a data directory reorganised into dated folders.

Five hosts: `ws` and `srv` follow the models only — each of their
snapshots is a trial for a false positive; `enc`, `ren` and `del` follow a
model with their own seed and are attacked once, at a round drawn from the
seed after the baseline has filled: 60 % of the files overwritten in place
with random bytes, every file renamed to NAME.locked with a
README-DECRYPT.txt in every directory, or 70 % of the files deleted. Their
snapshots before the attack are trials too; the attack's snapshot must be
suspect; what follows it is reported (observe-only: backups go on).

DIR keeps everything: the trees, the backup root, the state and the rounds
done (`progress.json`), so an interrupted study resumes where it stopped,
and a finished one can be extended with a larger --snapshots (the models
are deterministic per seed and round). Not part of `make test`: the lead
runs it for docs/performance.md ("Anomaly detection"); a smoke run:
`--snapshots 14 --files 600 --per-day 2`."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from attacks import attack  # noqa: E402  (the attacks the tests inject too)
from conftest import Daemon  # noqa: E402  (the real daemon, as the tests run it)

WORDS = ("the of and to in is for on that with as was at by be this from are or an have not it which but all "
         "backup report meeting budget invoice draft review plan server client update release schedule note "
         "project team customer order data result version change issue fix test build deploy config").split()
HOSTS = {"ws": ("workstation", None), "srv": ("server", None), "enc": ("workstation", "encrypt"),
         "ren": ("server", "rename"), "del": ("workstation", "delete")}
EPOCH = 1_790_000_000


class Tree:
    """A model's tree on disk; every write sets the model's clock as the mtime (rsync's quick check sees it)."""

    def __init__(self, root: Path, rng: random.Random, clock: int):
        self.root, self.rng, self.clock = root, rng, clock

    def text(self, size: int) -> bytes:
        words, length = [], 0
        while length < size:
            word = self.rng.choice(WORDS)
            words.append(word)
            length += len(word) + 1
        return (" ".join(words) + "\n").encode()

    def code(self, size: int) -> bytes:
        lines = []
        while sum(map(len, lines)) < size:
            name = self.rng.choice(WORDS)
            lines.append(f"    def {name}_{self.rng.randrange(99)}(self, {self.rng.choice(WORDS)}):\n"
                         f"        return self.{self.rng.choice(WORDS)} + {self.rng.randrange(1000)}\n")
        return "".join(lines).encode()

    def binary(self, size: int) -> bytes:
        """Like code or a database page: mostly zeros and a few common bytes (ordinary, 4–6 bits a byte)."""
        common = bytes(self.rng.randrange(256) for _ in range(12))
        out = bytearray()
        while len(out) < size:
            pick = self.rng.random()
            out += b"\0" * self.rng.randrange(1, 24) if pick < 0.4 else \
                bytes(self.rng.choice(common) for _ in range(8)) if pick < 0.8 else self.rng.randbytes(4)
        return bytes(out[:size])

    def random(self, size: int) -> bytes:
        return self.rng.randbytes(size)  # compressed, media, encrypted

    def write(self, relative: str, data: bytes, append: bool = False) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab" if append else "wb") as f:
            f.write(data)
        os.utime(path, (self.clock, self.clock))

    def files(self, under: str = "") -> list[Path]:
        base = self.root / under
        return sorted(p for p in base.rglob("*") if p.is_file() and not p.is_symlink()) if base.exists() else []

    def dirs(self, under: str) -> list[Path]:
        base = self.root / under
        return sorted(p for p in base.iterdir() if p.is_dir()) if base.exists() else []

    def some(self, items: list, low: int, high: int) -> list:
        return self.rng.sample(items, min(len(items), self.rng.randint(low, high)))

    def move(self, path: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)

    def remove(self, path: Path) -> None:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


# ---- the workstation --------------------------------------------------------------------

def workstation_setup(t: Tree, files: int) -> None:
    for index in range(files // 4):
        t.write(f"home/u/Documents/p{index % 12:02d}/doc{index:05d}.{t.rng.choice(['txt', 'md', 'txt'])}",
                t.text(t.rng.randrange(300, 6000)))
    for index in range(files // 40):
        t.write(f"home/u/Documents/p{index % 12:02d}/sheet{index:04d}.ods", t.random(t.rng.randrange(4000, 30000)))
    for index in range(files // 4):
        folder = t.rng.choice(["inbox", "archive/2025", "sent"])
        t.write(f"home/u/Mail/{folder}/cur/{EPOCH + index}.{index}.ws:2,S", mail(t))
    for index in range(files // 4):
        t.write(f"home/u/src/repo{index % 3}/pkg{index % 17:02d}/m{index:05d}.py", t.code(t.rng.randrange(300, 4000)))
    for index in range(files // 10):
        t.write(f"home/u/Pictures/2025/IMG_{index:05d}.jpg", t.random(t.rng.randrange(5000, 40000)))
    for index in range(files // 20):
        t.write(f"home/u/Downloads/file{index:04d}.{t.rng.choice(['pdf', 'zip', 'txt'])}",
                t.random(3000) if index % 3 else t.text(2000))
    for index in range(files // 20):
        t.write(f"home/u/.config/app{index % 9}/settings{index}.conf", t.text(400))


def mail(t: Tree) -> bytes:
    return (f"From: {t.rng.choice(WORDS)}@example.org\nSubject: {' '.join(t.rng.sample(WORDS, 4))}\n\n").encode() + \
        t.text(t.rng.randrange(500, 8000))


def workstation_round(t: Tree, number: int, per_day: int) -> None:
    for index in range(t.rng.randint(2, 20)):  # mail
        t.write(f"home/u/Mail/inbox/new/{t.clock}.{number}.{index}.ws", mail(t))
    if t.rng.random() < 0.4:  # read and filed
        for path in t.some(t.files("home/u/Mail/inbox/new"), 1, 30):
            t.move(path, t.root / f"home/u/Mail/{t.rng.choice(['inbox', 'archive/2026'])}/cur/{path.name}:2,S")
    for index in range(t.rng.randint(0, 4)):
        t.write(f"home/u/Mail/sent/cur/{t.clock}.{number}.{index}.sent:2,S", mail(t))
    for path in t.some(t.files("home/u/Documents"), 1, 6):  # documents edited
        if path.suffix in (".txt", ".md"):
            t.write(str(path.relative_to(t.root)), t.text(300), append=True)
    for index in range(t.rng.randint(0, 2)):
        t.write(f"home/u/Documents/p{t.rng.randrange(12):02d}/new{number}_{index}.md", t.text(1500))
    code = t.files("home/u/src")
    for path in t.some(code, 2, 15):  # source worked on
        t.write(str(path.relative_to(t.root)), t.code(200), append=True)
    for index in range(t.rng.randint(0, 3)):
        t.write(f"home/u/src/repo{t.rng.randrange(3)}/pkg{t.rng.randrange(17):02d}/w{number}_{index}.py", t.code(800))
    for path in t.some(code, 0, 2):
        path.unlink(missing_ok=True)
    for index in range(t.rng.randint(0, 3)):  # downloads
        t.write(f"home/u/Downloads/dl{number}_{index}.{t.rng.choice(['pdf', 'zip', 'tar.gz'])}",
                t.random(t.rng.randrange(2000, 50000)))
    for path in t.some(t.files("home/u/.config"), 0, 3):
        t.write(str(path.relative_to(t.root)), t.text(300))
    day, week = number // per_day, number // (7 * per_day)
    if number % per_day == per_day - 1:  # the day's cleanup of downloads
        for path in t.some(t.files("home/u/Downloads"), 5, 60):
            path.unlink()
    if number % (7 * per_day) == 3:  # the weekly reorganisation: projects archived, files renamed by date
        for project in t.some(t.dirs("home/u/Documents")[:12], 1, 3):
            if project.name != "archive":
                t.move(project, t.root / f"home/u/Documents/archive/w{week}/{project.name}")
        for path in t.some(t.files("home/u/Documents"), 20, 80):
            path.rename(path.with_name(f"w{week}-{path.name}"))
        for path in t.some(code, 50, 250):  # git pull
            if path.exists():
                t.write(str(path.relative_to(t.root)), t.code(t.rng.randrange(300, 3000)))
        for index in range(t.rng.randint(20, 100)):
            t.write(f"home/u/src/repo{t.rng.randrange(3)}/pkg{t.rng.randrange(17):02d}/u{week}_{index}.py",
                    t.code(1000))
        for path in t.some(t.files("home/u/src"), 10, 60):
            path.unlink()
    if day % 10 == 4 and number % per_day == 1:  # a photo import, a new clone
        for index in range(t.rng.randint(50, 400)):
            t.write(f"home/u/Pictures/import{day}/IMG_{index:05d}.jpg", t.random(t.rng.randrange(5000, 40000)))
        for index in range(t.rng.randint(200, 600)):
            t.write(f"home/u/src/clone{day}/d{index % 23:02d}/f{index:04d}.py", t.code(t.rng.randrange(200, 3000)))


# ---- the server ------------------------------------------------------------------------------

def server_setup(t: Tree, files: int) -> None:
    for log in ("syslog", "auth.log", "nginx/access.log"):
        t.write(f"var/log/{log}", t.text(20000))
        for generation in range(2, 8):
            t.write(f"var/log/{log}.{generation}.gz", t.random(4000))
    for index in range(files // 20):
        t.write(f"var/lib/app/db/page{index:05d}.dat", t.binary(8192))
    for index in range(files // 8):
        t.write(f"var/lib/app/data/item{index:05d}.json", t.text(t.rng.randrange(200, 3000)))
    for index in range(files // 3):
        t.write(f"usr/lib/pkg{index % 40:02d}/lib{index:05d}.{t.rng.choice(['py', 'so', 'conf'])}",
                t.binary(t.rng.randrange(500, 20000)) if index % 3 == 1 else t.code(t.rng.randrange(300, 4000)))
    for index in range(files // 10):
        t.write(f"usr/lib/python3.11/m{index % 30:02d}/f{index:05d}.py", t.code(t.rng.randrange(300, 3000)))
    for index in range(files // 12):
        t.write(f"lib/modules/6.1.0-1/kernel/d{index % 20:02d}/mod{index:04d}.ko", t.binary(6000))
    for index in range(files // 8):
        t.write(f"srv/www/site/s{index % 25:02d}/page{index:05d}.html", t.text(t.rng.randrange(500, 6000)))
    for user in range(8):
        t.write(f"var/spool/mail/user{user}", t.text(5000))


def server_round(t: Tree, number: int, per_day: int) -> None:
    for log in ("syslog", "auth.log", "nginx/access.log"):
        t.write(f"var/log/{log}", t.text(t.rng.randrange(500, 5000)), append=True)
    for path in t.some(t.files("var/lib/app/db"), 5, 30):
        t.write(str(path.relative_to(t.root)), t.binary(8192))
    for index in range(t.rng.randint(0, 10)):
        t.write(f"var/lib/app/data/n{number}_{index}.json", t.text(1500))
    for user in t.rng.sample(range(8), t.rng.randint(0, 5)):
        t.write(f"var/spool/mail/user{user}", t.text(1500), append=True)
    for index in range(t.rng.randint(0, 10)):
        t.write(f"srv/www/uploads/u{number}_{index}.jpg", t.random(t.rng.randrange(3000, 30000)))
    week = number // (7 * per_day)
    if number % per_day == 0:  # logrotate and the nightly dump
        for log in ("syslog", "auth.log", "nginx/access.log"):
            base = t.root / "var/log" / log
            (base.parent / f"{log}.7.gz").unlink(missing_ok=True)
            for generation in range(6, 1, -1):
                older = base.parent / f"{log}.{generation}.gz"
                if older.exists():
                    older.rename(base.parent / f"{log}.{generation + 1}.gz")
            t.write(f"var/log/{log}.2.gz", t.random(4000))
            t.write(f"var/log/{log}", t.text(1000))
        t.write("var/backups/db.sql.gz", t.random(t.rng.randrange(20000, 60000)))
    if number % (7 * per_day) == 2:  # the weekly upgrade and deploy
        for path in t.some(t.files("usr/lib"), 200, 800):
            if "python3" not in str(path):
                t.write(str(path.relative_to(t.root)), t.binary(path.stat().st_size) if path.suffix == ".so"
                        else t.code(path.stat().st_size))
        runtime = t.dirs("usr/lib")
        old = next((p for p in runtime if p.name.startswith("python3.")), None)
        if old is not None and week % 3 == 1:  # a new runtime: the old tree goes, the new one comes
            new = old.with_name(f"python3.{int(old.name.split('.')[1]) + 1}")
            for path in t.files(str(old.relative_to(t.root))):
                t.write(str((new / path.relative_to(old)).relative_to(t.root)), t.code(path.stat().st_size))
            shutil.rmtree(old)
        modules = t.dirs("lib/modules")
        if modules and week % 2 == 0:  # a kernel upgrade
            current = modules[-1]
            new = current.with_name(f"6.1.0-{int(current.name.rsplit('-', 1)[1]) + 1}")
            for path in t.files(str(current.relative_to(t.root))):
                t.write(str((new / path.relative_to(current)).relative_to(t.root)), t.binary(path.stat().st_size))
            for stale in modules[:-1]:
                shutil.rmtree(stale)
        for path in t.some(t.files("srv/www/site"), 100, 400):
            t.write(str(path.relative_to(t.root)), t.text(t.rng.randrange(500, 6000)))
    if number % (7 * per_day) == 5:  # the weekly reorganisation: data into dated folders
        for path in t.some([p for p in t.files("var/lib/app/data") if p.parent.name == "data"], 100, 600):
            t.move(path, path.parent / f"w{week}" / path.name)


MODELS = {"workstation": (workstation_setup, workstation_round), "server": (server_setup, server_round)}


# ---- the study ----------------------------------------------------------------------------

class Study:
    def __init__(self, args):
        self.args, self.dir = args, args.dir
        self.progress_file = self.dir / "progress.json"
        wanted = {"seed": args.seed, "files": args.files, "per_day": args.per_day}
        if self.progress_file.exists():
            self.progress = json.loads(self.progress_file.read_text())
            if self.progress["params"] != wanted:
                sys.exit(f"{self.dir} holds a study with {self.progress['params']}; use another --dir")
        else:
            self.progress = {"params": wanted, "rounds": [], "attack_at": self.attack_rounds()}
        socket_dir = Path(tempfile.mkdtemp(prefix="bkd-anomaly-"))
        self.config = {"backup_root": str(self.dir / "backup"), "state_dir": str(self.dir / "state"),
                       "socket": str(socket_dir / "bkd.sock"), "schedule": {"enabled": False},
                       "archive": {"enabled": False}, "monthly": {"enabled": False},
                       "host": [{"name": name, "source": str(self.dir / "src" / name)} for name in HOSTS]}
        (self.dir / "daemon").mkdir(parents=True, exist_ok=True)
        self.daemon = Daemon(self.dir / "daemon", Path(self.config["socket"]), self.config)

    def attack_rounds(self) -> dict[str, int]:
        """Each attacked host's round: after the baseline has filled (30 snapshots, or a quarter of the study)."""
        rng = random.Random(f"{self.args.seed}-attacks")
        low = min(31, max(7, self.args.snapshots // 4))
        return {name: rng.randint(low, max(low, self.args.snapshots - 2)) for name, (_, how) in HOSTS.items() if how}

    def tree(self, name: str, number: int) -> Tree:
        clock = EPOCH + number * 86400 // self.args.per_day
        return Tree(self.dir / "src" / name, random.Random(f"{self.args.seed}-{name}-{number}"), clock)

    def change(self, number: int) -> None:
        for name, (model, how) in HOSTS.items():
            setup, step = MODELS[model]
            t = self.tree(name, number)
            if number == 0:
                shutil.rmtree(t.root, ignore_errors=True)
                setup(t, self.args.files)
            elif how and self.progress["attack_at"][name] == number:
                attack(t, how)
            else:
                step(t, number, self.args.per_day)

    def run(self) -> None:
        self.daemon.start()
        try:
            for number in range(len(self.progress["rounds"]), self.args.snapshots + 1):
                self.change(number)
                started = time.monotonic()
                job = self.daemon.run_snapshot()
                seconds = time.monotonic() - started
                if job["status"] not in ("ok", "warning"):
                    sys.exit(f"round {number}: the job did not succeed: {json.dumps(job)[:2000]}")
                self.progress["rounds"].append({"round": number, "seconds": round(seconds, 3), "hosts": {
                    run["host"]: self.outcome(run) for run in job["hosts"]}})
                self.progress_file.write_text(json.dumps(self.progress))
                print(self.line(self.progress["rounds"][-1]), flush=True)
        finally:
            self.daemon.stop()
            shutil.rmtree(Path(self.config["socket"]).parent, ignore_errors=True)

    @staticmethod
    def outcome(run: dict) -> dict:
        stats = run["stats"]
        verdict = stats.get("anomaly") or {}
        return {"snapshot": run["snapshot"], "suspect": bool(verdict.get("suspect")),
                "spikes": [s["signal"] for s in verdict.get("signals", []) if s["spike"]],
                "signals": {s["signal"]: [s["value"], s["threshold"], s["files"]] for s in verdict.get("signals", [])},
                "profile": stats.get("profile"), "anomaly_s": stats.get("anomaly_s"),
                "duration_s": stats.get("duration_s"), "files": stats.get("files")}

    def line(self, record: dict) -> str:
        parts = []
        for name, outcome in record["hosts"].items():
            p = outcome["profile"] or {}
            mark = f" SUSPECT({','.join(outcome['spikes'])})" if outcome["suspect"] else ""
            parts.append(f"{name}: +{p.get('new', 0)} ~{p.get('changed', 0)} -{p.get('deleted', 0)}"
                         f" r{p.get('became_random', 0)}{mark}")
        return f"round {record['round']:4d} ({record['seconds']:.1f} s) " + "  ".join(parts)

    def report(self) -> dict:
        rounds = self.progress["rounds"]
        attack_at = self.progress["attack_at"]
        trials, false, detected, after = 0, [], {}, {}
        shares = []
        for record in rounds[1:]:  # the first pull is never judged
            for name, outcome in record["hosts"].items():
                at = attack_at.get(name)
                if at is not None and record["round"] == at:
                    detected[name] = {"round": at, "suspect": outcome["suspect"], "spikes": outcome["spikes"]}
                elif at is not None and record["round"] > at:
                    after.setdefault(name, []).append(outcome["suspect"])
                else:
                    trials += 1
                    if outcome["suspect"]:
                        false.append({"round": record["round"], "host": name, "spikes": outcome["spikes"],
                                      "signals": outcome["signals"]})
                if outcome["anomaly_s"] is not None and outcome["duration_s"]:
                    shares.append(100 * outcome["anomaly_s"] / outcome["duration_s"])
        return {"params": self.progress["params"], "snapshots": len(rounds) - 1, "trials": trials,
                "false_positives": false, "attacks": detected,
                "suspect_after_attack": {name: sum(marks) for name, marks in after.items()},
                "anomaly_share_percent": {"median": round(statistics.median(shares), 2) if shares else None,
                                          "max": round(max(shares), 2) if shares else None}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="where the study lives (resumed if it exists)")
    parser.add_argument("--snapshots", type=int, default=240, help="rounds after the first pull (default 240)")
    parser.add_argument("--files", type=int, default=3000, help="files per host at the start (default 3000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-day", type=int, default=6, help="rounds per model day (default 6)")
    parser.add_argument("--json", type=Path, help="write the summary here too")
    args = parser.parse_args()
    study = Study(args)
    study.run()
    summary = study.report()
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    ok = not summary["false_positives"] and all(a["suspect"] for a in summary["attacks"].values()) \
        and len(summary["attacks"]) == 3
    print(f"{summary['trials']} ordinary snapshots, {len(summary['false_positives'])} false positives; "
          f"attacks detected: {sum(a['suspect'] for a in summary['attacks'].values())} of {len(summary['attacks'])}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
