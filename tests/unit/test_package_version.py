"""One version everywhere: pyproject.toml, what bkd reports, the newest
debian/changelog entry; and debian/NEWS entries name released versions."""

import subprocess
import tomllib
from pathlib import Path

import bkd

ROOT = Path(__file__).parents[2]


def changelog_versions(path: Path) -> list[str]:
    """Every entry's version, newest first, as dpkg reads the file (a syntax error fails)."""
    out = subprocess.run(["dpkg-parsechangelog", "-l", str(path), "--all", "-S", "Version"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_the_package_bkd_and_the_debian_changelog_have_one_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert bkd.__version__ == version  # the installed metadata (make venv reinstalls when pyproject.toml changes)
    assert changelog_versions(ROOT / "debian" / "changelog")[0] == version


def test_each_news_entry_is_a_release_of_the_changelog():
    assert set(changelog_versions(ROOT / "debian" / "NEWS")) <= set(changelog_versions(ROOT / "debian" / "changelog"))
