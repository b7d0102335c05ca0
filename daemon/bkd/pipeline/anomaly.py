"""Change profiles and anomalies (SPEC §8 "Anomalies"; docs/watching.md).

Every snapshot gets a profile, computed from its change record before it
is committed: counts for every role (files new, changed, deleted, renamed,
bytes of new data, changed files that went from ordinary to random-looking
content, the spread of the most widespread new name), and for admins the
names behind them (extensions of new files, that name, example paths).

The profile is judged against the host's baseline: the profiles of its
last `[anomaly] baseline` snapshots that are not suspect (while the host
has unreleased suspects, only snapshots before the first of them, so that
a host that stays encrypted never becomes "normal"). Each signal's median
and MAD (median absolute deviation) over the baseline give a threshold,
median + factor × max(MAD, floor); the floor (one file, or 0.1 % of the
host's files) keeps a host that never changes from being alerted by one
file. A signal is a spike above its threshold when at least `min_files`
files are involved. Without a baseline yet (fewer than five comparable
snapshots) only the absolute signals are judged, against 0.

The pure functions here (profile, signals, judge) are tested with tables
and hypothesis; `assess` runs them for a snapshot being made."""

from __future__ import annotations

import bisect
import json
import os
import stat
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config.models import Anomaly
from ..tree import holds
from ..tree.layout import HostDir, SnapshotName
from . import changes, entropy, manifest

FLOOR_SHARE = 0.001  # of the host's files: the least spread a signal is given
MIN_BASELINE = 5  # comparable snapshots before the relative signals are judged (at most `baseline`)
TOP = 5  # extensions, names and example paths kept per profile
Changes = list[changes.Change]


@dataclass(frozen=True)
class Signal:
    name: str
    absolute: bool  # judged before the host has a baseline too
    what: str  # for people: what the value counts
    value: Callable[[dict], tuple[float, int]]  # profile → (value, files involved)


def _became_random(p: dict) -> tuple[float, int]:
    return p["became_random"], p["became_random"]


def _deleted(p: dict) -> tuple[float, int]:
    lost = max(0, p["deleted"] - p["new"])
    return lost, lost


def _renamed(p: dict) -> tuple[float, int]:
    return p["renamed_ext"], p["renamed_ext"]


def _note(p: dict) -> tuple[float, int]:
    return p["note_dirs"], p["new"] + p["changed"] + p["deleted"]


SIGNALS = (
    Signal("became_random", True, "changed files whose content went from ordinary to random-looking",
           _became_random),
    Signal("deleted", False, "files deleted, less the files new", _deleted),
    Signal("renamed", False, "files renamed to another extension", _renamed),
    Signal("note", True, "existing directories in which one new file name appeared", _note),
)
SIGNAL_NAMES = tuple(s.name for s in SIGNALS)


# ---- the profile (pure) -------------------------------------------------------------

def _extension(name: bytes) -> bytes | None:
    base = name.rsplit(b"/", 1)[-1]
    dot = base.rfind(b".")
    return base[dot + 1:].lower()[:32] if 0 < dot < len(base) - 1 else None


def _split(path: bytes) -> tuple[bytes, bytes]:
    parent, _, base = path.rpartition(b"/")
    return parent, base


def _stem(base: bytes) -> bytes:
    dot = base.rfind(b".")
    return base[:dot] if dot > 0 else base


def _renames(gone: list[changes.Change], new: list[changes.Change]) -> list[tuple[bytes, bytes]]:
    """(old path, new path) of the deleted and new regular files that are one
    file renamed: the same content anywhere (a move), or in the same directory
    the old name with something appended after a dot (`a.doc` →
    `a.doc.locked`) or with another extension (`a.doc` → `a.xyz`), whatever
    the content. Each file pairs once."""
    pairs, taken = [], set()
    by_content: dict[str, list[bytes]] = defaultdict(list)
    for change in reversed(new):
        by_content[change.new.sha256].append(change.path)
    unpaired = []
    for change in gone:
        candidates = by_content.get(change.old.sha256, []) if change.old.sha256 else []
        if candidates:
            target = candidates.pop()
            taken.add(target)
            pairs.append((change.path, target))
        else:
            unpaired.append(change)
    by_dir: dict[bytes, list[bytes]] = defaultdict(list)  # sorted names of unpaired new files
    by_stem: dict[tuple[bytes, bytes], list[bytes]] = defaultdict(list)
    for change in new:
        if change.path not in taken:
            parent, base = _split(change.path)
            by_dir[parent].append(base)
            by_stem[(parent, _stem(base))].append(base)
    for change in unpaired:
        parent, base = _split(change.path)
        names = by_dir.get(parent, [])
        index = bisect.bisect_left(names, base + b".")
        target = next((name for name in names[index:index + TOP] if name.startswith(base + b".")
                       and _join(parent, name) not in taken), None)
        if target is None:
            target = next((name for name in by_stem.get((parent, _stem(base)), ())
                           if _join(parent, name) not in taken), None)
        if target is not None:
            taken.add(_join(parent, target))
            pairs.append((change.path, _join(parent, target)))
    return pairs


def _join(parent: bytes, base: bytes) -> bytes:
    return parent + b"/" + base if parent else base


def _name(path: bytes) -> str:
    """A path as JSON carries it (surrogate escapes for bytes that are not UTF-8)."""
    return os.fsdecode(path)


def profile(found: Changes, files_before: int | None, new_entropy: Callable[[changes.Change], float | None],
            old_entropy: Callable[[changes.Change], float | None]) -> tuple[dict, dict]:
    """(numbers, names) of a snapshot's changes. numbers are for every role;
    names (extensions, the most widespread new names, example paths) for
    admins. files_before: the previous snapshot's regular files (None: a
    first snapshot). The entropy functions sample a changed file's new and
    previous content; the previous one is sampled only when the new one
    looks random (nothing else can have become random). A first snapshot
    (all new, never judged) is only counted."""
    if files_before is None:
        sizes = [c.new.size for c in found if c.new.type == "f"]
        numbers = dict.fromkeys(("changed", "deleted", "metadata", "renamed", "renamed_ext", "became_random",
                                 "sampled", "note_dirs", "dirs_gone"), 0)
        numbers.update(first=True, files_before=None, new=len(sizes), bytes_changed=sum(sizes),
                       dirs_new=sum(1 for c in found if c.new.type == "d"))
        return numbers, {"extensions": [], "notes": [], "became_random": [], "deleted": [], "renamed": []}
    new_files = [c for c in found if c.new is not None and c.new.type == "f" and (c.old is None or c.old.type != "f")]
    gone_files = [c for c in found if c.old is not None and c.old.type == "f" and (c.new is None or c.new.type != "f")]
    rewritten = [c for c in found if c.old is not None and c.new is not None and c.old.type == c.new.type == "f"]
    changed = [c for c in rewritten if c.old.sha256 != c.new.sha256]
    new_dirs = {c.path for c in found if c.new is not None and c.new.type == "d"}
    random_now, sampled = [], 0
    for change in changed:
        after = new_entropy(change)
        if after is None:
            continue
        if not entropy.looks_random(after):
            sampled += 1
            continue
        before = old_entropy(change)
        if before is None:
            continue
        sampled += 1
        if entropy.looks_ordinary(before):
            random_now.append(change.path)
    pairs = _renames(gone_files, new_files)
    retyped = [(old, new) for old, new in pairs if _extension(old) != _extension(new)]
    renamed_from, renamed_to = {old for old, _new in pairs}, {new for _old, new in pairs}
    extensions = Counter(_extension(c.path) for c in new_files)
    extensions.pop(None, None)
    # A new name in many directories that existed before (ransom notes): new
    # directories do not count, a new source tree's __init__.py is no note.
    spread: dict[bytes, set[bytes]] = defaultdict(set)
    for change in new_files:
        parent, base = _split(change.path)
        if change.path not in renamed_to and parent not in new_dirs:
            spread[base].add(parent)
    notes = sorted(((len(dirs), base) for base, dirs in spread.items()), reverse=True)[:TOP]
    numbers = {
        "first": files_before is None,
        "files_before": files_before,
        "new": len(new_files), "changed": len(changed), "deleted": len(gone_files),
        "metadata": len(rewritten) - len(changed),
        "bytes_changed": sum(c.new.size for c in new_files) + sum(c.new.size for c in changed),
        "renamed": len(pairs), "renamed_ext": len(retyped),
        "became_random": len(random_now), "sampled": sampled,
        "note_dirs": notes[0][0] if notes else 0,
        "dirs_new": len(new_dirs),
        "dirs_gone": sum(1 for c in found if c.old is not None and c.old.type == "d"),
    }
    names = {
        "extensions": [[ext.decode("utf-8", "surrogateescape"), count] for ext, count in extensions.most_common(TOP)],
        "notes": [[_name(base), dirs] for dirs, base in notes if dirs > 1],
        "became_random": [_name(path) for path in random_now[:TOP]],
        "deleted": [_name(c.path) for c in gone_files if c.path not in renamed_from][:TOP],
        "renamed": [[_name(old), _name(new)] for old, new in retyped[:TOP]],
    }
    return numbers, names


# ---- the judgement (pure) -------------------------------------------------------------

def _median_and_mad(values: list[float]) -> tuple[float, float]:
    median = statistics.median(values)
    return median, statistics.median(abs(v - median) for v in values)


def judge(numbers: dict, baseline: list[dict], settings: Anomaly) -> dict:
    """Each signal of a profile against the baseline (comparable profiles,
    newest first): its value and the files involved, the baseline's median
    and spread, the threshold, and whether it is a spike. Suspect when any
    signal is. A first snapshot (everything new) is never judged."""
    comparable = len(baseline) >= min(MIN_BASELINE, settings.baseline)
    floor = max(1.0, FLOOR_SHARE * (numbers.get("files_before") or 0))
    signals = []
    for signal in SIGNALS:
        value, files = signal.value(numbers)
        judged = not numbers["first"] and (signal.absolute or comparable)
        median, mad = _median_and_mad([signal.value(p)[0] for p in baseline]) if comparable else (0.0, 0.0)
        spread = round(max(mad, floor), 3)
        threshold = round(median + settings.factor * spread, 3)  # as shown: the decision is the one explained
        signals.append({"signal": signal.name, "value": value, "files": files, "baseline": median,
                        "spread": spread, "threshold": threshold,
                        "snapshots": len(baseline) if comparable else 0, "judged": judged,
                        "spike": judged and value > threshold and files >= settings.min_files})
    return {"suspect": any(s["spike"] for s in signals), "baseline": len(baseline) if comparable else 0,
            "signals": signals}


def explain(signals: list[dict]) -> str:
    """The spikes in words, numbers only (every role reads it)."""
    words = {s.name: s.what for s in SIGNALS}
    return "; ".join(f"{words[s['signal']]}: {_number(s['value'])} (baseline {_number(s['baseline'])}, "
                     f"threshold {_number(s['threshold'])}, {_number(s['files'])} files)"
                     for s in signals if s.get("spike"))


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---- one snapshot being made ------------------------------------------------------------

def baseline_of(host_dir: HostDir, n: int) -> list[dict]:
    """The profiles of the host's last n comparable snapshots, newest first:
    complete, not a first snapshot, not suspect, and older than the first
    unreleased suspect while the host has one."""
    hold = holds.read(host_dir)
    limit = SnapshotName.parse(hold.snapshots[0]) if hold and hold.snapshots else None
    found = []
    for name in reversed(host_dir.snapshots()):
        if len(found) >= n:
            break
        if limit is not None and name >= limit:
            continue
        record = _meta(host_dir.meta_file(name))
        numbers = record.get("profile")
        if (isinstance(numbers, dict) and not numbers.get("first") and _complete(numbers)
                and not (record.get("anomaly") or {}).get("suspect")):
            found.append(numbers)
    return found


def _complete(numbers: dict) -> bool:
    try:
        return all(isinstance(signal.value(numbers)[0], (int, float)) for signal in SIGNALS)
    except (KeyError, TypeError):
        return False


def _meta(path: Path) -> dict:
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


@dataclass(frozen=True)
class Assessment:
    """What the change record and the profile say of a snapshot being made."""

    found: Changes
    numbers: dict
    names: dict
    verdict: dict | None  # None: [anomaly] enabled = false
    lines: list[bytes] | None = None  # a first pull's record, made straight from rsync's list (found is empty)


def assess(host_dir: HostDir, staging: Path, previous: Path | None, files_before: int | None,
           new_sums: changes.Sums, old_sums: changes.Sums, candidates, hashed: dict[bytes, manifest.Hashed],
           settings: Anomaly, listed: list[tuple[bytes, str]] | None = None) -> Assessment:
    """The change record of staging against previous, its profile, and the
    verdict against the host's baseline. listed: a first pull's entries as
    rsync made them (path, type), when its counts say the list is whole."""
    if previous is None and listed is not None:
        lines, counts = changes.first_pull(staging, new_sums, hashed, listed)
        numbers, names = profile([], None, lambda c: None, lambda c: None)
        numbers.update(new=counts["files"], bytes_changed=counts["bytes"], dirs_new=counts["dirs"])
        return Assessment([], numbers, names, judge(numbers, [], settings) if settings.enabled else None, lines)
    found = changes.compute(staging, previous, new_sums, old_sums, candidates, hashed)
    new_tree = changes.Tree(staging)
    old_tree = changes.Tree(previous) if previous is not None else None
    try:
        def new_entropy(change: changes.Change) -> float | None:
            known = hashed.get(change.path)
            if known is not None and known.inode == change.new.inode and known.entropy is not None:
                return known.entropy
            return _sample(new_tree, change.path)

        def old_entropy(change: changes.Change) -> float | None:
            # Was it ordinary? The first block that is not decides it was not.
            known = hashed.get(change.path)
            if known is not None and known.inode == change.new.inode and known.was is not None:
                return known.was  # sampled beside the transfer
            return _sample(old_tree, change.path, entropy.ORDINARY) if old_tree is not None else None

        numbers, names = profile(found, files_before, new_entropy, old_entropy)
    finally:
        new_tree.close()
        if old_tree is not None:
            old_tree.close()
    verdict = judge(numbers, baseline_of(host_dir, settings.baseline), settings) if settings.enabled else None
    return Assessment(found, numbers, names, verdict)


def sample_at(root_fd: int, path: bytes, enough: float = entropy.RANDOM) -> float | None:
    """The entropy sample of the regular file at path under root_fd (reached
    without following a symlink); None where there is none."""
    try:
        fd = manifest.open_beneath(root_fd, path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return entropy.sample(fd, st.st_size, enough) if stat.S_ISREG(st.st_mode) else None
    finally:
        os.close(fd)


def _sample(tree: changes.Tree, path: bytes, enough: float = entropy.RANDOM) -> float | None:
    fd = tree.open(path)
    if fd is None:
        return None
    try:
        return entropy.sample(fd, os.fstat(fd).st_size, enough)
    finally:
        os.close(fd)
