"""The three attacks the anomaly tests and bench/anomaly.py inject into a
source tree: one definition, so the study and the tests attack alike.

`tree` has `root`, `rng` (random.Random), `files()` (its regular files) and
`write(relative, data)` (which sets the mtime rsync's quick check sees)."""

import os

ATTACKS = ("encrypt", "rename", "delete")


def attack(tree, how: str) -> None:
    """encrypt: 60 % of the files overwritten in place with random bytes, the
    same names; rename: every file renamed to NAME.locked and a
    README-DECRYPT.txt in every directory; delete: 70 % of the files deleted."""
    files = tree.files()
    if how == "encrypt":
        for path in tree.rng.sample(files, int(len(files) * 0.6)):
            tree.write(str(path.relative_to(tree.root)), os.urandom(path.stat().st_size))
    elif how == "rename":
        for path in files:
            path.rename(path.with_name(path.name + ".locked"))
        for directory in sorted({p.parent for p in files}):
            tree.write(str(directory.relative_to(tree.root) / "README-DECRYPT.txt"), b"your files are encrypted\n")
    elif how == "delete":
        for path in tree.rng.sample(files, int(len(files) * 0.7)):
            path.unlink()
    else:
        raise ValueError(f"no attack {how!r}: {', '.join(ATTACKS)}")
