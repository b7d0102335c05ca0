"""rsync exclude patterns that bkd builds from paths (SPEC §7: a `[`, `*`,
`?` or `\\` in a name means itself), and the default excludes that name
paths on the host, anchored where rsync needs them for a given source."""

from __future__ import annotations

import posixpath
import re

_WILDCARDS = re.compile(r"[*?\[]")
_SPECIAL = re.compile(r"([*?\[\\])")


def anchored(path: str, rest: str = "") -> str:
    """An rsync pattern matching exactly path (relative to the transfer's
    root; a leading '/' is added) followed by the pattern rest ('/*': what is
    in it). rsync reads a backslash as an escape only in a pattern that has a
    wildcard; then every special character of path is escaped, else path
    stays as it is, a backslash in it meaning itself."""
    pattern = "/" + path.lstrip("/")
    if _WILDCARDS.search(pattern + rest):
        pattern = _SPECIAL.sub(r"\\\1", pattern)
    return pattern + rest


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def on_host(pattern: str, source_path: str) -> str | None:
    """A default exclude written as a path on the host (`/var/tmp/*`: its
    leading components without special characters name a directory, the rest
    matches inside it) as rsync must get it for a source at source_path, whose
    contents are the transfer's root: `/tmp/*` for a source `/var/`. None
    when the source does not hold that directory (`/srv/data/`), or is it or
    lies inside it (`/var/tmp/build/`: what the admin asked for is backed
    up whole)."""
    parts = _components(pattern)
    literal = next((i for i, part in enumerate(parts) if _SPECIAL.search(part)), len(parts))
    directory, rest = parts[:literal], parts[literal:]
    source = _components(posixpath.normpath(source_path))
    if len(source) >= len(directory) or directory[:len(source)] != source:
        return None
    return "".join("/" + part for part in directory[len(source):] + rest) + ("/" if pattern.endswith("/") else "")
