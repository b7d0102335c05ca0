"""Real receivers on loopback for notification tests: an HTTP server (webhooks,
healthchecks-style pings; over TLS on request) that records every request
and can be told to fail, to stall or to go down; an HTTP proxy that tunnels
(CONNECT) and forwards; an SMTP server (aiosmtpd) with STARTTLS and login; a
self-signed certificate for 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import select
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Request:
    time: float
    method: str
    path: str
    headers: dict
    body: bytes
    answer: int | None = None  # the status sent back; None: none was (stalled, timed out)

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """ThreadingHTTPServer on 127.0.0.1, in a thread. fail_next requests get
    500, then stall_next requests get no answer for `stall` seconds; every
    request takes `delay` seconds."""

    secret: bytes | None = None
    fail_next: int = 0
    stall_next: int = 0
    stall: float = 15.0
    delay: float = 0.0
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    bad_signatures: int = 0
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve https

    def __post_init__(self):
        self.lock = threading.Lock()
        self.server = None
        self.start()

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.do_POST()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Request(time.monotonic(), self.command, self.path, dict(self.headers), body)
                with receiver.lock:
                    receiver.requests.append(request)
                    receiver.in_flight += 1
                    receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                    if receiver.secret is not None:
                        expected = "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest()
                        if not hmac.compare_digest(self.headers.get("X-Bkd-Signature", ""), expected):
                            receiver.bad_signatures += 1
                    if receiver.fail_next:
                        receiver.fail_next -= 1
                        status = 500
                    elif receiver.stall_next:
                        receiver.stall_next -= 1
                        status = None
                    else:
                        status = 200
                time.sleep(receiver.delay if status is not None else receiver.stall)
                with receiver.lock:  # done before answering: the client may go on at the status line
                    receiver.in_flight -= 1
                    request.answer = status
                if status is not None:
                    try:
                        self.send_response(status)
                        self.send_header("Content-Length", "2")
                        self.end_headers()
                        self.wfile.write(b"OK")
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # bkd reads the status line and hangs up

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, self.tls))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: nothing listens on the port until start() again."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def accepted(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.answer == 200]

    def notifications(self) -> list[dict]:
        """Bodies of the webhook requests that were answered 200, in arrival order."""
        return [r.json() for r in self.accepted() if r.method == "POST" and r.path == "/hook"]


class HttpProxy:
    """A forwarding HTTP proxy on 127.0.0.1, in a thread: `CONNECT host:port`
    opens a tunnel (https through a proxy), a request in absolute form
    (`POST http://host:port/path`) is sent on to its host. Records each
    request line and its Proxy-Authorization; with `refuse` set, answers
    every request with that status instead."""

    def __init__(self, refuse: int | None = None):
        self.refuse = refuse
        self.seen: list[tuple[str, str | None]] = []
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                client = self.request
                reader = client.makefile("rb")
                line = reader.readline(65536).decode("latin-1").rstrip("\r\n")
                headers = []
                while (header := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
                    headers.append(header.decode("latin-1").rstrip("\r\n"))
                login = next((h.split(":", 1)[1].strip() for h in headers
                              if h.lower().startswith("proxy-authorization:")), None)
                proxy.seen.append((line, login))
                if proxy.refuse is not None:
                    client.sendall(f"HTTP/1.1 {proxy.refuse} Refused\r\nContent-Length: 0\r\n\r\n".encode())
                    return
                method, target, _ = line.split(" ", 2)
                if method == "CONNECT":
                    host, port = target.rsplit(":", 1)
                    upstream = socket.create_connection((host, int(port)), timeout=10)
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    parts = urlsplit(target)
                    upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
                    length = next((int(h.split(":", 1)[1]) for h in headers
                                   if h.lower().startswith("content-length:")), 0)
                    kept = [h for h in headers if not h.lower().startswith("proxy-authorization:")]
                    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                    upstream.sendall("\r\n".join([f"{method} {path} HTTP/1.1", *kept, "", ""]).encode("latin-1")
                                     + reader.read(length))
                with upstream:
                    _pump(client, upstream)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, login: str = "") -> str:
        return f"http://{login + '@' if login else ''}127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pump(a: socket.socket, b: socket.socket, timeout: float = 20.0) -> None:
    """Copy bytes both ways until either side closes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([a, b], [], [], 1.0)
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            (b if sock is a else a).sendall(data)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1 and localhost."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


class SmtpReceiver:
    """aiosmtpd on 127.0.0.1 that insists on STARTTLS before AUTH and on a login
    before mail; records each message with whether it came over TLS and who
    logged in."""

    def __init__(self, cert: Path, key: Path, user: str, password: str, delay: float = 0.0):
        import asyncio

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        from conftest import free_port

        self.messages: list[dict] = []
        self.logins: list[tuple[str, bool]] = []
        self.in_flight = self.max_in_flight = 0  # messages being received at once (each takes `delay` s)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        receiver = self

        def authenticator(server, session, envelope, mechanism, auth_data):
            login = auth_data.login.decode()
            ok = login == user and auth_data.password.decode() == password
            receiver.logins.append((login, ok))
            return AuthResult(success=ok, handled=False)

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                receiver.in_flight += 1
                receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                await asyncio.sleep(delay)
                receiver.in_flight -= 1
                receiver.messages.append({"tls": session.ssl is not None, "login": session.authenticated,
                                          "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                          "data": envelope.original_content})
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context,
                                     require_starttls=True, authenticator=authenticator, auth_require_tls=True,
                                     auth_required=True)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
