"""What a snapshot leaves out, on a real daemon with real rsync: bkd's own
directories exactly (a `[`, `*` or `?` in their names means itself), and
the default excludes that name paths on the host only where the source
holds those paths."""

import os
import shutil
import subprocess

import pytest

from conftest import make_tree

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root (CI runs as root)")


def names_in(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


OWN_NAMES = [
    # backup_root, state_dir (inside the source), and siblings the unescaped pattern matched
    pytest.param("bk[1]", "state", ["bk1/f"], id="bk[1]"),
    pytest.param("bk*", "state", ["bkdata/f"], id="bk*"),  # and the config, bkd.toml
    pytest.param("backup", "st?", ["stx/f"], id="st?"),
]


@pytest.mark.parametrize("backup,state,siblings", OWN_NAMES)
def test_bkds_own_directories_with_wildcard_characters_are_excluded_exactly(backup, state, siblings,
                                                                             daemon_factory, tmp_path):
    # Issue 17 item 3: with backup_root ".../bk[1]" the backup root and the live
    # database were copied into every snapshot (18 → 40 → 82 files); with "bk*"
    # or "st?" the user's own bkd.toml, bkdata/ and stx/ were silently left out.
    daemon = daemon_factory([], name="d")
    source = daemon.workdir  # holds bkd.toml and the daemon's log
    daemon.config.update(backup_root=str(source / backup), state_dir=str(source / state),
                         host=[{"name": "self", "source": str(source)}])
    daemon.write_config()
    make_tree(source / "data", 5)
    for sibling in siblings:
        (source / sibling).parent.mkdir(parents=True, exist_ok=True)
        (source / sibling).write_text(f"the user's own {sibling}\n")
    (source / "q[1]").mkdir()  # restore paths are not patterns either
    (source / "q[1]" / "f").write_text("q[1]\n")
    (source / "q1").mkdir()
    (source / "q1" / "f").write_text("q1\n")
    daemon.start()

    counts = []
    for _ in range(3):
        job = daemon.run_snapshot()
        assert job["status"] == "ok", job
        counts.append(job["hosts"][0]["stats"]["files"])
    snapshot = source / backup / "self" / "latest"
    names = names_in(snapshot)
    assert not {backup, state} & names, sorted(names)
    assert not any(n.startswith((backup + "/", state + "/")) for n in names)
    assert {*siblings, "bkd.toml", "data/dir0/file0.txt", "q[1]/f", "q1/f"} <= names
    for sibling in siblings:
        assert (snapshot / sibling).read_text() == f"the user's own {sibling}\n"
    assert (snapshot / "bkd.toml").read_text() == daemon.config_path.read_text()
    assert len(set(counts)) == 1, counts  # nothing of bkd's own piles up run after run

    (host,) = daemon.bkctl_json("hosts")["hosts"]
    assert host["self_excluded"] == [f"/{backup}", f"/{state}"]  # the directories, as paths
    escaped = [p.replace("[", "\\[").replace("*", "\\*").replace("?", "\\?") for p in host["self_excluded"]]
    assert host["excludes"][-2:] == escaped  # and what rsync got: patterns matching exactly them

    restored = tmp_path / "restored"
    result = daemon.bkctl("restore", "self", "latest", "/q[1]", "--to", str(restored))
    assert result.returncode == 0, result.stdout + result.stderr
    assert names_in(restored) == {"q[1]", "q[1]/f"}


def test_a_source_holding_media_and_tmp_keeps_them(daemon_factory, tmp_path):
    # Issue 17 item 9: '/media/*', '/tmp/*' … are paths on the host, but rsync
    # anchored them at the source's root: a source /srv/data/ holding a photo
    # library in media/ got an empty media/ in every snapshot, status ok.
    source = tmp_path / "srv" / "data"
    for relative in ("media/photos/2024.jpg", "tmp/notes.txt", "proc/report", "var/tmp/kept", "mnt/x/y",
                     "lost+found/z", "project/.cache/junk", "project/mod.pyc", "project/main.py"):
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text(relative + "\n")
    daemon = daemon_factory([{"name": "data", "source": f"{source}/"}]).start()
    job = daemon.run_snapshot()
    assert job["status"] == "ok", job
    names = names_in(daemon.workdir / "backup/data/latest")
    assert {"media/photos/2024.jpg", "tmp/notes.txt", "proc/report", "var/tmp/kept", "mnt/x/y", "lost+found/z",
            "project/main.py"} <= names
    assert not {"project/.cache", "project/mod.pyc"} & names  # the defaults that match anywhere still do

    (host,) = daemon.bkctl_json("hosts")["hosts"]
    assert not [p for p in host["excludes"] if p.startswith("/")], host["excludes"]
    assert {".cache/", "*.pyc", ".git/"} <= set(host["excludes"])


@ROOT_ONLY
def test_a_source_var_leaves_out_var_tmp_and_keeps_the_rest(daemon_factory, tmp_path):
    # Issue 17 item 9: a source /var/ still copied /var/tmp/*, /var/cache/*, …
    # The daemon runs in a mount namespace of its own where a test tree is
    # mounted on /var, so that the source is really /var/.
    fake_var = tmp_path / "var"
    for relative in ("tmp/scratch", "cache/apt/pkg.deb", "log/journal/abc/system.journal", "log/syslog",
                     "lib/docker/overlay2/layer", "lib/app/data.db", "spool/cron/root"):
        (fake_var / relative).parent.mkdir(parents=True, exist_ok=True)
        (fake_var / relative).write_text(relative + "\n")
    daemon = daemon_factory([{"name": "var", "source": "/var/"}])
    unshare = shutil.which("unshare")
    mount = shutil.which("mount")
    daemon.start(wrap=(unshare, "--mount", "--propagation", "private", "--", "sh", "-c",
                       f'{mount} --bind -- "$0" /var && exec "$@"', str(fake_var)))
    assert not os.path.exists("/var/lib/app/data.db")  # the mount is the daemon's alone
    subprocess.run(["findmnt", "--task", str(daemon.proc.pid), "/var"], check=True, capture_output=True)
    job = daemon.run_snapshot()
    assert job["status"] == "ok", job
    snapshot = daemon.workdir / "backup/var/latest"
    assert names_in(snapshot) == {
        "tmp", "cache", "log", "log/journal", "log/syslog", "lib", "lib/docker", "lib/app", "lib/app/data.db",
        "spool", "spool/cron", "spool/cron/root"}  # the excluded directories themselves are kept, empty
    (host,) = daemon.bkctl_json("hosts")["hosts"]
    host_paths = [p for p in host["excludes"] if p.startswith("/")]
    assert host_paths == ["/tmp/*", "/cache/*", "/log/journal/*", "/lib/docker/*", "/lib/libvirt/images/*"]
