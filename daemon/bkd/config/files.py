"""The files a config's keys name (models.NamedFile), checked for `bkd
check-config` as the user it runs as, each problem one line: what bkd or
ssh would meet at a run, said before it. check-config prints them as
warnings: the daemon starts without them and backs up what it can (the
unit's ExecStartPre runs check-config). Changes nothing, reads no content:
a file to be read is opened and closed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..ownership import READ_ONLY, reason, who


def check_file(path: str, role: str) -> str | None:
    """What is wrong with the file at path for its role, or None."""
    if role == "written":
        return _written(Path(path))
    if role == "source" and not path.startswith("/"):
        return None  # [user@]host:/path: only a login can tell (bkctl hosts test)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as e:
        return f"cannot use {path}: {reason(e)}"
    if role == "source":
        return None if stat.S_ISDIR(st.st_mode) else f"{path} is not a directory"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC))
    except OSError as e:
        return f"cannot read {path}: {reason(e)}"
    mode = stat.S_IMODE(st.st_mode)
    # ssh's own rule (sshkey_perm_ok): a key of this user that group or others may use is ignored.
    if role == "key" and st.st_uid == os.getuid() and mode & 0o077:
        return f"{path} may be read by group or others (mode {mode:04o}), so ssh ignores it: chmod 600 {path}"
    if role == "secret" and mode & 0o007:
        return f"{path} may be read by any user (mode {mode:04o}): chmod o-rwx {path}"
    return None


def _written(path: Path) -> str | None:
    """A file bkd writes by write-then-rename, which replaces whatever is
    there but a directory, in a directory that must exist and take new files."""
    if path.is_dir() and not path.is_symlink():
        return f"{path} is a directory"
    directory = path.parent
    if not directory.is_dir():
        return f"the directory {directory} does not exist: create it, or choose another path"
    if not os.access(directory, os.W_OK | os.X_OK, effective_ids=True):
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f"cannot write in {directory}: {READ_ONLY}"
        return f"{who()} cannot write in {directory}"
    return None
