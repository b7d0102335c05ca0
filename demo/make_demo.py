"""Write the demo: a generated source tree and a config that backs it up locally.

    python demo/make_demo.py DIR

DIR/source   a few hundred files in nested directories (made once, kept)
DIR/bkd.toml backup_root, state_dir and socket all under DIR
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import tomli_w

FILES = 300


def make_source(root: Path) -> None:
    if root.is_dir():
        return
    rng = random.Random(42)
    for index in range(FILES):
        directory = root / f"project-{index % 7}" / f"part-{index % 5}"
        directory.mkdir(parents=True, exist_ok=True)
        if index % 10 == 0:
            (directory / f"blob-{index}.bin").write_bytes(rng.randbytes(rng.randint(1024, 65536)))
        else:
            lines = (f"line {n} of note {index}: {rng.random()}\n" for n in range(rng.randint(1, 80)))
            (directory / f"note-{index}.txt").write_text("".join(lines))
    (root / "README.txt").write_text("Demo data for bkd. Change anything here and run again.\n")


def main(target: str) -> None:
    base = Path(target).absolute()
    make_source(base / "source")
    config = {
        "backup_root": str(base / "backup"),
        "state_dir": str(base / "state"),
        "socket": str(base / "bkd.sock"),
        "archive": {"enabled": False},
        "monthly": {"enabled": False},
        "host": [{"name": "demo", "source": str(base / "source")}],
    }
    (base / "bkd.toml").write_text(tomli_w.dumps(config))
    print(f"demo source {base / 'source'}, config {base / 'bkd.toml'}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo/run")
