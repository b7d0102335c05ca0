"""The damage ledger (pipeline/damage.py): which snapshots hold a damaged
copy, what each integrity alert says, what the next run fetches again — on
real hard links in a directory tree, no daemon."""

import os
import shutil

import pytest

from bkd.tree.layout import HostDir
from bkd.pipeline.damage import Ledger

NAMES = ["2026-01-01_000000", "2026-01-01_010000", "2026-01-01_020000", "2026-01-01_030000",
         "2026-01-01_040000"]
BAD = b"a/f\xff"  # not UTF-8: kept exactly through the ledger's JSON


def _host(tmp_path) -> HostDir:
    """Five snapshots: a/f\\xff is one inode in the first four (unchanged, so
    linked) and a new one in the fifth; b is its own inode in each."""
    host_dir = HostDir.of(tmp_path, "h")
    host_dir.meta.mkdir(parents=True)
    first = None
    for index, name in enumerate(NAMES):
        tree = host_dir.hourly / name
        (tree / "a").mkdir(parents=True)
        (tree / "b").write_text(f"b {index}")
        target = os.path.join(os.fsencode(tree), BAD)
        if index in (0, 4):
            with open(target, "wb") as f:
                f.write(b"good")
            first = first or target
        else:
            os.link(first, target)
    return host_dir


def _changed(path: bytes = BAD) -> list[dict]:
    return [{"path": os.fsdecode(path), "problem": "changed"}]


def test_a_damaged_copy_is_one_finding_under_its_newest_holder_naming_the_older_ones(tmp_path):
    host_dir = _host(tmp_path)
    ledger = Ledger(host_dir)
    ledger.record(NAMES[1], _changed(), NAMES)  # found in the second: held by the first four
    ledger.record(NAMES[3], _changed(), NAMES)  # the same copy found again: nothing new
    (finding,) = ledger.findings(NAMES).values()
    assert (finding.subject, finding.files, finding.sharers, finding.gone) == (NAMES[3], 1, set(NAMES[:3]), False)
    assert finding.message("h") == (f"1 file(s) of snapshot {NAMES[3]} do not match its manifest (bkctl verify h "
                                    f"{NAMES[3]}); the damaged copies are also in 3 other snapshot(s): "
                                    f"{', '.join(NAMES[:3])}")
    assert ledger.refetch(NAMES[3]) == {BAD: os.stat(os.path.join(os.fsencode(host_dir.hourly / NAMES[3]), BAD)).st_ino}
    assert ledger.refetch(NAMES[4]) == {}  # the newest has a copy of its own: nothing to fetch again

    ledger.save()
    again = Ledger(host_dir)  # as a restart (or a rebuilt database) finds it
    assert again.copies == ledger.copies and again.findings(NAMES).keys() == {NAMES[3]}


def test_the_finding_shrinks_as_its_snapshots_are_pruned_and_ends_with_the_last(tmp_path):
    host_dir = _host(tmp_path)
    ledger = Ledger(host_dir)
    ledger.record(NAMES[3], _changed(), NAMES)
    ledger.save()
    for name in NAMES[2:4]:  # the subject itself and one sharer are pruned
        shutil.rmtree(host_dir.hourly / name)
    left = [NAMES[0], NAMES[1], NAMES[4]]
    (finding,) = Ledger(host_dir).findings(left).values()
    assert (finding.subject, finding.sharers, finding.gone) == (NAMES[3], set(NAMES[:2]), True)
    assert finding.message("h") == (f"1 damaged file(s) of snapshot {NAMES[3]} (pruned since) are still in "
                                    f"2 other snapshot(s): {NAMES[0]}, {NAMES[1]}")
    for name in NAMES[:2]:
        shutil.rmtree(host_dir.hourly / name)
    ledger = Ledger(host_dir)
    assert ledger.findings([NAMES[4]]) == {}
    ledger.save()
    assert not host_dir.damage_file.exists()


def test_a_holder_that_verifies_clean_forgets_the_copy_but_a_sample_that_missed_it_does_not(tmp_path):
    host_dir = _host(tmp_path)
    ledger = Ledger(host_dir)
    ledger.record(NAMES[3], _changed(), NAMES)
    ledger.record(NAMES[2], [], NAMES, hashed={b"b"})  # a sample that did not hash it
    assert len(ledger.copies) == 1
    ledger.record(NAMES[2], [], NAMES)  # every file of a holder hashed and matching: not damaged after all
    assert ledger.copies == [] and ledger.findings(NAMES) == {}


def test_other_problems_count_per_snapshot_and_go_with_it(tmp_path):
    host_dir = _host(tmp_path)
    ledger = Ledger(host_dir)
    ledger.record(NAMES[4], [{"path": "b", "problem": "missing"}, {"path": "c", "problem": "extra"}], NAMES)
    ledger.record(NAMES[4], [{"path": "b", "problem": "missing"}], NAMES, hashed={b"b"})  # a sample: at least
    assert {s: f.files for s, f in ledger.findings(NAMES).items()} == {NAMES[4]: 2}
    assert ledger.refetch(NAMES[4]) == {}  # the compare fetches a missing file anyway
    ledger.record(NAMES[4], [], NAMES)  # verified clean
    assert ledger.findings(NAMES) == {}
    ledger.record(NAMES[4], [{"path": "/", "problem": "no manifest recorded"}], NAMES)
    assert ledger.findings(NAMES[:4]) == {}  # its snapshot is gone


def test_many_sharers_are_summed_up_and_a_ledger_bkd_did_not_write_is_started_again(tmp_path):
    host_dir = _host(tmp_path)
    names = NAMES[:4] + [f"2026-01-01_0{h}0000" for h in range(5, 10)]
    for name in names[4:]:
        (host_dir.hourly / name / "a").mkdir(parents=True)
        os.link(os.path.join(os.fsencode(host_dir.hourly / NAMES[0]), BAD),
                os.path.join(os.fsencode(host_dir.hourly / name), BAD))
    shutil.rmtree(host_dir.hourly / NAMES[4])
    ledger = Ledger(host_dir)
    ledger.record(names[0], _changed(), names)
    (finding,) = ledger.findings(names).values()
    assert finding.message("h").endswith(f"also in 8 other snapshots, {names[0]} … {names[7]}")

    host_dir.damage_file.write_text('{"copies": [{"path": "../../etc/shadow", "inode": 1, "subject": '
                                    f'"{NAMES[0]}", "oldest": "{NAMES[0]}"}}], "problems": {{}}}}')
    planted = Ledger(host_dir)
    assert planted.copies == [] and planted.dirty
    planted.save()
    assert not host_dir.damage_file.exists()


def test_a_ledger_that_cannot_be_read_is_empty_and_one_that_cannot_be_written_says_so(tmp_path):
    host_dir = _host(tmp_path)
    host_dir.damage_file.mkdir()  # neither readable nor replaceable as a file
    ledger = Ledger(host_dir)
    assert ledger.copies == [] and ledger.refetch(NAMES[4]) == {}
    ledger.record(NAMES[3], _changed(), NAMES)
    with pytest.raises(OSError):
        ledger.save()
