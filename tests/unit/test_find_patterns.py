"""`find` patterns (SPEC §5) as the version index applies them: a table of
patterns and paths, and properties over any bytes a name can hold."""

import os
import sqlite3

import pytest
from hypothesis import given, strategies as st

from bkd.infra.errors import InvalidArgument
from bkd.pipeline.versions.pattern import compile_pattern, exactly

CASES = [
    # pattern, path (relative), matches
    ("*.conf", b"a.conf", True),
    ("*.conf", b"etc/ssh/sshd.conf", True),  # no '/': the last name anywhere
    ("*.conf", b"etc/a.conf/x", False),
    ("*.conf", b".conf", True),  # dot files too
    ("**/*.conf", b"a.conf", True),  # ** is also no names at all
    ("**/*.conf", b"x/y/z/a.conf", True),
    ("/**/*.conf", b"x/a.confx", False),
    ("etc/*.conf", b"etc/a.conf", True),  # a pattern with '/' is anchored at the root
    ("etc/*.conf", b"x/etc/a.conf", False),
    ("/etc/*.conf", b"etc/sub/a.conf", False),  # * stays within a name
    ("/etc/**", b"etc", True),
    ("/etc/**", b"etc/a/b/c", True),
    ("/etc/**", b"etcetera", False),
    ("/a/**/b", b"a/b", True),
    ("/a/**/b", b"a/x/y/b", True),
    ("/a/**/b", b"a/xb", False),
    ("/h?me", b"home", True),
    ("/h?me", b"h/me", False),  # ? is no '/'
    ("/h?me", "/höme".encode()[1:], True),  # ? is one character, however many bytes it takes
    ("/h?me", b"h\xffme", True),  # ... or one byte that is not UTF-8
    ("/[abc]x", b"bx", True),
    ("/[!abc]x", b"bx", False),
    ("/[^abc]x", b"dx", True),
    ("/[a-c]x", b"cx", True),
    ("/[]]x", b"]x", True),
    ("/[x", b"[x", True),  # an open class is a literal '['
    (r"/a\*b", b"a*b", True),
    (r"/a\*b", b"axb", False),
    (r"/back\\slash", b"back\\slash", True),
    ("/new\nline", b"new\nline", True),
    ("bad-\udcff*", b"dir/bad-\xff.txt", True),  # a byte that is not UTF-8, as a surrogate escape
    ("bad-\udcfe*", b"dir/bad-\xff.txt", False),
    ("/", b"", False),
]


@pytest.mark.parametrize("pattern,path,matches", CASES)
def test_patterns_match_as_spec_section_5_says(pattern, path, matches):
    assert compile_pattern(pattern).matches(path) is matches


@pytest.mark.parametrize("pattern,prefix", [("/etc/ssh/*.conf", b"etc/ssh"), ("/etc/**", b"etc"),
                                            ("/a/**/b", b"a"), ("*.conf", b""), ("/exact/path", b"exact/path"),
                                            (r"/a\*b/*", b"a*b")])
def test_every_match_starts_with_the_prefix_the_index_looks_up(pattern, prefix):
    assert compile_pattern(pattern).prefix == prefix


names = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b and b not in
                                                  (b".", b".."))


@given(st.lists(names, min_size=1, max_size=4))
def test_a_path_written_with_its_specials_escaped_matches_itself_and_nothing_else(parts):
    path = b"/".join(parts)
    escaped = b"".join(b"\\" + bytes([c]) if c in b"*?[\\" else bytes([c]) for c in path)
    pattern = compile_pattern("/" + os.fsdecode(escaped))
    assert pattern.matches(path)
    assert not pattern.matches(path + b"x") and not pattern.matches(b"x/" + path)
    assert path.startswith(pattern.prefix)
    assert exactly(os.fsdecode(b"/" + path)).matches(path)
    assert exactly(os.fsdecode(b"/" + path)).exact == path


@given(st.lists(names, min_size=1, max_size=4), st.sampled_from(["*", "**", "?*", "[!/]*"]))
def test_any_match_starts_with_the_prefix(parts, wildcard):
    path = b"/".join(parts)
    literal = b"".join(b"\\" + bytes([c]) if c in b"*?[\\" else bytes([c]) for c in parts[0])
    pattern = compile_pattern("/" + os.fsdecode(literal) + "/" + wildcard)
    if pattern.matches(path):
        assert path.startswith(pattern.prefix)


def test_an_exact_path_refuses_dot_dot():
    with pytest.raises(InvalidArgument):
        exactly("/etc/../shadow")


TOKENS = ["a", "b", ".", "é", "\udcff", "*", "**", "?", "[ab]", "[!a]", "\\*", "\\[", "[", "]", "/"]


@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=8),
       st.lists(st.sampled_from([b"a", b"b", b".", "é".encode(), b"\xff", b"*", b"[", b"]", b"/", b"ab"]),
                min_size=1, max_size=10))
def test_what_narrows_the_lookup_lets_every_match_through(tokens, pieces):
    """The literal prefix and SQLite's GLOB are supersets of the expression:
    whatever the pattern matches, they let through (else find would miss it)."""
    pattern = compile_pattern("".join(tokens))
    path = b"/".join(p for p in b"".join(pieces).split(b"/") if p)
    if not path or not pattern.matches(path):
        return
    assert path.startswith(pattern.prefix)
    if pattern.glob is not None:
        db = sqlite3.connect(":memory:")
        assert db.execute("SELECT CAST(? AS TEXT) GLOB ?", (path, pattern.glob)).fetchone() == (1,), \
            (pattern.glob, path)


@pytest.mark.parametrize("pattern,path", [(p, path) for p, path, matches in CASES if matches])
def test_every_match_of_the_table_passes_the_glob_and_the_prefix(pattern, path):
    compiled = compile_pattern(pattern)
    assert path.startswith(compiled.prefix)
    if compiled.glob is not None:
        assert sqlite3.connect(":memory:").execute("SELECT CAST(? AS TEXT) GLOB ?",
                                                  (path, compiled.glob)).fetchone() == (1,)
