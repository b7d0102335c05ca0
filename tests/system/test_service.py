"""The .deb under real systemd: minimal Debian 12 and 13 trees booted with
systemd-nspawn, the package installed with dpkg, the service driven with
systemctl and read with journalctl (TESTING.md's recipe)."""

import email.parser
import gzip
import json
import os
import re
import shutil
import time
import tomllib
from pathlib import Path

import pytest

import clidocs
from conftest import wait_until
from nspawn import LINTIAN, Container, cached_tarball, sh
from packages import cached_deb

ROOT = Path(__file__).parents[2]
# The releases the package must install and run on (docs/packaging.md).
RELEASES = ["bookworm", "trixie"]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# The commit this round of work started from: the upgrade test installs its package first.
UPGRADE_FROM = "c55684211ff31b4945f90ded33d472c463932e3f"

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="systemd-nspawn needs root (CI runs as root)"),
              # The first test of a module builds the package and boots trees (downloaded once).
              pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    sh(str(ROOT / "scripts" / "build-deb"), str(out))
    (path,) = out.glob("bkd_*.deb")
    return path


@pytest.fixture(scope="module", params=RELEASES)
def debian_tree(request, tmp_path_factory) -> Path:
    """A minbase tree of one release, extracted from the cache (about 250 MB: removed after use)."""
    root = tmp_path_factory.mktemp(request.param)
    sh("tar", "--numeric-owner", "-xpf", str(cached_tarball(request.param)), "-C", str(root))
    yield root
    sh("rm", "-rf", "--one-file-system", str(root))


@pytest.fixture(scope="module")
def old_deb() -> Path:
    """The package of UPGRADE_FROM (built once, then cached by its hash; a failure fails, never skips)."""
    return cached_deb(UPGRADE_FROM)


def boot(debian_tree: Path, deb: Path, tmp_path: Path, **binds: Path) -> Container:
    if not shutil.which("systemd-nspawn"):
        pytest.fail("systemd-nspawn is missing: run the README's test command (make test)")
    return Container(debian_tree, deb.parent, tmp_path / "nspawn.log", binds)


@pytest.fixture
def container(debian_tree, deb, tmp_path):
    box = boot(debian_tree, deb, tmp_path)
    yield box
    box.poweroff()


@pytest.fixture
def upgrade_container(debian_tree, deb, old_deb, tmp_path):
    """A container that sees the earlier package too, under /mnt/old."""
    box = boot(debian_tree, deb, tmp_path, **{"/mnt/old": old_deb.parent})
    yield box
    box.poweroff()


@pytest.mark.parametrize("release", RELEASES)
def test_lintian_of_each_release_accepts_the_package(deb, release, tmp_path):
    """Neither error nor warning from the lintian of Debian 12 or 13 (13's says
    aliased-location for a file under /lib; each says no-manual-page for a
    command without one)."""
    root = tmp_path / "tree"
    root.mkdir()
    sh("tar", "--numeric-owner", "-xpf", str(cached_tarball(release, include=LINTIAN)), "-C", str(root))
    try:
        result = sh("systemd-nspawn", "--quiet", "-D", str(root), "--register=no", "--keep-unit",
                    "--private-network", f"--bind-ro={deb.parent}:/mnt/debs",
                    "lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", "--color", "never",
                    f"/mnt/debs/{deb.name}", check=False)
    finally:
        sh("rm", "-rf", "--one-file-system", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"^[EW]: ", result.stdout, re.M), result.stdout


def test_the_package_ships_man_pages_completion_and_the_changelogs(deb, tmp_path):
    """What the build generated (man pages, completion, /etc/bkd/bkd.toml.example)
    is what `make man` generates from this tree;
    the Debian changelog, NEWS.Debian and the upstream CHANGELOG.md each keep
    their own name; nothing lies under /lib (aliased on a merged /usr)."""
    sh("dpkg-deb", "-x", str(deb), str(tmp_path / "deb"))
    shipped = tmp_path / "deb"
    generated = clidocs.write(tmp_path / "generated")
    for page, section in (("bkd.8", 8), ("bkctl.1", 1), ("bkd.toml.5", 5)):
        with gzip.open(shipped / f"usr/share/man/man{section}/{page}.gz", "rt") as f:
            assert f.read() == (generated / page).read_text(), page
    for program in ("bkd", "bkctl"):
        assert (shipped / "usr/share/bash-completion/completions" / program).read_text() == (
            generated / "completions" / program).read_text()
    # `bkd config sample` of the bkd packaged (its loading: test_the_package_as_installed).
    example = (shipped / "etc/bkd/bkd.toml.example").read_text()
    assert example == (generated / "bkd.toml.example").read_text()
    assert "\n#[[host]]\n" in example and "\n#snapshot_every = " in example
    doc = shipped / "usr/share/doc/bkd"
    assert (doc / "CHANGELOG.md").read_bytes() == (ROOT / "CHANGELOG.md").read_bytes()
    with gzip.open(doc / "changelog.gz", "rt") as f:
        (tmp_path / "changelog").write_text(f.read())
    assert sh("dpkg-parsechangelog", "-l", str(tmp_path / "changelog"), "-S", "Version").stdout.strip() == VERSION
    with gzip.open(doc / "NEWS.Debian.gz", "rt") as f:
        assert f.read() == (ROOT / "debian/NEWS").read_text()
    assert sh("dpkg-deb", "-f", str(deb), "Version").stdout.strip() == VERSION
    assert "Homepage" not in sh("dpkg-deb", "-f", str(deb)).stdout  # none until the project has a real one
    paths = [line.split()[-1] for line in sh("dpkg-deb", "-c", str(deb)).stdout.splitlines()]
    assert [p for p in paths if re.match(r"\./(lib|lib64|bin|sbin)/", p)] == []
    assert "./usr/lib/systemd/system/bkd.service" in paths
    assert [p for p in paths if "__pycache__" in p] == []  # the generator imported bkd from the tree


def test_the_package_ships_the_prometheus_rules_the_grafana_dashboard_and_the_watching_docs(deb, tmp_path):
    sh("dpkg-deb", "-x", str(deb), str(tmp_path))
    for shipped, source in (("usr/share/bkd/prometheus/bkd.rules.yml", "contrib/prometheus/bkd.rules.yml"),
                            ("usr/share/bkd/grafana/bkd-dashboard.json", "contrib/grafana/bkd-dashboard.json"),
                            ("usr/share/doc/bkd/watching.md", "docs/watching.md"),
                            ("usr/share/doc/bkd/images/report.png", "docs/images/report.png")):
        assert (tmp_path / shipped).read_bytes() == (ROOT / source).read_bytes(), shipped


def test_the_package_depends_on_a_python3_it_carries_a_build_for(deb):
    trees = sorted(set(re.findall(r"\./usr/lib/bkd/(python3\.\d+)/", sh("dpkg-deb", "-c", str(deb)).stdout)))
    assert trees == ["python3.11", "python3.13"]  # Debian 12 and 13
    relations = [r for r in sh("dpkg-deb", "-f", str(deb), "Depends").stdout.split(",") if "python3" in r]

    def installable(version: str) -> bool:
        return all(any(sh("dpkg", "--compare-versions", version, op, bound, check=False).returncode == 0
                       for op, bound in re.findall(r"python3 \((\S+) (\S+)\)", relation)) for relation in relations)

    versions = ["3.10.6-1", "3.11.2-1+b1", "3.12.3-0ubuntu2", "3.13.5-1", "3.14.0-1"]
    assert [v for v in versions if installable(v)] == ["3.11.2-1+b1", "3.13.5-1"]


# SPDX identifiers under the names debian/copyright gives them (DEP-5 calls MIT "Expat"),
# and the SPDX identifiers of licence classifiers (for wheels without License-Expression).
DEP5_NAMES = {"MIT": "Expat"}
SPDX_NAMES = {dep5: spdx for spdx, dep5 in DEP5_NAMES.items()}
CLASSIFIERS = {"MIT License": "MIT"}


def copyright_paragraphs(text: str) -> list[dict]:
    """The paragraphs of a DEP-5 file, each as {field: value} (continuation lines joined)."""
    paragraphs = []
    for block in text.strip().split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith(" ") and key:
                fields[key] += "\n" + line.strip()
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        paragraphs.append(fields)
    return paragraphs


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_licence(metadata) -> str:
    """A distribution's licence in DEP-5 terms, from License-Expression or else its classifier."""
    expression = metadata["License-Expression"]
    if not expression:
        (classifier,) = [c.rsplit(" :: ", 1)[1] for c in metadata.get_all("Classifier", [])
                         if c.startswith("License :: ")]
        expression = CLASSIFIERS.get(classifier, classifier)
    words = re.findall(r"[()]|[^\s()]+", expression)
    return " ".join({"OR": "or", "AND": "and"}.get(w, DEP5_NAMES.get(w, w)) for w in words)


def satisfied(expression: str, granted: set[str]) -> bool:
    """Whether an SPDX licence expression is met by the licences granted."""
    tokens = re.findall(r"[()]|[^\s()]+", expression)

    def either(i):
        value, i = both(i)
        while i < len(tokens) and tokens[i] == "OR":
            other, i = both(i + 1)
            value = value or other
        return value, i

    def both(i):
        value, i = single(i)
        while i < len(tokens) and tokens[i] == "AND":
            other, i = single(i + 1)
            value = value and other
        return value, i

    def single(i):
        if tokens[i] == "(":
            value, i = either(i + 1)
            return value, i + 1
        if i + 1 < len(tokens) and tokens[i + 1] == "WITH":
            return f"{tokens[i]} WITH {tokens[i + 2]}" in granted, i + 3
        return tokens[i] in granted, i + 1

    return either(0)[0]


def test_debian_copyright_names_every_bundled_distribution_and_its_licence(deb, tmp_path):
    sh("dpkg-deb", "-x", str(deb), str(tmp_path))
    paragraphs = copyright_paragraphs((tmp_path / "usr/share/doc/bkd/copyright").read_text())
    listed = {}
    for paragraph in paragraphs:
        if match := re.fullmatch(r"(\S+) (\S+) from PyPI", paragraph.get("Comment", "")):
            listed[canonical(match[1])] = (match[2], paragraph["License"])
    bundled = {}
    for dist in (tmp_path / "usr/lib/bkd").glob("*/*.dist-info"):
        metadata = email.parser.Parser().parsestr((dist / "METADATA").read_text())
        if canonical(metadata["Name"]) != "bkd":  # Files: *
            bundled[canonical(metadata["Name"])] = (metadata["Version"], declared_licence(metadata))
    pinned = [line for line in (ROOT / "debian/requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert len(bundled) == len(pinned)  # each pinned requirement, and nothing else
    assert bundled == listed, "debian/copyright must list each bundled distribution: NAME VERSION from PyPI"

    # Statically linked code named by an SBOM in a wheel: its paragraph grants what each part needs.
    sboms = list((tmp_path / "usr/lib/bkd").glob("*/*.dist-info/sboms/*.json"))
    assert sboms
    for sbom in sboms:
        (paragraph,) = [p for p in paragraphs if f"sboms/{sbom.name}" in p.get("Comment", "")]
        granted = {SPDX_NAMES.get(name, name) for name in paragraph["License"].split(" and ")}
        for component in json.loads(sbom.read_text())["components"]:
            if component.get("scope") != "excluded":  # build-time only
                (licence,) = [entry.get("expression") or entry["license"]["id"] for entry in component["licenses"]]
                assert satisfied(licence, granted), f"{component['name']} is under {licence}: {sbom.name}"


def jobs_of(c: Container) -> list[dict]:
    return [{k: job[k] for k in ("job_id", "kind", "status", "started", "finished")}
            for job in json.loads(c.run("bkctl", "--json", "jobs").stdout)["jobs"]]


def alerts_of(c: Container) -> list[dict]:
    return [{k: alert[k] for k in ("id", "kind", "host", "state", "count", "first_seen")}
            for alert in json.loads(c.run("bkctl", "--json", "alerts", "--all").stdout)["alerts"]]


def upgraded(c: Container, deb: Path) -> str:
    """dpkg's output for an upgrade to deb, checked for warnings: the one
    allowed is Debian 13's dpkg failing to remove the earlier package's
    /lib/systemd/system (once: this package has nothing under /lib)."""
    result = c.run("dpkg", "-i", "--force-confdef", "--force-confold", f"/mnt/debs/{deb.name}")
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if "warning" in line.lower()
                and not re.fullmatch(r"dpkg: warning: unable to delete old directory '/lib(/systemd(/system)?)?': "
                                     r"Directory not empty", line)]
    assert warnings == [], output
    return output


def test_the_service_under_real_systemd(upgrade_container, deb, old_deb):
    """An earlier package installed and in use, upgraded to this one (its
    snapshots, history, alerts and config kept, the service restarted on the
    new version), then the service driven through reload, runs, the journal,
    the watchdog, a stop during a run, and a purge."""
    c = upgrade_container
    c.run("dpkg", "-i", f"/mnt/old/{old_deb.name}")
    wait_until(c.is_active, 30, what="the earlier bkd to be active (READY=1)")

    # In use: an edited config, a host added through conf.d and a reload, snapshots, a failed run's alert.
    c.run("sh", "-c", "mkdir -p /srv/data/sub && for i in $(seq 1 50); do echo $i > /srv/data/sub/f$i; done")
    c.write("/etc/bkd/conf.d/10-local.toml", '[[host]]\nname = "local"\nsource = "/srv/data"\n')
    c.write("/etc/bkd/conf.d/30-gone.toml",
            '[[host]]\nname = "gone"\nsource = "/srv/missing"\n[host.schedule]\nenabled = false\n')
    c.run("sed", "-i", "s/^max_parallel_hosts = 4/max_parallel_hosts = 2/", "/etc/bkd/bkd.toml")
    c.run("systemctl", "reload", "bkd")
    assert sorted(json.loads(c.run("bkctl", "--json", "status").stdout)["hosts"]) == ["gone", "local"]

    # The new host is overdue, so the scheduler runs it shortly after the reload: let that run finish first.
    def first_run_done():
        local = json.loads(c.run("bkctl", "--json", "status").stdout)["hosts"]["local"]
        return local["state"] == "idle" and local["last_snapshot"]
    wait_until(first_run_done, 60, 0.5, what="the scheduled first run of the new host")
    c.run("bkctl", "run", "local", "--wait")
    assert c.run("bkctl", "run", "gone", "--wait", check=False).returncode == 1
    # The first snapshot made an archive and a monthly copy due at once: let them finish too.
    wait_until(lambda: all(job["finished"] for job in jobs_of(c)), 120, 0.5, what="every job to finish")
    before = {"snapshots": c.run("ls", "/srv/bkd/local/hourly").stdout,
              "listed": [s["name"] for s in json.loads(c.run("bkctl", "--json", "snapshots", "local").stdout)[
                  "snapshots"]],
              "jobs": jobs_of(c), "alerts": alerts_of(c),
              "config": c.run("sh", "-c", "cat /etc/bkd/bkd.toml /etc/bkd/conf.d/*").stdout}
    assert len(before["listed"]) == 2 and [j["status"] for j in before["jobs"]].count("failed") == 1
    assert [(a["kind"], a["host"], a["state"]) for a in before["alerts"]] == [("run_failed", "gone", "open")]
    pid = c.main_pid()

    # The upgrade: the service restarts on the new version and everything is still there.
    upgraded(c, deb)
    wait_until(lambda: c.is_active() and c.main_pid() not in ("0", pid), 30,
               what="bkd to be restarted on the new version")
    version = c.run("bkctl", "--version").stdout
    assert f"bkctl {VERSION} " in version and f"bkd {VERSION} " in version, version
    assert c.show("FragmentPath") in ("/usr/lib/systemd/system/bkd.service", "/lib/systemd/system/bkd.service")
    assert c.run("dpkg", "-S", "/usr/lib/systemd/system/bkd.service").stdout.startswith("bkd: ")
    assert c.run("ls", "/srv/bkd/local/hourly").stdout == before["snapshots"]
    assert [s["name"] for s in json.loads(c.run("bkctl", "--json", "snapshots", "local").stdout)[
        "snapshots"]] == before["listed"]
    assert jobs_of(c) == before["jobs"]
    assert alerts_of(c) == before["alerts"]
    assert c.run("sh", "-c", "cat /etc/bkd/bkd.toml /etc/bkd/conf.d/*").stdout == before["config"]
    assert c.run("bkctl", "audit", "--verify", check=False).returncode == 0
    run = c.run("bkctl", "run", "local", "--wait", check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(json.loads(c.run("bkctl", "--json", "snapshots", "local").stdout)["snapshots"]) == 3
    c.run("rm", "/etc/bkd/conf.d/30-gone.toml")
    c.run("systemctl", "reload", "bkd")

    assert c.run("systemctl", "show", "-p", "StatusText", "--value", "bkd").stdout.startswith("1 hosts, 0 running")
    assert {"bkd", "bkd-operator", "bkd-admin"} <= {
        line.split(":")[0] for line in c.run("getent", "group").stdout.splitlines()}
    assert c.run("stat", "-c", "%a %G", "/run/bkd/bkd.sock").stdout.split() == ["660", "bkd"]
    assert c.run("cat", "/srv/bkd/local/latest/sub/f7").stdout == "7\n"

    # The journal keeps severity and host/job fields.
    done = [e for e in c.journal() if e.get("BKD_EVENT") == "run.done"]
    assert done and done[-1]["BKD_HOST"] == "local" and done[-1]["PRIORITY"] == "6" and done[-1]["BKD_JOB_ID"]
    assert [e for e in c.journal("BKD_HOST=local") if e.get("BKD_EVENT") == "snapshot.complete"]
    c.write("/etc/bkd/conf.d/90-typo.toml", "colour = 'blue'\n")
    c.run("systemctl", "reload", "bkd", check=False)
    errors = c.journal("-p", "err")
    assert any(e.get("BKD_EVENT") == "config.reload_failed" and e["PRIORITY"] == "3" for e in errors)
    assert c.run("systemctl", "is-active", "bkd").stdout.strip() == "active"  # still on the old config
    c.run("rm", "/etc/bkd/conf.d/90-typo.toml")

    # A frozen event loop stops the watchdog pings: systemd restarts the service.
    c.write("/etc/systemd/system/bkd.service.d/watchdog.conf", "[Service]\nWatchdogSec=3s\n")
    c.run("systemctl", "daemon-reload")
    c.run("systemctl", "restart", "bkd")
    frozen = c.main_pid()
    c.run("sh", "-c", f"kill -STOP {frozen}")
    wait_until(lambda: c.main_pid() not in ("0", frozen)
               and c.run("systemctl", "is-active", "bkd", check=False).stdout.strip() == "active",
               60, 0.5, what="the watchdog to restart bkd")
    c.run("rm", "-r", "/etc/systemd/system/bkd.service.d")
    c.run("systemctl", "daemon-reload")

    # systemctl stop during a run: ends it within the timeout, no rsync left.
    c.run("sh", "-c", "head -c 8M /dev/urandom > /srv/data/big.bin")
    c.write("/etc/bkd/conf.d/20-slow.toml", '[rsync]\nbwlimit = "200"\n')
    c.run("systemctl", "restart", "bkd")
    c.run("bkctl", "run")
    wait_until(c.rsync_running, 20, 0.2, what="rsync to start")
    started = time.monotonic()
    c.run("systemctl", "stop", "bkd", timeout=60)
    assert time.monotonic() - started < 30
    assert not c.rsync_running()
    assert c.run("systemctl", "is-active", "bkd", check=False).stdout.strip() == "inactive"
    c.run("rm", "/etc/bkd/conf.d/20-slow.toml")
    c.run("systemctl", "start", "bkd")
    jobs = json.loads(c.run("bkctl", "--json", "jobs").stdout)["jobs"]
    assert jobs[0]["status"] == "interrupted"

    # Purge: state and config go, the backup root stays, and dpkg has nothing to warn about
    # (Debian 13's did, about /lib/systemd/system, while the unit lay there).
    purge = c.run("dpkg", "--purge", "bkd")
    assert "warning" not in (purge.stdout + purge.stderr).lower(), purge.stdout + purge.stderr
    assert c.run("test", "-e", "/etc/bkd", check=False).returncode != 0
    assert c.run("test", "-e", "/var/lib/bkd", check=False).returncode != 0
    assert c.run("cat", "/srv/bkd/local/latest/sub/f7").stdout == "7\n"


TEXTFILE = "/var/lib/prometheus/node-exporter/bkd.prom"


def install_with_a_textfile(c: Container, deb: Path) -> None:
    """The package installed where node-exporter's textfile directory exists,
    configured beforehand with one local host and [metrics] textfile."""
    c.run("mkdir", "-p", os.path.dirname(TEXTFILE), "/srv/data")
    c.write("/srv/data/f1", "1\n")
    c.write("/etc/bkd/conf.d/10-local.toml",
            f'[metrics]\ntextfile = "{TEXTFILE}"\n\n[[host]]\nname = "local"\nsource = "/srv/data"\n')
    c.run("dpkg", "-i", "--force-confdef", "--force-confold", f"/mnt/debs/{deb.name}")


def wait_textfile(c: Container) -> None:
    """The host is overdue, so it runs at start; after the run the textfile is written (or an error logged)."""
    written = lambda: c.run("test", "-f", TEXTFILE, check=False).returncode == 0  # noqa: E731
    wait_until(lambda: written() or c.journal("-p", "err"), 60, 0.5, what=f"{TEXTFILE} or an error")
    assert written(), [e.get("MESSAGE") for e in c.journal("-p", "err")]


def test_the_package_as_installed(container, deb):
    """The unit's documentation exists, the metrics directory is writable,
    descriptors suffice for many clients, bkd runs on the release's own
    python3 with the compiled tree built for it, and the sample config
    loads."""
    c = container
    install_with_a_textfile(c, deb)
    wait_until(c.is_active, 30, what="bkd to be active (READY=1)")
    pid = c.main_pid()

    documentation = [url.strip('"') for url in c.show("Documentation").split()]  # "man:bkd(8)" is quoted
    assert "man:bkd(8)" in documentation
    for url in documentation:
        if page := re.fullmatch(r"man:([\w.-]+)\((\d)\)", url):
            path = f"/usr/share/man/man{page[2]}/{page[1]}.{page[2]}.gz"
        else:
            assert url.startswith("file:///"), f"only file: and man: links can be checked here: {url}"
            path = url.removeprefix("file://")
        assert c.run("test", "-f", path, check=False).returncode == 0, f"{url} is not installed"

    # The service gets 65,536 descriptors, or as many as the container's PID 1 may hand out
    # (this machine caps it at 20,000), never systemd's default soft limit of 1,024.
    assert c.show("LimitNOFILE") == "65536"
    expected = min(65536, c.open_files_limit("1")[1])
    assert c.open_files_limit(pid) == (expected, expected) and expected > 1024

    python = c.run("python3", "-c", "import sys; print('python%d.%d' % sys.version_info[:2])").stdout.strip()
    assert c.run("readlink", f"/proc/{pid}/exe").stdout.strip() == f"/usr/bin/{python}"
    assert f"/usr/lib/bkd/{python}/pydantic_core/" in c.run("cat", f"/proc/{pid}/maps").stdout
    for package in ("site-packages/bkd", f"{python}/pydantic_core"):  # compiled by postinst: /usr is read-only
        assert c.run("test", "-d", f"/usr/lib/bkd/{package}/__pycache__", check=False).returncode == 0, package
    assert c.run("bkctl", "--json", "status").returncode == 0
    # The shipped sample loads as it is, on the machine and as the user the daemon runs as.
    check = c.run("bkd", "--config", "/etc/bkd/bkd.toml.example", "check-config", check=False)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    assert json.loads(c.run("bkctl", "--json", "report").stdout)["hosts"][0]["name"] == "local"
    assert c.run("bkctl", "check", check=False).stdout.startswith("BKD ")

    wait_textfile(c)
    # Written at start, then again within 5 s of the run's end.
    wait_until(lambda: 'bkd_last_success_timestamp_seconds{host="local"}' in c.run("cat", TEXTFILE).stdout, 15,
               what="the textfile after the run")


@pytest.mark.parametrize("debian_tree", ["bookworm"], indirect=True)
def test_node_exporter_may_read_the_metrics_textfile(container, deb):
    install_with_a_textfile(container, deb)
    wait_textfile(container)
    # node-exporter runs as its own user (prometheus).
    mode = container.run("stat", "-c", "%a", TEXTFILE).stdout.strip()
    assert mode == "644"  # whatever the unit's UMask=0077


def test_the_unit_file_verifies_and_is_hardened(tmp_path):
    unit = tmp_path / "bkd.service"
    # verify checks that ExecStart= exists: point it at this checkout's bkd.
    bkd = shutil.which("bkd") or str(Path(os.sys.executable).parent / "bkd")
    unit.write_text((ROOT / "systemd" / "bkd.service").read_text().replace("/usr/bin/bkd", bkd))
    # ... and runs man for each man: page of Documentation=: those this tree generates.
    generated = clidocs.write(tmp_path / "generated")
    for page in generated.glob("*.[0-9]"):
        (tmp_path / f"man/man{page.suffix[1:]}").mkdir(parents=True, exist_ok=True)
        page.rename(tmp_path / f"man/man{page.suffix[1:]}" / page.name)
    verify = sh("systemd-analyze", "verify", str(unit), check=False,
                env={**os.environ, "MANPATH": str(tmp_path / "man")})
    assert (verify.returncode, verify.stderr) == (0, "")
    security = sh("systemd-analyze", "security", "--offline=yes", str(ROOT / "systemd" / "bkd.service"))
    exposure = float(security.stdout.rsplit("Overall exposure level for bkd.service:", 1)[1].split()[0])
    assert exposure <= 3.0, security.stdout


def test_callers_and_supervision_under_the_units_sandbox(container, deb):
    """Roles work for non-root callers, local restores land where the caller
    sees them (not in the service's private /tmp or read-only /srv), and a
    loop that keeps failing gets the service restarted by the watchdog."""
    c = container
    c.run("sh", "-c", "mkdir -p /srv/data/sub && for i in $(seq 1 20); do echo $i > /srv/data/sub/f$i; done")
    # Only manual runs: a scheduled first run would make the operator's run below "already running".
    c.write("/etc/bkd/conf.d/10-local.toml",
            '[[host]]\nname = "local"\nsource = "/srv/data"\n[host.schedule]\nenabled = false\n')
    c.run("dpkg", "-i", "--force-confdef", "--force-confold", f"/mnt/debs/{deb.name}")
    wait_until(c.is_active, 30, what="bkd to be active (READY=1)")
    c.run("useradd", "-m", "-G", "bkd,bkd-operator", "oper")
    c.run("useradd", "-m", "-G", "bkd,bkd-admin", "ann")

    def as_user(user, *args, check=True):
        return c.run("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "bkctl", *args, check=check)

    run = as_user("oper", "run", "local", "--wait", check=False)  # groups seen despite ProtectProc=invisible
    assert run.returncode == 0, run.stdout + run.stderr
    denied = as_user("oper", "prune", check=False)
    assert denied.returncode == 1 and "needs the admin role" in denied.stderr

    # Root's restores land in the caller's /tmp and in /srv, outside the unit's sandbox.
    for dest in ("/tmp/x", "/srv/restore"):
        restored = c.run("bkctl", "restore", "local", "latest", "/sub", "--to", dest, check=False)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert c.run("cat", f"{dest}/sub/f7").stdout == "7\n"
    # A non-root admin writes only where they may, as themself.
    refused = as_user("ann", "restore", "local", "latest", "/sub", "--to", "/srv/not-yours", check=False)
    assert refused.returncode == 1 and c.run("test", "-e", "/srv/not-yours/sub", check=False).returncode != 0
    assert as_user("ann", "restore", "local", "latest", "/sub", "--to", "/home/ann/r").returncode == 0
    assert c.run("stat", "-c", "%U", "/home/ann/r/sub/f7").stdout.strip() == "ann"

    # A loop that keeps failing: the daemon stops pinging and systemd restarts it.
    c.write("/etc/systemd/system/bkd.service.d/faults.conf",
            "[Service]\nWatchdogSec=25s\nEnvironment=BKD_TEST_FAIL_LOOPS=scheduler=100\n")
    c.run("systemctl", "daemon-reload")
    c.run("systemctl", "restart", "bkd")
    first = c.main_pid()
    wait_until(lambda: c.main_pid() not in ("0", first), 120, 1, what="the watchdog to restart bkd")
    restarts = [e for e in c.journal() if "Watchdog timeout" in e.get("MESSAGE", "")]
    assert restarts, "systemd should say the watchdog fired"
    assert [e for e in c.journal() if e.get("BKD_EVENT") == "watchdog.withheld"]
