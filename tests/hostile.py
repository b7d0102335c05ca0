"""A compromised source host, for tests: a fake `ssh` first on the daemon's
PATH. It runs the real rsync server on this machine (the host's path is a
local directory) and adds what a hostile host can print on the stderr that
reaches bkd: terminal escapes (OSC 52 clipboard write, window title, clear
screen, C1 CSI), NUL and DEL, bytes that are not UTF-8, ssh's own words
("Permission denied (publickey)", "Host key verification failed."), a
marker that must never reach a role below admin, and once a line of
BIG_LINE bytes without a newline. A host whose name is in the file
`failing` prints all that and exits 255 without running anything."""

from __future__ import annotations

import os
import sys
from pathlib import Path

MARKER = "HOSTILE-STDERR-7f3a"  # command output: admins only
BIG_LINE = 100 * 1024 * 1024
STDERR = (b"\x1b]52;c;ZXZpbA==\x07"  # OSC 52: write the terminal's clipboard
          b"\x1b]0;pwned-title\x07"  # the window title
          b"\x1b[2J\x1b[H"  # clear the screen
          b"\xc2\x9b31m"  # C1 CSI (U+009B)
          b"\x9b"  # the same byte raw: not UTF-8
          b"\x00\x7f " + MARKER.encode() + b"\n"
          b"bkd@victim: Permission denied (publickey).\n"
          b"Host key verification failed.\n")
# Names on the host that are terminal escapes (SPEC: any bytes but / and NUL).
NAMES = [b"\x1b]52;c;ZXZpbA==\x07clip", b"\x1b[2Jclear", b"c1-\xc2\x9b-csi", b"bad-\xff-utf8", b"new\nline",
         b"del\x7f", b"plain.txt"]

SSH = '''#!{python}
import os, sys
from pathlib import Path
here = Path(__file__).parent
args, with_value = sys.argv[1:], set("BbcDEeFIiJLlmOopQRSWw")
while args and args[0].startswith("-") and args[0] != "--":
    flag = args.pop(0)
    if len(flag) == 2 and flag[1] in with_value:
        args.pop(0)
if args and args[0] == "--":
    args.pop(0)
host, command = args[0], " ".join(args[1:])
err = sys.stderr.buffer
err.write({stderr!r})
big = here / "big-line"
if big.exists():
    size = int(big.read_text())
    big.unlink()  # once
    chunk = b"A" * (1 << 20)
    for _ in range(size // len(chunk)):
        err.write(chunk)
    err.write(b"\\n")
err.flush()
if host in (here / "failing").read_text().split():
    sys.exit(255)
if not command:  # a master connection (-N): hold it until stopped
    os.execvp("sleep", ["sleep", "3600"])
os.execvp("sh", ["sh", "-c", command])
'''


class HostileSsh:
    def __init__(self, directory: Path):
        self.bin = directory
        directory.mkdir(parents=True, exist_ok=True)
        script = directory / "ssh"
        script.write_text(SSH.format(python=sys.executable, stderr=STDERR))
        script.chmod(0o755)
        self.fail()

    def env(self, base_path: str) -> dict[str, str]:
        return {"PATH": f"{self.bin}:{base_path}"}

    def fail(self, *hosts: str) -> None:
        """These hosts print and exit 255 (the others run the transfer)."""
        (self.bin / "failing").write_text(" ".join(hosts) + "\n")

    def big_line_next(self, size: int = BIG_LINE) -> None:
        """The next ssh started prints a line of size bytes, without a newline until its end."""
        (self.bin / "big-line").write_text(str(size))

    def big_line_printed(self) -> bool:
        return not (self.bin / "big-line").exists()


def make_source(root: Path) -> Path:
    """A source whose file names are terminal escapes and bytes that are not UTF-8."""
    os.makedirs(root)
    for name in NAMES:
        with open(os.path.join(os.fsencode(root), name), "wb") as f:
            f.write(b"content of " + name)
    return root
