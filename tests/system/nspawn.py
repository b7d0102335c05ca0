"""Debian trees booted under systemd-nspawn (TESTING.md's recipe): a minimal
tree per release, made once with mmdebstrap and cached as a tarball, and a
Container that boots it with changes in a tmpfs overlay."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import warnings
from pathlib import Path

from conftest import RUN_ID, wait_until

CACHE = Path(os.environ.get("BKD_TEST_CACHE", "/var/cache/bkd-tests"))
# What a tree has besides minbase: systemd to boot, and exactly the package's Depends.
INCLUDE = "systemd,systemd-sysv,dbus,python3,rsync,openssh-client,zstd"
# A tree to run a release's own lintian in (its checks change between releases).
LINTIAN = "lintian"
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# Members a usable tree must have (a tarball cut short loses its last ones).
REQUIRED = ("./usr/lib/os-release", "./usr/bin/python3", "./usr/lib/systemd/systemd")
MEMBERS = {INCLUDE: REQUIRED, LINTIAN: ("./usr/lib/os-release", "./usr/bin/lintian")}


def sh(*argv, check=True, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}: {result.stdout}\n{result.stderr}")
    return result


def tarball_problem(tarball: Path, release: str, required: tuple[str, ...] = REQUIRED) -> str | None:
    """Why a cached tree cannot be used, or None when it can."""
    if not tarball.exists():
        return "missing"
    if not tarball.is_file():
        return "not a regular file (an old run let mmdebstrap write a directory there)"
    listing = sh("tar", "-tf", str(tarball), check=False)
    if listing.returncode != 0:
        return f"rejected by tar -tf: {listing.stderr.strip()[-300:]}"
    members = set(listing.stdout.splitlines())
    if missing := [member for member in required if member not in members]:
        return f"incomplete: no {', '.join(missing)}"
    os_release = sh("tar", "-xOf", str(tarball), "./usr/lib/os-release").stdout
    if f"VERSION_CODENAME={release}\n" not in os_release:
        return f"not a {release} tree: {os_release.splitlines()[:1]}"
    return None


def sources_for(release: str) -> str:
    """This machine's Debian mirror configuration with its release swapped for
    `release`: mmdebstrap takes the suites from a sources file, not from its
    SUITE argument."""
    codename = next(line.split("=", 1)[1].strip() for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("VERSION_CODENAME="))
    return HOST_SOURCES.read_text().replace(codename, release)


def build_tarball(tarball: Path, release: str, include: str = INCLUDE, variant: str = "minbase") -> None:
    """mmdebstrap into a temporary name that still ends in .tar (the name
    picks the output format: anything else gives a directory), renamed once
    complete, so the cache never holds half a tree."""
    partial = tarball.with_name(f"{tarball.stem}.partial-{RUN_ID}.tar")
    sources = tarball.with_name(f"{tarball.stem}.partial-{RUN_ID}.sources")
    try:
        sources.write_text(sources_for(release))
        sh("mmdebstrap", "--quiet", f"--variant={variant}", f"--include={include}", release, str(partial),
           str(sources), timeout=1200)
        partial.rename(tarball)
    finally:
        partial.unlink(missing_ok=True)
        sources.unlink(missing_ok=True)


def cached_tarball(release: str, cache: Path = CACHE, include: str = INCLUDE) -> Path:
    """The tarball of a minimal `release` tree with `include`, built when the
    cache has none or a broken one (which is removed, with a warning that says why)."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{release}-{include.replace(',', '_')}.tar"
    problem = tarball_problem(tarball, release, MEMBERS[include])
    if problem is None:
        return tarball
    if problem != "missing":
        warnings.warn(f"rebuilding the cached {release} tree {tarball}: {problem}", stacklevel=2)
        sh("rm", "-rf", "--one-file-system", str(tarball))
    build_tarball(tarball, release, include)
    if problem := tarball_problem(tarball, release, MEMBERS[include]):
        raise AssertionError(f"mmdebstrap made an unusable {release} tree {tarball}: {problem}")
    return tarball


class Container:
    """One boot of a tree; changes live in a tmpfs overlay and vanish at poweroff."""

    def __init__(self, root: Path, debs: Path, log: Path, binds: dict[str, Path] | None = None):
        """debs (and each of binds: path in the container -> directory) is seen read-only."""
        self.name = f"bkd-test-{RUN_ID}-{os.urandom(2).hex()}"
        self.log = log
        more = [f"--bind-ro={source}:{target}" for target, source in (binds or {}).items()]
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", str(root), "--register=no", "--keep-unit", "--private-network",
             "--volatile=overlay", f"--bind-ro={debs}:/mnt/debs", *more, f"--machine={self.name}", "-b"],
            stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.pid1: str | None = None
        try:
            wait_until(self._booted, 60, 0.2, what="the container to boot")
        except BaseException as e:
            self._kill()
            if isinstance(e, AssertionError):
                raise AssertionError(f"{e}; systemd-nspawn said: {self.log.read_text()[-2000:]}") from None
            raise

    def _booted(self) -> bool:
        if self.nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited with {self.nspawn.returncode}")
        # Looked up again until booted: nspawn also forks short-lived helpers.
        self.pid1 = self._pid1()
        return bool(self.pid1) and self.run("systemctl", "is-system-running", check=False).stdout.strip() in (
            "running", "degraded")

    def _pid1(self) -> str | None:
        """The child of nspawn that is PID 1 in a PID namespace of its own."""
        for child in sh("pgrep", "-P", str(self.nspawn.pid), check=False).stdout.split():
            try:
                status = Path(f"/proc/{child}/status").read_text()
            except FileNotFoundError:
                continue
            nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
            if len(nspid) > 1 and nspid[-1] == "1":
                return child
        return None

    def _kill(self) -> None:
        """Killing the container's PID 1 ends everything in it; nspawn then exits."""
        if self.pid1:
            try:
                os.kill(int(self.pid1), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.nspawn.kill()
        self.nspawn.wait()

    def run(self, *argv, check=True, timeout=120, **kwargs) -> subprocess.CompletedProcess:
        return sh("nsenter", "-t", self.pid1, "-a", *argv, check=check, timeout=timeout, **kwargs)

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", f"mkdir -p \"$(dirname '{path}')\" && cat > '{path}'", input=text)

    def show(self, prop: str, unit: str = "bkd") -> str:
        """One property of a unit, as `systemctl show` prints it."""
        return self.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    def is_active(self, unit: str = "bkd") -> bool:
        return self.run("systemctl", "is-active", unit, check=False).stdout.strip() == "active"

    def rsync_running(self) -> bool:
        return self.run("sh", "-c", "grep -lx rsync /proc/[0-9]*/comm", check=False).returncode == 0

    def main_pid(self) -> str:
        return self.show("MainPID")

    def open_files_limit(self, pid: str) -> tuple[int, int]:
        """A process's soft and hard RLIMIT_NOFILE."""
        limits = self.run("cat", f"/proc/{pid}/limits").stdout
        soft, hard = re.search(r"^Max open files +(\d+) +(\d+) ", limits, re.M).groups()
        return int(soft), int(hard)

    def journal(self, *args) -> list[dict]:
        out = self.run("journalctl", "-u", "bkd", "-o", "json", "--no-pager", *args, check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def poweroff(self) -> None:
        self.run("systemctl", "poweroff", check=False)
        try:
            self.nspawn.wait(60)
        except subprocess.TimeoutExpired:
            self._kill()
