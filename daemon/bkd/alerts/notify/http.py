"""A small HTTP/1.1 client on asyncio streams, for webhooks and pings: one
request per connection, the status code is the answer. Cancelling it (a
timeout, the daemon stopping) ends it at once; no thread is left behind."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
from urllib.parse import unquote, urlsplit

from ... import __version__

MAX_STATUS_LINE = 8192


class HttpError(Exception):
    """The request did not get an HTTP answer; the message is fit for every role
    (no URL: it may carry a token)."""


def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # honours SSL_CERT_FILE / SSL_CERT_DIR


async def request(url: str, method: str = "GET", body: bytes = b"", headers: dict[str, str] | None = None,
                  timeout: float = 10.0) -> int:
    """Send one request; return the response's status code. Raises HttpError
    when no answer came within timeout seconds (connecting included)."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in (parts.hostname or ""):
        host_header = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}", f"User-Agent: bkd/{__version__}",
             f"Content-Length: {len(body)}", "Connection: close"]
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        lines.append(f"Authorization: Basic {base64.b64encode(credentials).decode()}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=_tls() if secure else None,
                                                           limit=MAX_STATUS_LINE)
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
    except TimeoutError:
        raise HttpError(f"no answer within {timeout:g}s") from None
    except ssl.SSLError as e:
        raise HttpError(f"TLS failed: {e.reason or e}") from None
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        raise HttpError(_reason(e)) from None
    finally:
        if writer is not None:
            writer.close()
    fields = status_line.split(None, 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        raise HttpError("the answer was not HTTP" if status_line else "the connection closed without an answer")
    return int(fields[1])


def delivered(status: int) -> bool:
    return 200 <= status < 300


def permanent(status: int) -> bool:
    """A refusal that asking again will not change: 4xx, except 408 (request
    timeout) and 429 (too many requests), which say "later"."""
    return 400 <= status < 500 and status not in (408, 429)


def _reason(error: Exception) -> str:
    """Why, without addresses (asyncio's "Connect call failed ('10.0.0.5', 443)" names them)."""
    if isinstance(error, OSError) and not isinstance(error, socket.gaierror) and error.errno and error.errno > 0:
        return os.strerror(error.errno).lower()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__
