"""Paths read back from bkd's records are taken inside the snapshot or refused."""

import pytest

from bkd.tree import relpath


@pytest.mark.parametrize("path", [b"a", b"dir/file.txt", b"..a", b"a..", b"a/...", b".hidden/x", b"a\\/..b"])
def test_names_inside_are_taken(path):
    assert relpath.inside(path)
    assert relpath.check(path, "m line 1") is path


@pytest.mark.parametrize("path", [b"", b"/etc/shadow", b"..", b"../x", b"a/../../etc/shadow", b"a/..",
                                  b"../../../../../../../../etc/shadow"])
def test_absolute_or_dot_dot_is_refused_naming_where(path):
    assert not relpath.inside(path)
    with pytest.raises(ValueError, match="meta/x.manifest line 3: refusing the path"):
        relpath.check(path, "meta/x.manifest line 3")
