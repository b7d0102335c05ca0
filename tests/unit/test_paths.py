"""Paths in the config: `[user@]host:/path` (one parser), the patterns bkd
builds from paths, and the default excludes that name paths on the host."""

from pathlib import Path

import pydantic
import pytest

from bkd.config.models import DEFAULT_EXCLUDES, Config, Host, default_excludes
from bkd.config.patterns import anchored, on_host
from bkd.config.remote import Remote
from bkd.infra.errors import InvalidArgument
from bkd.restore import transfer
from bkd.pipeline import rsync
from bkd.pipeline.selfguard import effective_excludes, inside_source

# ------------------------------------------------------------ [user@]host:/path

PARSED = [
    # text, user, host, path, ssh's destination, rsync's argument for /x
    ("web1:/home/", None, "web1", "/home/", "web1", "web1:/x"),
    ("root@10.0.0.5:/var/lib/", "root", "10.0.0.5", "/var/lib/", "root@10.0.0.5", "root@10.0.0.5:/x"),
    ("backup@db.example.org:/srv", "backup", "db.example.org", "/srv", "backup@db.example.org",
     "backup@db.example.org:/x"),
    ("user@[fe80::1]:/srv", "user", "fe80::1", "/srv", "user@fe80::1", "user@[fe80::1]:/x"),
    ("[::1]:/srv", None, "::1", "/srv", "::1", "[::1]:/x"),
    ("[2001:db8::7]:/", None, "2001:db8::7", "/", "2001:db8::7", "[2001:db8::7]:/x"),
    ("u@[fe80::1%eth0]:/srv", "u", "fe80::1%eth0", "/srv", "u@fe80::1%eth0", "u@[fe80::1%eth0]:/x"),
    ("[::ffff:10.0.0.1]:/a", None, "::ffff:10.0.0.1", "/a", "::ffff:10.0.0.1", "[::ffff:10.0.0.1]:/x"),
    ("web1:/a:b c/[x]", None, "web1", "/a:b c/[x]", "web1", "web1:/x"),  # the path is everything after
    ("ad@corp@web1:/srv", "ad@corp", "web1", "/srv", "ad@corp@web1", "ad@corp@web1:/x"),  # as rsync and ssh split
]


@pytest.mark.parametrize("text,user,host,path,destination,at", PARSED, ids=[p[0] for p in PARSED])
def test_remote_parse(text, user, host, path, destination, at):
    remote = Remote.parse(text)
    assert (remote.user, remote.host, remote.path) == (user, host, path)
    assert remote.destination == destination and remote.at("/x") == at
    assert str(remote) == text and Remote.parse(str(remote)) == remote


REFUSED = [
    ("web1:home/", "must be absolute"),
    ("web1:~/data", "must be absolute"),
    ("web1:", "must be absolute"),
    ("fe80::1:/srv", "IPv6 address in brackets"),
    ("user@fe80::1:/srv", "IPv6 address in brackets"),
    ("[1.2.3.4]:/srv", "is not an IPv6 address"),
    ("[fe80::zz]:/srv", "is not an IPv6 address"),
    ("[::1]x:/srv", "use [user@]host:/path"),
    ("[::1:/srv", "use [user@]host:/path"),
    ("web1::module/path", "rsync daemon"),
    ("rsync://web1/srv", "rsync daemon URLs"),
    (":/srv", "the host is empty"),
    ("@web1:/srv", "the user is empty"),
    ("-oProxyCommand=sh:/srv", "starts with '-'"),
    ("-lroot@web1:/srv", "starts with '-'"),
    ("web 1:/srv", "contains spaces"),
    ("no-colon", "use [user@]host:/path"),
]


@pytest.mark.parametrize("text,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_remote_parse_refuses_with_a_message_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        Remote.parse(text)


@pytest.mark.parametrize("source", ["/srv/data", "/", "web1:/home/", "user@[fe80::1]:/srv", "u@[fe80::1%eth0]:/"])
def test_config_accepts_these_sources(source):
    assert Host(name="h", source=source).source == source


@pytest.mark.parametrize("source,message", [
    ("relative/path", "use an absolute local path or [user@]host:/path"),
    ("dir/x:/y", "use an absolute local path"),  # a '/' before the ':' makes it a local path for rsync
    ("web1:home/", "must be absolute"),
    ("fe80::1:/srv", "IPv6 address in brackets"),
    ("web1:/a\nb", "control characters"),
])
def test_config_refuses_these_sources(source, message):
    with pytest.raises(pydantic.ValidationError, match=message.replace("[", r"\[")):
        Host(name="h", source=source)


def _settings(source: str, **rsync):
    config = Config.model_validate({"backup_root": "/r", "rsync": rsync, "host": [{"name": "h", "source": source}]})
    return config, config.hosts["h"]


def test_ipv6_source_reaches_ssh_master_and_rsync_as_the_same_host():
    # Issue 17 item 10: the ssh master was opened to "user@[fe80" (split on the first ':').
    config, settings = _settings("user@[fe80::1]:/srv/")
    assert rsync.ssh_master_command(config, settings, "/tmp/m")[-2:] == ["--", "user@fe80::1"]
    assert rsync.source_of(settings) == "user@[fe80::1]:/srv/"
    assert rsync.snapshot_command(config, settings, Path("/d"), [])[-2:] == ["user@[fe80::1]:/srv/", "/d/"]
    assert settings.host.remote == Remote("user", "fe80::1", "/srv/") and settings.host.path == "/srv/"


@pytest.mark.parametrize("source,expected", [("/srv/data", "/srv/data/"), ("/srv/data///", "/srv/data/"),
                                             ("/", "/"), ("web1:/", "web1:/"), ("[::1]:/a/", "[::1]:/a/")])
def test_source_of_has_one_trailing_slash(source, expected):
    assert rsync.source_of(_settings(source)[1]) == expected


def test_restore_destination_is_parsed_by_the_same_parser():
    assert transfer.check_destination("/srv/x") is None
    assert transfer.check_destination("root@[::1]:/srv/x") == Remote("root", "::1", "/srv/x")
    assert transfer.check_destination("web1:/srv/x").destination == "web1"
    for bad in ("web1:srv/x", "fe80::1:/srv", "relative"):
        with pytest.raises(InvalidArgument, match="invalid params: dest: .* is not an absolute local path, nor"):
            transfer.check_destination(bad)


# ------------------------------------------------------------ patterns from paths

ANCHORED = [
    ("bk[1]", "", "/bk\\[1]"),
    ("/srv/bk*", "", "/srv/bk\\*"),
    ("st?", "", "/st\\?"),
    ("a\\b", "", "/a\\b"),  # no wildcard anywhere: rsync takes a backslash as itself
    ("a\\b[1]", "", "/a\\\\b\\[1]"),  # a wildcard: then a backslash is an escape, so it is escaped too
    ("a\\b", "/*", "/a\\\\b/*"),  # the wildcard is in what follows the path
    ("plain/dir", "/*", "/plain/dir/*"),
    ("x]y", "", "/x]y"),
    ("- x", "", "/- x"),  # anchored: never read as rsync's "- " rule prefix
]


@pytest.mark.parametrize("path,rest,pattern", ANCHORED)
def test_anchored_pattern_escapes_what_rsync_would_read_as_wildcards(path, rest, pattern):
    # Issue 17 item 3: bkd's own directories went to rsync unescaped.
    assert anchored(path, rest) == pattern


def test_bkds_own_directories_are_excluded_as_exact_patterns():
    own = [Path("/srv/bk[1]"), Path("/srv/st?")]
    paths = inside_source("/srv/", own)
    assert paths == ["/bk[1]", "/st?"]  # what hosts.list shows as self_excluded
    _, settings = _settings("/srv/", exclude_defaults=False, exclude=["*.iso"])
    assert effective_excludes(settings, paths) == ["*.iso", "/bk\\[1]", "/st\\?"]


# ------------------------------------------------------------ host-absolute defaults

HOST_PATHS = [p for p in DEFAULT_EXCLUDES if p.startswith("/")]

ON_HOST = [
    # source path on its host, what the host-absolute defaults become for it
    ("/", HOST_PATHS),
    ("/var/", ["/tmp/*", "/cache/*", "/log/journal/*", "/lib/docker/*", "/lib/libvirt/images/*"]),
    ("/var", ["/tmp/*", "/cache/*", "/log/journal/*", "/lib/docker/*", "/lib/libvirt/images/*"]),
    ("/var/lib/", ["/docker/*", "/libvirt/images/*"]),
    ("/var/log", ["/journal/*"]),
    ("/srv/data/", []),  # its media/ and tmp/ are the user's own
    ("/home/", []),
    ("/var/tmp/", []),  # the directory itself: what the admin asked for
    ("/var/tmp/build/", []),  # inside one: backed up whole
    ("/tmp/x", []),
    ("/proc", []),
    ("/variable/", []),  # a prefix of the name is not the directory
    ("//var/./", ["/tmp/*", "/cache/*", "/log/journal/*", "/lib/docker/*", "/lib/libvirt/images/*"]),
    ("/srv/../var/", ["/tmp/*", "/cache/*", "/log/journal/*", "/lib/docker/*", "/lib/libvirt/images/*"]),
]


@pytest.mark.parametrize("source,expected", ON_HOST, ids=[s for s, _ in ON_HOST])
def test_host_absolute_defaults_are_anchored_for_the_source(source, expected):
    # Issue 17 item 9: '/media/*' emptied a source /srv/data/'s media/; a source /var/ kept tmp/.
    assert [p for p in (on_host(p, source) for p in HOST_PATHS) if p] == expected


def test_on_host_keeps_the_rest_of_the_pattern():
    assert on_host("/lost+found", "/") == "/lost+found"
    assert on_host("/a/b/c[1]/*", "/a") == "/b/c[1]/*"  # the directory ends before the first wildcard
    assert on_host("/a/b/c[1]/*", "/a/b") is None  # the source is that directory
    assert on_host("/a/b\\[x]/*", "/a") is None  # an escape is no plain directory name either
    assert on_host("/a/dir/", "/") == "/a/dir/"  # a directory-only pattern stays one


def test_default_excludes_keep_the_unanchored_ones_for_every_source():
    unanchored = [p for p in DEFAULT_EXCLUDES if not p.startswith("/")]
    for source in ("/", "/srv/data/", "/var/tmp/build/"):
        assert [p for p in default_excludes(source) if not p.startswith("/")] == unanchored


@pytest.mark.parametrize("source,path", [("/srv/data/", "/srv/data/"), ("web1:/var/", "/var/"),
                                         ("u@[::1]:/var/lib", "/var/lib")])
def test_a_hosts_effective_excludes_translate_the_defaults_against_its_source_path(source, path):
    _, settings = _settings(source, exclude=["/media/*"])
    # The user's own patterns stay as written: relative to the transfer's root.
    assert settings.excludes == [*default_excludes(path), "/media/*"]
