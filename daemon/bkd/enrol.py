"""`bkd host add NAME TARGET [--path DIR] [--sudo] [--from ADDR] [--yes]
[--restore-key]`: enrol a source host in one command (SPEC §2).

1. The arguments and the config as it would be with the host are checked.
2. bkd's own SSH key is made if it has none (ed25519, in `ssh/` beside the
   config; see below for why there).
3. The host's keys are fetched (ssh-keyscan), their fingerprints shown and,
   once the admin says yes (or gave --yes), pinned in bkd's known_hosts under
   the host's name (its Host block says `HostKeyAlias NAME`). A key that
   differs from a pinned one is refused loudly, with how to re-pin it after
   checking: never trust on first use without the admin seeing it, never
   accept a change.
4. The lines to put on the host are printed: the authorized_keys line
   (`restrict,from=…,command="rrsync -ro DIR"`; with --sudo a non-root login
   whose forced command is `sudo -n rrsync -ro DIR`, and the sudoers lines,
   which keep SSH_ORIGINAL_COMMAND, without which rrsync cannot work).
5. The readiness checks (readiness.py) run against the config as it would
   be, its ssh config block in a private temporary file.
6. Only then are bkd's ssh config (the `Host NAME` block), the
   `conf.d/00-ssh.toml` drop-in (the [ssh] files that were unset) and
   `conf.d/NAME.toml` written, each atomically, and the daemon reloaded.

Nothing is written before the checks pass, except what the admin needs and
agreed to: the key (the printed line must name it) and the pinned host key
(confirmed). Running it again is safe: the same key, the same pin, the
same files, one Host block. The key lives beside the config, not in
state_dir: it is configuration the admin installs on hosts and backs up with
/etc (state_dir holds what the daemon rebuilds), and the daemon's unit may
only read it (ProtectSystem=strict)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from bkctl.client import Client, RemoteError, Unreachable
from bkctl.fmt import safe

from . import readiness
from .config import ConfigError, load_config, valid_host_name
from .config.load import read_merged, validate
from .config.models import Config
from .config.remote import Target
from .fsutil import write_atomic

SSH_DIR = "ssh"  # beside the config: bkd's key, known_hosts and ssh config when [ssh] names none
SSH_DROP_IN = "00-ssh.toml"  # conf.d/: the [ssh] files host add made, recorded
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
RRSYNC = "/usr/bin/rrsync"  # where Debian's rsync package puts it: sudoers needs the full path
MAX_SCAN_LINES = 64
# What goes unquoted into a forced command and a sudoers line: no quoting, no escaping.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/+@-]*")
_FROM = re.compile(r"[A-Za-z0-9.:/*?!%,_-]+")
_HEADER = "# Written by `bkd host add`; running it again rewrites this file.\n"


class Refused(Exception):
    """host add stops: the message says what and what to do; nothing more is written."""


@dataclass(frozen=True)
class HostKey:
    kind: str
    blob: str  # base64, as in known_hosts

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Request:
    name: str
    target: Target
    path: str
    sudo: bool
    from_: str | None
    yes: bool
    restore_key: bool

    @property
    def user(self) -> str:
        return self.target.user or "root"

    @property
    def source(self) -> str:
        return f"{self.name}:{self.path.rstrip('/')}/"

    @property
    def command(self) -> str:
        """This command again (to re-run after a fix)."""
        target = f"{self.target.user}@{self.target.address}" if self.target.user else self.target.address
        flags = [*(["--path", self.path] if self.path != "/" else []), *(["--sudo"] if self.sudo else []),
                 *(["--from", self.from_] if self.from_ else []), *(["--restore-key"] if self.restore_key else [])]
        return " ".join(["bkd host add", self.name, target, *flags])


# ---- pure parts: arguments, lines to print, files' contents ------------------------------------------------


def request(name: str, target: str, path: str = "/", sudo: bool = False, from_: str | None = None,
            yes: bool = False, restore_key: bool = False) -> Request:
    """The arguments, checked; ValueError says which is wrong and why."""
    if not valid_host_name(name):
        raise ValueError(f"NAME {name!r}: use 1-64 letters, digits, '.', '_' and '-', not starting with '.'")
    if f"{name}.toml" == SSH_DROP_IN:
        raise ValueError(f"NAME {name!r}: conf.d/{SSH_DROP_IN} is bkd's own drop-in; choose another name")
    try:
        parsed = Target.parse(target)
    except ValueError as e:
        raise ValueError(f"TARGET {target!r}: {e}") from None
    if not _PLAIN_PATH.fullmatch(path):
        raise ValueError(f"--path {path!r}: give an absolute path of letters, digits and . _ / + @ - (it goes "
                         "unquoted into the key's forced command and the sudoers line)")
    path = "/" + os.path.normpath(path).strip("/")  # normpath keeps a leading "//"
    if sudo and parsed.user in (None, "root"):
        raise ValueError("--sudo is for a login other than root: give TARGET as user@host")
    if from_ is not None and not _FROM.fullmatch(from_):
        raise ValueError(f"--from {from_!r}: give this server's address (or an ssh pattern list, e.g. "
                         "192.0.2.10,2001:db8::10)")
    return Request(name, parsed, path, sudo, from_, yes, restore_key)


def rrsync_args(path: str) -> list[str]:
    """rrsync read-only in DIR. -absolute lets rsync name files by their path on
    the host (DIR/…) as bkd's source does; without it rrsync reads every path
    as relative to DIR. For DIR = / there is nothing to translate."""
    return ["-ro", *(["-absolute"] if path != "/" else []), path]


def forced_command(req: Request) -> str:
    return " ".join(["sudo", "-n"] * req.sudo + ["rrsync", *rrsync_args(req.path)])


def authorized_line(req: Request, public_key: str, address: str) -> str:
    return f'restrict,from="{address}",command="{forced_command(req)}" {public_key}'


def restore_line(public_key: str, address: str) -> str:
    """The restore key may run commands (a restore looks at DEST first) and write: only from this server."""
    return f'restrict,from="{address}" {public_key}'


def sudoers_lines(req: Request) -> list[str]:
    """sudo resets the environment; rrsync reads the command rsync asked for from SSH_ORIGINAL_COMMAND."""
    return [f'Defaults!{RRSYNC} env_keep += "SSH_ORIGINAL_COMMAND"',
            f"{req.user} ALL=(root) NOPASSWD: {' '.join([RRSYNC, *rrsync_args(req.path)])}"]


def host_block(req: Request) -> list[str]:
    target = req.target
    return [f"Host {req.name}",
            f"    # bkd host add {req.name}: rewritten when it runs again",
            f"    HostName {target.host}",
            *([f"    Port {target.port}"] if target.port else []),
            f"    User {req.user}",
            f"    HostKeyAlias {req.name}",  # the pin is the host's name, whatever its address
            ""]


def _is_header(line: str) -> bool:
    words = line.replace("=", " ", 1).split()
    return bool(words) and words[0].lower() in ("host", "match")


def with_block(text: str, name: str, block: list[str]) -> str:
    """An ssh_config with the `Host NAME` block replaced by block, or block added at its end."""
    out: list[str] = []
    lines = text.splitlines()
    index, placed = 0, False
    while index < len(lines):
        line = lines[index]
        if _is_header(line) and line.replace("=", " ", 1).split()[1:] == [name]:
            index += 1
            while index < len(lines) and not _is_header(lines[index]):
                index += 1
            if not placed:
                out += block
                placed = True
            continue
        out.append(line)
        index += 1
    if not placed:
        if out and out[-1].strip():
            out.append("")
        out += block
    while len(out) > 1 and not out[-1].strip() and not out[-2].strip():
        out.pop()
    return "\n".join(out).rstrip("\n") + "\n"


def parse_keys(lines: list[str]) -> list[HostKey]:
    """Host keys from ssh-keyscan's output (or a known_hosts line's last two
    fields): a known type whose base64 holds a key of that type; anything else
    is left out."""
    keys: list[HostKey] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or line.startswith(("#", "@")) or fields[1] not in KEY_TYPES:
            continue
        kind, blob = fields[1], fields[2]
        try:
            raw = base64.b64decode(blob, validate=True)
            (length,) = struct.unpack(">I", raw[:4])
        except (ValueError, struct.error):
            continue
        if raw[4:4 + length] == kind.encode() and HostKey(kind, blob) not in keys:
            keys.append(HostKey(kind, blob))
    return sorted(keys, key=lambda k: KEY_TYPES.index(k.kind))


def pinned_keys(known_hosts: str, name: str) -> list[HostKey]:
    return parse_keys([line for line in known_hosts.splitlines()
                       if line.split() and name in line.split()[0].split(",")])


def changed(pinned: list[HostKey], scanned: list[HostKey]) -> bool:
    """Whether the host shows another key than the one pinned: of a type pinned, a
    different key, or none of the pinned types at all."""
    shown = {key.kind: key for key in scanned}
    return bool(pinned) and (any(key.kind in shown and shown[key.kind] != key for key in pinned)
                             or not any(key.kind in shown for key in pinned))


def drop_in(data: dict) -> bytes:
    """A drop-in's text: a [[host]] as a table of its own (tomli_w would write a
    short one inline), its override tables as [host.…]."""
    hosts = data.get("host", [])
    text = tomli_w.dumps({key: value for key, value in data.items() if key != "host"})
    for entry in hosts:
        plain = {key: value for key, value in entry.items() if not isinstance(value, dict)}
        tables = {key: value for key, value in entry.items() if isinstance(value, dict)}
        text += ("\n" if text else "") + "[[host]]\n" + tomli_w.dumps(plain)
        text += ("\n" + tomli_w.dumps({"host": tables})) if tables else ""
    return (_HEADER + text).encode()


# ---- the steps that touch files, hosts and the daemon ------------------------------------------------------


@dataclass(frozen=True)
class Files:
    """bkd's SSH files: as [ssh] names them, else in ssh/ beside the config;
    `record` holds the [ssh] keys to write into conf.d/00-ssh.toml."""

    config_file: Path
    identity_file: Path
    known_hosts_file: Path
    restore_identity_file: Path
    record: dict


def ssh_files(config: Config, main: Path, restore_key: bool) -> Files:
    here = main.parent.absolute() / SSH_DIR
    ssh = config.ssh
    chosen = {"config_file": ssh.config_file or str(here / "config"),
              "identity_file": ssh.identity_file or str(here / "id_ed25519"),
              "known_hosts_file": ssh.known_hosts_file or str(here / "known_hosts"),
              "restore_identity_file": ssh.restore_identity_file or str(here / "id_ed25519_restore")}
    record = {key: value for key, value in chosen.items() if not getattr(ssh, key)}
    if not restore_key:
        record.pop("restore_identity_file", None)
    return Files(**{key: Path(value) for key, value in chosen.items()}, record=record)


def _daemon_uid(config: Config) -> int:
    """Who runs the daemon, as far as can be told here: the owner of its state_dir."""
    for directory in (config.state_dir, config.backup_root):
        try:
            return directory.stat().st_uid
        except OSError:
            continue
    return os.geteuid()


def ensure_key(path: Path, comment: str, owner: int) -> tuple[str, bool]:
    """The public half of an ed25519 key at path ("ssh-ed25519 AAAA… comment"),
    made (mode 0600, owned by the daemon's user) if there is none; and whether
    it was made now."""
    public = path.with_name(path.name + ".pub")
    made = False
    if not path.exists():
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".bkd-key-", dir=path.parent))
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(scratch / "k")],
                           check=True, capture_output=True, timeout=60)
            os.chown(scratch / "k", owner, -1)
            os.replace(scratch / "k.pub", public)
            os.replace(scratch / "k", path)  # last: a key without its .pub is made again
        except subprocess.CalledProcessError as e:
            raise Refused(f"cannot make bkd's SSH key {path}: ssh-keygen said "
                          f"{safe(e.stderr.decode(errors='replace').strip())}") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        made = True
    elif not public.exists():
        derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, timeout=60)
        if derived.returncode != 0:
            raise Refused(f"cannot read bkd's SSH key {path} (ssh-keygen -y failed): check it, or move it away "
                          "to have a new one made")
        write_atomic(public, (derived.stdout.strip() + f" {comment}\n").encode(), mode=0o644)
    fields = public.read_text().split()
    if len(fields) < 2:
        raise Refused(f"{public} is not an SSH public key: move it away to have it made again")
    return " ".join(fields[:2] + [comment if len(fields) < 3 else fields[2]]), made


def scan(target: Target) -> list[HostKey]:
    """The host's keys as it shows them now (ssh-keyscan; its output bounded)."""
    argv = ["ssh-keyscan", "-T", "10", "-t", ",".join(("ed25519", "ecdsa", "rsa"))]
    argv += ["-p", str(target.port)] if target.port else []
    try:
        result = subprocess.run([*argv, "--", target.host], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise Refused(f"ssh-keyscan {target.address} did not finish within 60 s: is the host up?") from None
    keys = parse_keys(result.stdout.decode("utf-8", "replace").splitlines()[:MAX_SCAN_LINES])
    if not keys:
        raise Refused(f"cannot fetch the host key of {target.address} (ssh-keyscan found none): check that the "
                      "host is up, that sshd listens there, and the port (TARGET's :PORT)")
    return keys


def local_address(target: Target) -> str:
    """This server's address as the host sees it, when nothing translates it:
    the source address of the route to the host."""
    try:
        family, _, _, _, address = socket.getaddrinfo(target.host, target.port or 22, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return probe.getsockname()[0].partition("%")[0]
    except OSError as e:
        raise Refused(f"cannot tell this server's address as {target.host} sees it ({e.strerror or e}): "
                      "give it with --from ADDR") from None


def _say(text: str = "") -> None:
    print(text, flush=True)


class Enrolment:
    def __init__(self, req: Request, main: Path):
        self.req = req
        self.main = main

    def run(self) -> int:
        req, main = self.req, self.main
        try:
            config = load_config(main)
        except ConfigError as e:
            raise Refused("the config has problems; fix them first:\n" + "\n".join(map(str, e.problems))) from None
        files = ssh_files(config, main, req.restore_key)
        host_file = main.parent / "conf.d" / f"{req.name}.toml"
        drop_ins = self._drop_ins(files, host_file)
        candidate = self._candidate(drop_ins)
        ssh_config = files.config_file.read_text() if files.config_file.exists() else ""
        new_ssh_config = with_block(ssh_config, req.name, host_block(req))
        with tempfile.TemporaryDirectory(prefix="bkd-host-add-") as scratch:
            trial = Path(scratch) / "ssh_config"  # the ssh config as it will be, for ssh -G and the checks
            trial.write_text(new_ssh_config)
            self._check_block(trial)
            server = config.server_name or socket.gethostname()
            owner = _daemon_uid(config)
            public, made = ensure_key(files.identity_file, f"bkd@{server}", owner)
            _say(f"bkd's SSH key: {files.identity_file}{' (made now)' if made else ''}")
            restore_public = None
            if req.restore_key:
                restore_public, made = ensure_key(files.restore_identity_file, f"bkd-restore@{server}", owner)
                _say(f"bkd's restore key: {files.restore_identity_file}{' (made now)' if made else ''}")
            self._pin(files.known_hosts_file)
            address = req.from_ or local_address(req.target)
            self._print_lines(public, restore_public, address)
            checked = candidate.model_copy(update={"ssh": candidate.ssh.model_copy(
                update={"config_file": str(trial)})})
            found = asyncio.run(readiness.check(checked, checked.settings(checked.find_host(req.name)),
                                                estimate=True))
        self._print_checks(found, address)
        if not found.ok:
            _say("Nothing was written (bkd's key and the pinned host key stay, for the next run). Fix the "
                 "above and run this command again.")
            return 1

        self._write(files.config_file, new_ssh_config.encode(), 0o644, ssh_config.encode() if ssh_config else None)
        for path, data in drop_ins.items():
            old = path.read_bytes() if path.exists() else None
            self._write(path, drop_in(data), 0o644, old)
        return self._reload(config)

    # ---- before anything is written

    def _drop_ins(self, files: Files, host_file: Path) -> dict[Path, dict]:
        """conf.d/00-ssh.toml (when [ssh] lacks files) and conf.d/NAME.toml, as they are to be."""
        req, conf_d = self.req, self.main.parent / "conf.d"
        merged, origins = read_merged(self.main)
        for index, host in enumerate(merged.get("host", [])):
            where = origins.get(("host", index), (self.main,))[0]
            if isinstance(host, dict) and host.get("name") == req.name and where != host_file:
                raise Refused(f"host {req.name} is already defined in {where}; bkd host add manages "
                              f"{host_file} only: remove it there first, or choose another NAME")
        out: dict[Path, dict] = {}
        if files.record:
            ssh_file = conf_d / SSH_DROP_IN
            old = _read(ssh_file)
            out[ssh_file] = {**old, "ssh": {**old.get("ssh", {}), **files.record}}
        old = _read(host_file)
        hosts = old.get("host") if isinstance(old.get("host"), list) else []
        entry = hosts[0] if len(hosts) == 1 and isinstance(hosts[0], dict) else {}
        out[host_file] = {"host": [{**entry, "name": req.name, "source": req.source}]}
        return out

    def _candidate(self, drop_ins: dict[Path, dict]) -> Config:
        """The whole config with the new drop-ins, validated as the daemon will."""
        merged, origins = read_merged(self.main, drop_ins)
        config, problems = validate(merged, origins, self.main)
        if problems:
            raise Refused("with this host the config would not be valid:\n" + "\n".join(map(str, problems)))
        return config

    def _pin(self, known_hosts: Path) -> None:
        req = self.req
        scanned = scan(req.target)
        text = known_hosts.read_text() if known_hosts.exists() else ""
        pinned = pinned_keys(text, req.name)
        if changed(pinned, scanned):
            raise Refused(
                f"THE HOST KEY OF {req.name} ({req.target.address}) HAS CHANGED since it was pinned in "
                f"{known_hosts}:\n" + "".join(f"  pinned: {k.kind} {k.fingerprint}\n" for k in pinned)
                + "".join(f"  now:    {k.kind} {k.fingerprint}\n" for k in scanned)
                + "Someone may be intercepting the connection, or the host was reinstalled. bkd refuses it, and so "
                  f"does every backup of {req.name}. If you have checked the new key on the host (ssh-keygen -lf "
                  "/etc/ssh/ssh_host_ed25519_key.pub), re-pin it:\n"
                  f"  ssh-keygen -R {req.name} -f {known_hosts}\n  {req.command}")
        if pinned:
            _say(f"host key of {req.name}: pinned in {known_hosts} ({pinned[0].kind} {pinned[0].fingerprint})")
            return
        _say(f"host key of {req.name} ({req.target.address}), as it shows it now:")
        for key in scanned:
            _say(f"  {key.kind:<20} {key.fingerprint}")
        _say("Compare it with the host's own, on the host: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")
        if not req.yes and not _ask(f"Pin this host key for {req.name}?"):
            raise Refused(f"the host key of {req.name} is not pinned: nothing was written. Run again on a "
                          "terminal to confirm it, or with --yes once you have compared it")
        lines = "".join(f"{req.name} {key.kind} {key.blob}\n" for key in scanned)
        known_hosts.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(known_hosts, (text + ("\n" if text and not text.endswith("\n") else "") + lines).encode(),
                     mode=0o644)
        _say(f"pinned in {known_hosts}")

    def _print_lines(self, public: str, restore_public: str | None, address: str) -> None:
        req = self.req
        home = "/root" if req.user == "root" else f"~{req.user}"
        _say()
        if req.sudo:
            _say(f"On {req.name}, as root: make the login if it does not exist (useradd --system --create-home "
                 f"--shell /bin/sh {req.user}), then put this line in {home}/.ssh/authorized_keys:")
        else:
            _say(f"On {req.name}, put this line in {home}/.ssh/authorized_keys:")
        _say()
        _say(authorized_line(req, public, address))
        _say()
        if req.sudo:
            _say("and these lines in /etc/sudoers.d/bkd (visudo -f /etc/sudoers.d/bkd):")
            _say()
            for line in sudoers_lines(req):
                _say(line)
            _say()
        if restore_public:
            _say(f"For restores to {req.name}:/path, put this line in /root/.ssh/authorized_keys on "
                 f"{req.name} (it may run commands and write, from this server only; remove it when you do not "
                 "need it):")
            _say()
            _say(restore_line(restore_public, address))
            _say()

    def _check_block(self, trial: Path) -> None:
        """ssh takes the first value it finds: make sure an earlier block does not override ours."""
        req = self.req
        shown = subprocess.run(["ssh", "-G", "-F", str(trial), req.name], capture_output=True, text=True,
                               timeout=30)
        values = dict(line.split(" ", 1) for line in shown.stdout.splitlines() if " " in line)
        want = {"hostname": req.target.host, "port": str(req.target.port or 22), "user": req.user,
                "hostkeyalias": req.name}
        wrong = [f"{key} is {values.get(key)!r}, not {value!r}" for key, value in want.items()
                 if values.get(key, "").lower() != value.lower()]
        if shown.returncode != 0 or wrong:
            why = "; ".join(wrong) or safe(shown.stderr.strip())
            raise Refused(f"in bkd's ssh config, something before the Host {req.name} block decides for it ({why}): "
                          "ssh takes the first value it finds. Move or change those lines")

    def _print_checks(self, found: readiness.Readiness, address: str) -> None:
        _say("Readiness checks:")
        for check in found.checks:
            _say(f"  {'ok' if check.ok else 'FAILED':<7} {check.name:<9} {check.message}")
            if not check.ok:
                _say(f"          fix: {self._fix(check, address)}")
        if found.detail and not found.ok:
            _say(f"          the host and rsync said: {safe(found.detail)}")
        _say()

    def _fix(self, check: readiness.Check, address: str) -> str:
        req = self.req
        home = "/root" if req.user == "root" else f"~{req.user}"
        if check.problem == readiness.REFUSED:
            return (f"put the authorized_keys line above in {home}/.ssh/authorized_keys on {req.name} (it must "
                    f"come from {address}: if the host sees this server under another address, give it with "
                    "--from)")
        if check.problem == readiness.NO_RSYNC and req.sudo:
            return ("the sudoers lines above must be in /etc/sudoers.d/ on the host, and rsync 3.4.0 or newer "
                    "installed there (apt-get install rsync)")
        return check.fix or ""

    # ---- writing

    def _write(self, path: Path, data: bytes, mode: int, old: bytes | None) -> None:
        if old == data:
            _say(f"unchanged {path}")
            return
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(path, data, mode=mode)
        _say(f"wrote {path}")

    def _reload(self, config: Config) -> int:
        try:
            with Client(str(config.socket), timeout=120) as client:
                running = client.call("daemon.info").get("config_path")
                if running and os.path.realpath(running) != os.path.realpath(self.main):
                    _say(f"The running bkd reads {safe(running)}, not {self.main}: it was not reloaded.")
                    return 0
                result = client.call("config.reload")
        except Unreachable as e:
            _say(f"bkd is not running ({e}): it reads the new host when it starts.")
            return 0
        except RemoteError as e:
            _say(f"bkd did not reload: {safe(e.message)}")
            return 1
        if not result["ok"]:
            _say("bkd did not take the new config:\n" + "\n".join(f"  {safe(error)}" for error in result["errors"]))
            return 1
        _say("reloaded bkd: " + safe("; ".join(result["changes"]) or "no changes"))
        _say(f"Next: bkctl hosts test {self.req.name}; bkctl run {self.req.name} --wait")
        return 0


def _read(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise Refused(f"cannot read {path} ({e}): fix or remove it, then run this command again") from None


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def add(args, main: Path) -> int:
    """`bkd host add`: 0 enrolled (reloaded, or bkd not running), 1 refused or a check failed, 2 bad arguments."""
    try:
        req = request(args.name, args.target, args.path, args.sudo, args.from_, args.yes, args.restore_key)
    except ValueError as e:
        print(f"bkd host add: {e}", file=sys.stderr)
        return 2
    from . import logs
    logs.configure("warning")  # the checks' commands are logged at debug: not for this terminal
    try:
        return Enrolment(req, main).run()
    except Refused as e:
        print(f"bkd host add: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"bkd host add: {e.filename or ''}: {e.strerror or e} (bkd host add runs as root on the server)",
              file=sys.stderr)
        return 1

