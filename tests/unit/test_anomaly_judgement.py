"""Change profiles and their judgement (pipeline/anomaly.py, pipeline/entropy.py):
pure functions, with tables and hypothesis."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bkd.config.models import Anomaly
from bkd.pipeline import anomaly, entropy
from bkd.pipeline.changes import Change, Side

DEFAULTS = Anomaly()


def f(path: str, sha: str = "s", size: int = 100) -> Side:
    return Side("f", size, 0, hash(path) & 0xFFFF, sha)


def d() -> Side:
    return Side("d", 4096, 0, 1)


def new(path, sha="n", size=100):
    return Change(path.encode(), None, f(path, sha, size))


def gone(path, sha="o"):
    return Change(path.encode(), f(path, sha), None)


def rewritten(path, old="o", new_sha="n"):
    return Change(path.encode(), f(path, old), f(path, new_sha))


def profile_of(found, files_before=1000, after=None, before=None):
    """profile with entropies by path: after/before map path → bits (default ordinary text)."""
    after, before = after or {}, before or {}
    numbers, names = anomaly.profile(found, files_before, lambda c: after.get(c.path.decode(), 4.5),
                                     lambda c: before.get(c.path.decode(), 4.5))
    return numbers, names


# ---- the profile ---------------------------------------------------------------

def test_a_profile_counts_what_changed_and_keeps_the_names_apart():
    found = sorted([
        rewritten("docs/a.txt"), rewritten("docs/b.txt", "same", "same"),  # content, then metadata only
        new("docs/c.txt"), gone("docs/old.txt"),
        gone("docs/x.doc", "x"), new("docs/x.doc.locked", "enc"),  # renamed: an extension appended
        gone("mv/from.txt", "moved"), new("elsewhere/to.txt", "moved"),  # moved: the same content
        gone("docs/y.doc", "y"), new("docs/y.xyz", "y2"),  # renamed: another extension
        Change(b"newdir", None, d()), new("newdir/README-DECRYPT.txt"),  # a new directory: no note
        *(new(f"d{i}/README-DECRYPT.txt") for i in range(4)),
    ], key=lambda c: c.path)
    numbers, names = profile_of(found, after={"docs/a.txt": 7.9})
    assert numbers == {
        "first": False, "files_before": 1000, "new": 9, "changed": 1, "deleted": 4, "metadata": 1,
        "bytes_changed": 1000, "renamed": 3, "renamed_ext": 2, "became_random": 1, "sampled": 1,
        "note_dirs": 4, "dirs_new": 1, "dirs_gone": 0}
    assert names["notes"] == [["README-DECRYPT.txt", 4]]
    assert names["renamed"] == [["docs/x.doc", "docs/x.doc.locked"], ["docs/y.doc", "docs/y.xyz"]]
    assert names["became_random"] == ["docs/a.txt"] and names["deleted"] == ["docs/old.txt"]
    assert dict(map(tuple, names["extensions"]))["txt"] == 7


@pytest.mark.parametrize("before, after, became", [
    (4.5, 7.9, 1),  # text encrypted
    (7.9, 8.0, 0),  # already random (compressed, media): never counts
    (7.1, 7.9, 0),  # in between before: not ordinary
    (4.5, 7.1, 0),  # in between after: not random
    (None, 7.9, 0),  # the previous version cannot be judged (too small)
])
def test_only_ordinary_content_that_turned_random_counts(before, after, became):
    numbers, _ = profile_of([rewritten("f")], after={"f": after}, before={"f": before})
    assert numbers["became_random"] == became


def test_the_previous_version_is_sampled_only_when_the_new_one_looks_random():
    asked = []
    anomaly.profile([rewritten("a"), rewritten("b")], 10, lambda c: 7.9 if c.path == b"a" else 4.0,
                    lambda c: asked.append(c.path) or 4.0)
    assert asked == [b"a"]


def test_a_first_snapshot_is_all_new_and_never_judged():
    numbers, _ = profile_of([new(f"d{i}/f") for i in range(500)], files_before=None)
    assert numbers["first"] and numbers["new"] == 500
    verdict = anomaly.judge(numbers, [], DEFAULTS)
    assert not verdict["suspect"] and not any(s["judged"] for s in verdict["signals"])


# ---- the judgement -------------------------------------------------------------

def quiet(**values) -> dict:
    base = {"first": False, "files_before": 1000, "new": 5, "changed": 10, "deleted": 3, "became_random": 0,
            "renamed_ext": 0, "note_dirs": 1}
    return {**base, **values}


def signal(verdict: dict, name: str) -> dict:
    return next(s for s in verdict["signals"] if s["signal"] == name)


@pytest.mark.parametrize("values, baseline, spikes", [
    # No baseline yet: the absolute signals only, against 0 (threshold factor × floor = 10).
    ({"became_random": 250}, [], {"became_random"}),
    ({"deleted": 700, "new": 0}, [], set()),
    ({"renamed_ext": 700}, [], set()),
    ({"note_dirs": 40, "new": 240}, [], {"note"}),
    # With a baseline, every signal; min_files gates each (files involved).
    ({"deleted": 700, "new": 0}, [quiet()] * 10, {"deleted"}),
    ({"deleted": 700, "new": 650}, [quiet()] * 10, set()),  # an upgrade: as many new as gone
    ({"deleted": 150, "new": 0}, [quiet()] * 10, set()),  # a spike, but under min_files
    ({"renamed_ext": 600}, [quiet()] * 10, {"renamed"}),
    ({"became_random": 199}, [quiet()] * 10, set()),
    # A host that usually deletes a lot has a threshold to match.
    ({"deleted": 700, "new": 0}, [quiet(deleted=d, new=0) for d in (400, 500, 600, 700, 800, 900)], set()),
    # A baseline of four is none yet (five are needed).
    ({"deleted": 700, "new": 0}, [quiet()] * 4, set()),
])
def test_signals_against_the_baseline(values, baseline, spikes):
    verdict = anomaly.judge(quiet(**values), baseline, DEFAULTS)
    assert {s["signal"] for s in verdict["signals"] if s["spike"]} == spikes
    assert verdict["suspect"] == bool(spikes)


def test_each_decision_is_explained_with_its_numbers():
    verdict = anomaly.judge(quiet(deleted=703, new=3), [quiet(deleted=d, new=0) for d in (2, 4, 4, 6, 9)],
                            DEFAULTS)
    deleted = signal(verdict, "deleted")
    assert deleted == {"signal": "deleted", "value": 700, "files": 700, "baseline": 4, "spread": 2.0,
                       "threshold": 24.0, "snapshots": 5, "judged": True, "spike": True}
    assert anomaly.explain(verdict["signals"]) == \
        "files deleted, less the files new: 700 (baseline 4, threshold 24, 700 files)"


def test_the_floor_grows_with_the_host():
    verdict = anomaly.judge(quiet(files_before=500_000, deleted=4000, new=0), [quiet(deleted=0, new=0)] * 10,
                            DEFAULTS)
    assert signal(verdict, "deleted")["spread"] == 500.0 and not verdict["suspect"]  # 0.1 % of the files


profiles = st.fixed_dictionaries({
    "first": st.just(False), "files_before": st.integers(0, 10**6), "new": st.integers(0, 10**5),
    "changed": st.integers(0, 10**5), "deleted": st.integers(0, 10**5), "became_random": st.integers(0, 10**5),
    "renamed_ext": st.integers(0, 10**5), "note_dirs": st.integers(0, 10**4)})
settings_ = st.builds(Anomaly, baseline=st.integers(3, 60), min_files=st.integers(1, 10**4),
                      factor=st.floats(2, 1000))


@settings(max_examples=200, deadline=None)
@given(numbers=profiles, baseline=st.lists(profiles, max_size=40), config=settings_)
def test_a_spike_is_exactly_a_judged_signal_above_its_threshold_with_enough_files(numbers, baseline, config):
    verdict = anomaly.judge(numbers, baseline, config)
    comparable = len(baseline) >= min(anomaly.MIN_BASELINE, config.baseline)
    assert [s["signal"] for s in verdict["signals"]] == list(anomaly.SIGNAL_NAMES)
    for s in verdict["signals"]:
        assert s["judged"] == (s["signal"] in ("became_random", "note") or comparable)
        assert s["spread"] >= max(1.0, numbers["files_before"] * anomaly.FLOOR_SHARE) - 1e-3
        assert s["threshold"] >= s["baseline"] + config.factor - 1e-3
        assert s["spike"] == (s["judged"] and s["value"] > s["threshold"] and s["files"] >= config.min_files)
    assert verdict["suspect"] == any(s["spike"] for s in verdict["signals"])


@settings(max_examples=200, deadline=None)
@given(numbers=profiles, baseline=st.lists(profiles, min_size=5, max_size=30), more=st.integers(1, 10**5))
def test_more_of_a_signal_never_turns_a_spike_off(numbers, baseline, more):
    for name, key in (("became_random", "became_random"), ("renamed", "renamed_ext"), ("note", "note_dirs")):
        before = signal(anomaly.judge(numbers, baseline, DEFAULTS), name)["spike"]
        after = signal(anomaly.judge({**numbers, key: numbers[key] + more}, baseline, DEFAULTS), name)["spike"]
        assert after or not before


# ---- entropy ------------------------------------------------------------------------

@pytest.mark.parametrize("data, looks", [
    (os.urandom(4096), "random"),
    (os.urandom(300), "random"),
    (b"the quick brown fox jumps over the lazy dog\n" * 100, "ordinary"),
    (bytes(5000), "ordinary"),
    (bytes(range(256)) * 20, "random"),  # uniform bytes are uniform bytes (entropy cannot tell)
    (b"short", None),  # too small to judge
])
def test_entropy_tells_random_from_ordinary(data, looks):
    value = entropy.score(data[a:b] for a, b in entropy.ranges(len(data)))
    assert (entropy.looks_random(value), entropy.looks_ordinary(value)) == {
        "random": (True, False), "ordinary": (False, True), None: (False, False)}[looks]


def test_a_file_encrypted_only_at_its_start_looks_random():
    data = os.urandom(1024) + b"plain text left as it was\n" * 4000
    assert entropy.looks_random(entropy.score(data[a:b] for a, b in entropy.ranges(len(data))))


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 300 * 1024), chunk=st.integers(1, 70000))
def test_the_sample_taken_while_hashing_is_the_sample_read_directly(size, chunk):
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    collector = entropy.Collector(size)
    for start in range(0, size, chunk):
        collector.feed(start, memoryview(data)[start:start + chunk])
    assert collector.score() == entropy.score(data[a:b] for a, b in entropy.ranges(size))
    assert all(b - a <= entropy.BLOCK and 0 <= a < b <= size for a, b in entropy.ranges(size))
