"""The manifest's line format round-trips any file name."""

from bkd.pipeline import manifest


def test_names_with_newlines_backslashes_spaces_and_invalid_utf8_round_trip(tmp_path):
    checksums = {b"plain": ("0" * 64, 1), b"new\nline": ("1" * 64, 2), b"back\\slash\\n": ("2" * 64, 3),
                 b"bad-\xff sp ace": ("3" * 64, 4), b"d/deep/\n/x": ("4" * 64, 0)}
    path = tmp_path / "x.manifest"
    manifest.write(path, checksums)
    assert manifest.read(path) == checksums
    assert path.read_bytes().startswith(manifest.HEADER)
    manifest.write(path, {})
    assert manifest.read(path) == {}
    assert manifest.read(tmp_path / "missing") is None
