"""The change record and the version index over real trees linked as bkd
links its snapshots (`cp -al` of the previous one; what changed gets an inode
of its own), without a daemon: the records computed from two trees, their
file format, and what the index answers as copies come and go."""

import os
import shutil
import subprocess

import pytest
from hypothesis import given, strategies as st

from bkd.pipeline import manifest
from bkd.pipeline import changes
from bkd.pipeline.changes import Entry as Change, RecordRefused
from bkd.pipeline.versions.changes import between
from bkd.pipeline.versions.index import ARCHIVE, HOURLY, MONTHLY, Holder, Index
from bkd.pipeline.versions.pattern import compile_pattern


class Chain:
    """Snapshots s0, s1, … under root, each a linked copy of the one before, then changed."""

    def __init__(self, root):
        self.root = root
        self.trees: list = []
        self.lines: list = []

    def first(self, files: dict[bytes, bytes]) -> None:
        tree = self.root / "s0"
        tree.mkdir()
        for path, data in files.items():
            self.write(tree, path, data)
        self._done(tree)

    def next(self, change) -> None:
        tree = self.root / f"s{len(self.trees)}"
        subprocess.run(["cp", "-al", str(self.trees[-1]), str(tree)], check=True)
        change(tree)
        self._done(tree)

    @staticmethod
    def write(tree, path: bytes, data: bytes) -> None:
        full = os.path.join(os.fsencode(tree), path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if os.path.lexists(full):
            os.unlink(full)  # a new inode, as rsync writes a changed file
        with open(full, "wb") as f:
            f.write(data)

    def _done(self, tree) -> None:
        previous = self.trees[-1] if self.trees else None
        found, _ = manifest.by_inode(tree, previous, manifest.parse(self.lines[-1], "m") if self.trees else None)
        self.trees.append(tree)
        self.lines.append(manifest.sorted_lines(found))

    def records(self, number: int) -> list[Change]:
        previous = self.trees[number - 1] if number else None
        return between(self.trees[number], self.lines[number], previous,
                               self.lines[number - 1] if number else None)


def index_of(chain: Chain, path) -> Index:
    index = Index.create(path)
    for number, tree in enumerate(chain.trees):
        index.append(tree.name, 1_000_000 + number * 3600, chain.records(number), tree, [])
    index.set_holders([Holder(t.name, HOURLY, n + 1, 0) for n, t in enumerate(chain.trees)])
    return index


def ops(records: list[Change]) -> list[tuple]:
    return [(c.op, c.type, c.path) for c in records]


def test_the_records_of_two_trees_name_each_path_whose_inode_is_new_or_gone(tmp_path):
    chain = Chain(tmp_path)
    chain.first({b"keep": b"same", b"edit": b"one", b"d/x": b"x", b"d/y": b"y", b"swap/in": b"i", b"flip": b"f"})
    first = chain.records(0)
    assert ops(first) == [("+", "d", b"d"), ("+", "f", b"d/x"), ("+", "f", b"d/y"), ("+", "f", b"edit"),
                          ("+", "f", b"flip"), ("+", "f", b"keep"), ("+", "d", b"swap"), ("+", "f", b"swap/in")]
    assert {c.path: c.sha256 for c in first if c.type == "f"}[b"keep"] == manifest.sha256_of(chain.trees[0] / "keep")

    def change(tree):
        Chain.write(tree, b"edit", b"two")
        shutil.rmtree(tree / "d")
        shutil.rmtree(tree / "swap")
        (tree / "swap").write_bytes(b"a file now")
        os.unlink(tree / "flip")
        (tree / "flip").mkdir()
        (tree / "flip" / "inner").write_bytes(b"new")
        os.link(tree / "keep", tree / "keep-too")  # a new name of an inode the previous snapshot holds

    chain.next(change)
    second = chain.records(1)
    assert ops(second) == [("-", "d", b"d"), ("-", "f", b"d/x"), ("-", "f", b"d/y"), ("~", "f", b"edit"),
                           ("~", "d", b"flip"), ("+", "f", b"flip/inner"), ("+", "f", b"keep-too"),
                           ("~", "f", b"swap"), ("-", "f", b"swap/in")]
    by_path = {c.path: c for c in second}
    assert by_path[b"keep-too"].ino == os.stat(chain.trees[0] / "keep").st_ino
    assert by_path[b"d/x"].sha256 == manifest.sha256_of(chain.trees[0] / "d/x")  # a gone entry: the old one's
    assert by_path[b"edit"].sha256 == manifest.sha256_of(chain.trees[1] / "edit")


def test_a_record_written_and_read_back_is_the_same_and_a_foreign_line_refuses_it(tmp_path):
    chain = Chain(tmp_path)
    chain.first({b"a": b"1", b"new\nline": b"2", b"back\\slash": b"3", b"bad-\xff": b"4", b"sp ace": b"5"})
    records = chain.records(0)
    data = changes.encode(None, records)
    assert data.startswith(b"# bkd changes 1 previous=-\n")
    assert changes.parse(data, "x") == (None, [c._replace(blocks=None) for c in records])
    assert changes.parse(changes.encode("2026-01-01_000000", records), "x")[0] == "2026-01-01_000000"
    for bad in (b"# not ours\n", data + b"+ f 1 2 3 - a\n", data + b"* f 1 2 3 - a\n", data + b"+ d 1 2 3 " +
                b"0" * 64 + b" a\n", data + b"+ f 1 2 3 " + b"0" * 64 + b" ../../etc/shadow\n",
                data + b"+ f 1 2 3\n"):
        with pytest.raises(RecordRefused):
            changes.parse(bad, "x")


@given(st.lists(st.binary(min_size=1, max_size=20).filter(lambda b: b"/" not in b and b"\0" not in b
                                                          and b not in (b".", b"..")), min_size=1, max_size=5))
def test_any_name_round_trips_through_the_record(names):
    records = [Change("+", "f", 1, 2, 3, "0" * 64, name) for name in sorted(set(names))]
    assert changes.parse(changes.encode(None, records), "x")[1] == records


def test_find_gives_one_version_per_content_with_the_snapshots_holding_it(tmp_path):
    chain = Chain(tmp_path / "trees")
    (tmp_path / "trees").mkdir()
    chain.first({b"etc/app.conf": b"v1", b"etc/other.conf": b"o"})
    chain.next(lambda t: Chain.write(t, b"etc/app.conf", b"v2"))  # s1
    chain.next(lambda t: Chain.write(t, b"etc/app.conf", b"v2"))  # s2: new inode, same content (a chmod, a re-fetch)
    chain.next(lambda t: os.unlink(t / "etc/app.conf"))  # s3: gone
    chain.next(lambda t: Chain.write(t, b"etc/app.conf", b"v2"))  # s4: back as it was
    chain.next(lambda t: Chain.write(t, b"etc/app.conf", b"v3"))  # s5
    index = index_of(chain, tmp_path / "index.sqlite")
    versions, more = index.find(compile_pattern("app.conf"), None, 100)
    assert not more
    assert [(v["first"], v["last"], v["count"]) for v in versions] == [("s5", "s5", 1), ("s1", "s4", 3),
                                                                       ("s0", "s0", 1)]
    assert [v["path"] for v in index.find(compile_pattern("**/*.conf"), None, 100)[0]] == [
        "/etc/app.conf", "/etc/other.conf", "/etc/app.conf", "/etc/app.conf"]
    assert index.find(compile_pattern("*.conf"), None, 2) == (index.find(compile_pattern("*.conf"), None, 100)[0][:2],
                                                              True)
    assert [v["first"] for v in index.find(compile_pattern("app.conf"), 1_000_000 + 5 * 3600, 100)[0]] == ["s5"]


def test_pruning_forgets_what_no_copy_holds_and_frees_what_it_said(tmp_path):
    (tmp_path / "trees").mkdir()
    chain = Chain(tmp_path / "trees")
    chain.first({b"base": b"b" * 10000})
    chain.next(lambda t: Chain.write(t, b"big", os.urandom(1 << 20)))  # s1: only s1 holds it
    chain.next(lambda t: os.unlink(t / "big"))  # s2
    index = index_of(chain, tmp_path / "index.sqlite")
    holders = index.holders()
    big = os.lstat(chain.trees[1] / "big").st_blocks * 512
    space = index.space(True)
    assert {c["name"]: c["freed_bytes"] for c in space["snapshots"]}["s1"] == big
    assert index.freed([h for h in holders if h.name in ("s1", "s2")]) == big  # base is s0's too
    everything = index.freed(holders)
    assert everything == space["unique_bytes"] == index.inode_bytes()
    index.set_holders([h for h in holders if h.name != "s1"])
    assert index.find(compile_pattern("/big"), None, 10) == ([], False)
    assert index.space(False)["unique_bytes"] == space["unique_bytes"] - big
    [base] = index.find(compile_pattern("/base"), None, 10)[0]
    assert (base["first"], base["last"], base["count"]) == ("s0", "s2", 2)


def test_a_monthly_copy_keeps_inodes_an_archive_keeps_only_versions(tmp_path):
    (tmp_path / "trees").mkdir()
    chain = Chain(tmp_path / "trees")
    chain.first({b"f": b"1"})
    chain.next(lambda t: Chain.write(t, b"f", b"2" * 5000))  # s1
    chain.next(lambda t: Chain.write(t, b"f", b"3"))  # s2
    index = index_of(chain, tmp_path / "index.sqlite")
    s0, s1, s2 = index.holders()
    blocks = os.lstat(chain.trees[1] / "f").st_blocks * 512
    index.set_holders([s0, s2, Holder("monthly/2026-01", MONTHLY, s1.seq, 0)])
    found = index.find(compile_pattern("/f"), None, 10)[0]
    assert [(v["first"], v["last"], v["count"]) for v in found] == [("s2", "s2", 1), ("monthly/2026-01",) * 2 + (1,),
                                                                    ("s0", "s0", 1)]
    assert index.freed([h for h in index.holders() if h.kind == MONTHLY]) == blocks
    index.set_holders([s0, s2, Holder("archive/x.tar.zst", ARCHIVE, s1.seq, 77)])
    assert [v["first"] for v in index.find(compile_pattern("/f"), None, 10)[0]] == ["s2", "archive/x.tar.zst", "s0"]
    space = index.space(True)
    assert {c["name"]: c["freed_bytes"] for c in space["snapshots"]}["archive/x.tar.zst"] == 77  # its own file
    assert space["unique_bytes"] == index.inode_bytes() + 77 and index.freed([s0, s2]) + 77 == space["unique_bytes"]


def test_hard_links_count_once_and_a_reused_inode_number_is_another_inode(tmp_path):
    (tmp_path / "trees").mkdir()
    chain = Chain(tmp_path / "trees")
    chain.first({b"a": b"x" * 9000})
    chain.next(lambda t: os.link(t / "a", t / "b"))  # s1: a second name
    chain.next(lambda t: os.unlink(t / "a"))  # s2: the inode lives on as b
    kept = tmp_path / "kept"
    os.link(chain.trees[2] / "b", kept)  # the same inode, to give a later snapshot "a reused number"
    chain.next(lambda t: os.unlink(t / "b"))  # s3: gone
    chain.next(lambda t: os.link(kept, t / "c"))  # s4: an inode with the number of one that died
    index = index_of(chain, tmp_path / "index.sqlite")
    blocks = os.lstat(kept).st_blocks * 512
    rows = index.db.execute("SELECT ino, born, died FROM inodes ORDER BY born").fetchall()
    assert rows == [(os.lstat(kept).st_ino, 1, 4), (os.lstat(kept).st_ino, 5, None)]
    assert index.inode_bytes() == 2 * blocks  # two inodes as far as any snapshot can tell
    holders = index.holders()
    assert index.freed([h for h in holders if h.name in ("s0", "s1", "s2")]) == blocks


def test_a_record_that_disagrees_with_the_index_changes_nothing(tmp_path):
    (tmp_path / "trees").mkdir()
    chain = Chain(tmp_path / "trees")
    chain.first({b"a": b"1"})
    chain.next(lambda t: Chain.write(t, b"b", b"2"))
    index = Index.create(tmp_path / "index.sqlite")
    index.append("s0", 0, chain.records(0), chain.trees[0], [])
    lying = [Change("-", "f", 1, 0, 1, "0" * 64, b"not-there")]
    with pytest.raises(RecordRefused):
        index.append("s1", 1, lying, chain.trees[1], [])
    wrong_inode = [c._replace(ino=c.ino + 1) for c in chain.records(1)]
    with pytest.raises(RecordRefused):
        index.append("s1", 1, wrong_inode, chain.trees[1], [])
    assert [m.name for m in index.members()] == ["s0"]
    index.append("s1", 1, chain.records(1), chain.trees[1], [])
    assert [m.name for m in index.members()] == ["s0", "s1"]


def test_a_snapshot_named_before_the_newest_is_indexed_when_its_record_says_it_followed_it(tmp_path):
    """A clock that stepped back names a snapshot before the newest; its change
    record (made against the newest) places it. One without such a record,
    put there some other way, makes the index rebuild."""
    from bkd.pipeline.versions import service
    from bkd.pipeline.versions.index import IndexDamaged
    from bkd.tree.layout import HostDir

    host_dir = HostDir(tmp_path / "web1")
    host_dir.hourly.mkdir(parents=True)
    host_dir.meta.mkdir()
    chain = Chain(host_dir.hourly)
    chain.first({b"a": b"1"})
    chain.next(lambda t: Chain.write(t, b"a", b"2"))
    chain.next(lambda t: Chain.write(t, b"a", b"3"))
    names = ["2026-01-01_000000", "2026-06-01_000000", "2026-03-01_000000"]  # the third made last
    for number, (tree, name) in enumerate(zip(chain.trees, names)):
        tree.rename(host_dir.hourly / name)
        manifest.write_lines(host_dir.manifest_file(name), chain.lines[number])
    index = Index.create(tmp_path / "index.sqlite")
    moved = [host_dir.hourly / n for n in names]
    for number in (0, 1):
        previous = moved[number - 1] if number else None
        records = between(moved[number], chain.lines[number], previous,
                                  chain.lines[number - 1] if number else None)
        index.append(names[number], number, records, moved[number], [])
    with pytest.raises(IndexDamaged):  # no record: it could have come from anywhere
        service.sync(index, host_dir)
    record = between(moved[2], chain.lines[2], moved[1], chain.lines[1])
    host_dir.changes_file(names[2]).write_bytes(changes.encode(names[1], record))
    assert service.sync(index, host_dir) == 1
    assert [m.name for m in index.members()] == names  # in the order they were made
    [v3, v2, v1] = index.find(compile_pattern("/a"), None, 10)[0]
    assert (v3["first"], v2["first"], v1["first"]) == (names[2], names[1], names[0])


async def test_an_idle_daemon_keeps_a_few_indexes_open_and_reopens_the_others_when_asked(tmp_path):
    """Each open index is a SQLite connection with its page cache: with many
    hosts only the OPEN_AT_MOST most recently used stay open; a closed one
    is reopened (the same file, nothing rebuilt) when it is next asked."""
    from bkd.pipeline.versions import service
    from bkd.tree.layout import HostDir

    hosts = [f"web{n}" for n in range(service.OPEN_AT_MOST + 3)]
    chains = {}
    for name in hosts:
        host_dir = HostDir(tmp_path / "backup" / name)
        host_dir.hourly.mkdir(parents=True)
        host_dir.meta.mkdir()
        chain = chains[name] = Chain(host_dir.hourly)
        chain.first({b"etc/" + name.encode(): name.encode()})
        chain.trees[0].rename(host_dir.hourly / "2026-01-01_000000")
        manifest.write_lines(host_dir.manifest_file("2026-01-01_000000"), chain.lines[0])
    (tmp_path / "state").mkdir()
    versions = service.Versions(tmp_path / "state", lambda: tmp_path / "backup", lambda: hosts)
    try:
        for name in hosts:
            await versions.changed(HostDir(tmp_path / "backup" / name))
        open_now = [name for name, host in versions.hosts.items() if host.index is not None]
        assert open_now == hosts[-service.OPEN_AT_MOST:]  # the least recently used were closed
        inodes = {name: os.stat(versions._path(name)).st_ino for name in hosts}
        found, _ = await versions.find(HostDir(tmp_path / "backup" / "web0"), None, "/etc/web0", None, 10)
        assert [v["path"] for v in found] == ["/etc/web0"]
        assert versions.hosts["web0"].index is not None and versions.hosts["web0"].rebuilding is None
        assert sum(host.index is not None for host in versions.hosts.values()) == service.OPEN_AT_MOST
        assert {name: os.stat(versions._path(name)).st_ino for name in hosts} == inodes  # reopened, not rebuilt
    finally:
        versions.close()


async def test_indexes_a_boot_left_open_are_rebuilt_and_a_clean_stop_leaves_them_trusted(tmp_path, monkeypatch):
    """Indexes are written without fsync: while one is open, versions/.open
    names the boot; a clean stop flushes and removes it. A marker of another
    boot (the system went down under open indexes) discards them (rebuilt);
    one of this boot (the daemon itself died) keeps them."""
    from bkd.pipeline.versions import service
    from bkd.tree.layout import HostDir

    boot = tmp_path / "boot_id"
    monkeypatch.setattr(service, "BOOT_ID", boot)
    host_dir = HostDir(tmp_path / "backup" / "web1")
    host_dir.hourly.mkdir(parents=True)
    host_dir.meta.mkdir()
    (tmp_path / "state").mkdir()

    def daemon() -> service.Versions:
        return service.Versions(tmp_path / "state", lambda: tmp_path / "backup", lambda: ["web1"])

    boot.write_text("boot-1\n")
    first = daemon()
    await first.changed(host_dir)
    index_file, marker = first._path("web1"), first.marker
    assert marker.read_text() == "boot-1\n" and index_file.exists()
    first.close()
    assert not marker.exists()  # a clean stop

    second = daemon()  # then killed: the marker stays
    await second.changed(host_dir)
    second.hosts["web1"].index.db.execute("INSERT INTO info (key, value) VALUES ('seen', 'boot-1')")

    def seen(versions: service.Versions) -> bool:
        return versions.hosts["web1"].index.db.execute("SELECT 1 FROM info WHERE key = 'seen'").fetchone() is not None

    third = daemon()  # the same boot: an application crash leaves the index whole
    await third.changed(host_dir)
    assert seen(third)

    boot.write_text("boot-2\n")  # the system went down with the marker there
    fourth = daemon()
    await fourth.changed(host_dir)
    assert marker.read_text() == "boot-2\n"
    assert index_file.exists() and not seen(fourth)  # discarded, and made again (a host with one copy at most)
    for versions in (second, third, fourth):
        versions.close()


async def test_a_rebuild_that_cannot_write_its_marker_fails_alone_not_the_loop(tmp_path, monkeypatch):
    """A full disk under state_dir: the rebuild fails (logged, tried again when
    next asked for); the supervised loop that runs it goes on."""
    import errno

    from bkd.pipeline.versions import service
    from bkd.tree.layout import HostDir

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(service, "write_atomic", full)
    host_dir = HostDir(tmp_path / "backup" / "web1")
    host_dir.hourly.mkdir(parents=True)
    (tmp_path / "state").mkdir()
    versions = service.Versions(tmp_path / "state", lambda: tmp_path / "backup", lambda: ["web1"])
    versions._host("web1").wanted = True
    await versions._rebuild(host_dir)  # no exception
    host = versions.hosts["web1"]
    assert host.rebuilding is None and not host.wanted and host.index is None
    assert not versions._path("web1").exists()
    versions.close()
