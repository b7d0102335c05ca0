"""What every role may read about a run that went wrong (SPEC §5): the
category and the exit code, never a file name, a hook's command line or
its output. The full message stays in the run's `detail` (admins only);
the same goes for `hosts test` and the self-backup probe in `hosts`.

Pure functions. They recognise the known kinds of failure in a stage's
message and rebuild the text from what they matched — never by cutting the
message, whose tail may quote anything. A message they do not recognise
becomes "STAGE failed": safe by default, more specific as kinds are added."""

from __future__ import annotations

import os
import re

from bkctl.protocol import SNAPSHOT_NAME

from .rsync import EXIT_CODES, MEANINGS

_RSYNC = re.compile(r"\brsync exited with code (-?\d+)")
_HOOK = re.compile(r"\b(pre|post) hook (exited with code -?\d+|timed out after \d+s)")
_ARCHIVE = re.compile(r"\barchive failed \(exit (-?\d+)\)")
_SNAPSHOT_GONE = re.compile(rf"\bsnapshot (?P<name>{SNAPSHOT_NAME}) is gone")
_HUNG = re.compile(r"\bhung: no I/O for (\d+)s\b")
_RACED = re.compile(r"\bmetadata of (\d+) file\(s\) changed during the snapshot")
_MISMATCH = re.compile(rf"\b(\d+) file\(s\) of snapshot (?P<name>{SNAPSHOT_NAME}) do not match the primary's manifest")
_NO_HOST = re.compile(r"\bthe primary has no host ([A-Za-z0-9._-]+) \(any more\)")
# Failures named by a fixed phrase (the message goes on with an OS error or a tool's words).
_PHRASES = ("cannot checksum the new snapshot", "cannot complete the snapshot",
            "cannot hardlink the previous snapshot", "monthly copy failed", "no complete snapshot yet")


# The meanings bkd itself gives an exit code: rsync's table, with any code (describe_failure says
# "the SSH connection failed" whatever code rsync chose); a meaning not among them is not repeated.
_MEANINGS = sorted(MEANINGS, key=len, reverse=True)


def _rsync(message: str, match: re.Match) -> str:
    code = int(match[1])
    said = next((m for m in _MEANINGS if message.startswith(f" ({m})", match.end())), None)
    return f"rsync exited with code {code} ({said or EXIT_CODES.get(code, 'unknown error')})"


def categories(message: str) -> list[str]:
    """The known failures a message reports, rebuilt from what was matched."""
    found = [_rsync(message, m) for m in _RSYNC.finditer(message)]
    found += [f"{m[1]} hook {m[2]}" for m in _HOOK.finditer(message)]
    found += [f"archive failed (exit {m[1]})" for m in _ARCHIVE.finditer(message)]
    found += [f"snapshot {m['name']} is gone" for m in _SNAPSHOT_GONE.finditer(message)]
    found += [f"hung: no I/O for {m[1]}s" for m in _HUNG.finditer(message)]
    found += [f"metadata of {m[1]} file(s) changed during the snapshot and was applied to inodes shared "
              "with older snapshots" for m in _RACED.finditer(message)]
    found += [f"{m[1]} file(s) of snapshot {m['name']} do not match the primary's manifest"
              for m in _MISMATCH.finditer(message)]
    found += [f"the primary has no host {m[1]} (any more): nothing to pull; the copies here are kept"
              for m in _NO_HOST.finditer(message)]
    found += [phrase for phrase in _PHRASES if phrase in message]
    return list(dict.fromkeys(found))


def _os_reason(error: BaseException | None) -> str | None:
    """An OS error as its reason alone ("permission denied"), without the file name."""
    while error is not None:
        if isinstance(error, OSError) and error.errno:
            return os.strerror(error.errno).lower()
        error = error.__cause__
    return None


def public_error(stage: str, error: BaseException) -> str:
    """One stage's failure as every role may see it."""
    reason = _os_reason(error)
    if isinstance(error, OSError):
        text = f"file system error ({reason})" if reason else "file system error"
    else:
        found = categories(str(error))
        if found and reason:
            found[-1] += f" ({reason})"
        text = "; ".join(found) or "failed"
    # "pre hook …" already names its stage; anything else is prefixed with it.
    return text if text.startswith(stage) else f"{stage}: {text}" if text != "failed" else f"{stage} failed"


DETAIL_LIMIT = 16384  # characters of a run's detail kept: its start and its end


def clip(text: str | None, limit: int = DETAIL_LIMIT) -> str | None:
    """text as a run's detail keeps it: storable (see storable), and only its
    start and end when longer than limit (what a child printed is bounded line
    by line; a message joins several)."""
    if text is None:
        return None
    text = storable(text)
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]} [... {len(text) - 2 * keep} characters not kept ...] {text[-keep:]}"


def storable(text: str) -> str:
    """text that SQLite (UTF-8 only) can store: a byte that is not UTF-8 — a
    host's stderr, a file name, carried as a surrogate as os.fsdecode does — is
    written \\xNN, as the audit log does; any other lone surrogate \\udNNN."""
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def public_message(message: str, fallback: str) -> str:
    """A message that may quote command output (a test's, a probe's) as every
    role may see it: the known failures it reports, else fallback."""
    return "; ".join(categories(message)) or fallback


def public_warning(message: str) -> str:
    """A completed run's warning (vanished files, metadata that changed) as every role may see it."""
    return public_message(message, "completed with warnings")
