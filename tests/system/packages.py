"""Packages of earlier commits, for the upgrade test: each built from a clone
of this repository checked out at that commit, with that commit's own
scripts/build-deb, and cached by the commit's hash in BKD_TEST_CACHE (a
build takes about 20 s and needs PyPI). A package that cannot be built fails
the test that needs it: the upgrade is never skipped."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

from conftest import RUN_ID
from nspawn import CACHE, sh

ROOT = Path(__file__).parents[2]


def deb_problem(directory: Path) -> str | None:
    """Why a cached package directory cannot be used, or None when it can."""
    if not directory.exists():
        return "missing"
    if not directory.is_dir():
        return "not a directory"
    debs = sorted(directory.glob("bkd_*.deb"))
    if len(debs) != 1:
        return f"holds {len(debs)} packages, not one"
    # The data archive comes last: a package cut short fails here.
    contents = sh("dpkg-deb", "--contents", str(debs[0]), check=False)
    if contents.returncode != 0:
        return f"rejected by dpkg-deb: {contents.stderr.strip()[-300:]}"
    if "./usr/lib/bkd/launcher" not in contents.stdout:
        return "not a bkd package"
    return None


def build_deb(commit: str, directory: Path) -> None:
    """Build the package of `commit` into `directory`, which appears only once complete."""
    partial = directory.with_name(f".partial-{RUN_ID}-{directory.name}")
    with tempfile.TemporaryDirectory(prefix="bkd-old-") as scratch:
        source = Path(scratch, "source")
        sh("git", "clone", "--quiet", "--shared", "--no-checkout", str(ROOT), str(source))
        checkout = sh("git", "-C", str(source), "checkout", "--quiet", "--detach", commit, check=False)
        if checkout.returncode != 0:
            raise AssertionError(f"cannot check out {commit} to build its package ({checkout.stderr.strip()}): "
                                 "the upgrade test needs the repository's history (a full clone, not a shallow one)")
        try:
            build = sh(str(source / "scripts" / "build-deb"), str(partial), check=False, timeout=1200)
            if build.returncode != 0:
                raise AssertionError(f"the package of {commit} could not be built: {build.stdout}{build.stderr}")
            partial.rename(directory)
        finally:
            shutil.rmtree(partial, ignore_errors=True)


def cached_deb(commit: str, cache: Path = CACHE) -> Path:
    """The .deb of `commit`, built when the cache has none or a broken one
    (which is removed, with a warning that says why)."""
    directory = cache / "debs" / commit
    directory.parent.mkdir(parents=True, exist_ok=True)
    problem = deb_problem(directory)
    if problem is not None:
        if problem != "missing":
            warnings.warn(f"rebuilding the cached package of {commit} in {directory}: {problem}", stacklevel=2)
            sh("rm", "-rf", "--one-file-system", str(directory))
        build_deb(commit, directory)
        if problem := deb_problem(directory):
            raise AssertionError(f"the build of {commit} left an unusable package in {directory}: {problem}")
    (deb,) = directory.glob("bkd_*.deb")
    return deb
