"""/usr/bin/bkd and /usr/bin/bkctl are links to debian/launcher, which runs
the command from the package's tree built for the running Python."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_a_python_the_package_has_no_build_for_is_named_in_one_line(tmp_path):
    tree = tmp_path / "usr/lib/bkd"
    (tree / "site-packages").mkdir(parents=True)
    (tree / "python3.0").mkdir()
    (tree / "launcher").write_bytes((ROOT / "debian" / "launcher").read_bytes())
    (tree / "launcher").chmod(0o755)
    (tmp_path / "bkd").symlink_to(tree / "launcher")
    result = subprocess.run([str(tmp_path / "bkd"), "--version"], capture_output=True, text=True)
    python = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('python%d.%d' % sys.version_info[:2])"],
                            capture_output=True, text=True).stdout.strip()
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"bkd: this bkd package carries builds for python3.0, not for /usr/bin/python3 "
                             f"({python}); install a bkd package built for this release\n")
