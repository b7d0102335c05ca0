"""A small HTTP/1.1 client on asyncio streams, for webhooks and pings: one
request per connection, the status code is the answer. Cancelling it (a
timeout, the daemon stopping) ends it at once; no thread is left behind.

It honours the proxy variables of the daemon's environment as curl and
urllib do (`http_proxy`, `https_proxy`, `no_proxy`, and their upper-case
forms): an http URL is asked of the proxy in absolute form, an https URL
goes through a CONNECT tunnel, TLS end to end with the receiver. Only
http:// proxies; a proxy URL's user and password go as Proxy-Authorization."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import urllib.request
from urllib.parse import SplitResult, unquote, urlsplit

from ... import __version__

MAX_STATUS_LINE = 8192
MAX_PROXY_HEADERS = 100  # lines of a proxy's answer to CONNECT read at most


class HttpError(Exception):
    """The request did not get an HTTP answer; the message is fit for every role
    (no URL: it may carry a token)."""


def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # honours SSL_CERT_FILE / SSL_CERT_DIR


def proxy_for(parts: SplitResult) -> SplitResult | None:
    """The proxy the environment names for this URL, or None: none set, or the
    host is in no_proxy. Read at each request, as the environment is the daemon's."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme)
    if not proxy:
        return None
    host = parts.hostname or ""
    if urllib.request.proxy_bypass_environment(f"{host}:{parts.port}" if parts.port else host, proxies):
        return None
    proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if proxy_parts.scheme != "http" or not proxy_parts.hostname:
        raise HttpError(f"the {parts.scheme}_proxy variable is not an http:// proxy (only those are supported)")
    return proxy_parts


def _basic(parts: SplitResult) -> str | None:
    if parts.username is None:
        return None
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return f"Basic {base64.b64encode(credentials).decode()}"


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
    proxy = proxy_for(parts)
    lines = [f"{method} {target if proxy is None or secure else url} HTTP/1.1", f"Host: {host_header}",
             f"User-Agent: bkd/{__version__}", f"Content-Length: {len(body)}", "Connection: close"]
    if (authorization := _basic(parts)) is not None:
        lines.append(f"Authorization: {authorization}")
    if proxy is not None and not secure and (proxy_login := _basic(proxy)) is not None:
        lines.append(f"Proxy-Authorization: {proxy_login}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    writer = None
    try:
        async with asyncio.timeout(timeout):
            if proxy is None:
                reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=_tls() if secure else None,
                                                               limit=MAX_STATUS_LINE)
            else:
                reader, writer = await asyncio.open_connection(proxy.hostname, proxy.port or 80,
                                                               limit=MAX_STATUS_LINE)
                if secure:
                    await _tunnel(reader, writer, host_header if parts.port else f"{host_header}:443", proxy)
                    await writer.start_tls(_tls(), server_hostname=parts.hostname)
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
    except TimeoutError:
        raise HttpError(f"no answer within {timeout:g}s") from None
    except ssl.SSLError as e:
        raise HttpError(f"TLS failed: {e.reason or e}") from None
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        raise HttpError(_reason(e) + (" (through the proxy)" if proxy is not None else "")) from None
    finally:
        if writer is not None:
            writer.close()
    status = _status(status_line)
    if status is None:
        raise HttpError("the answer was not HTTP" if status_line else "the connection closed without an answer")
    return status


def _status(status_line: bytes) -> int | None:
    fields = status_line.split(None, 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        return None
    return int(fields[1])


async def _tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str,
                  proxy: SplitResult) -> None:
    """CONNECT through the proxy; what follows on the connection is the receiver's."""
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: bkd/{__version__}"]
    if (proxy_login := _basic(proxy)) is not None:
        lines.append(f"Proxy-Authorization: {proxy_login}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    status = _status(await reader.readline())
    for _ in range(MAX_PROXY_HEADERS):  # the rest of the proxy's answer, up to its blank line
        if (await reader.readline()).strip() == b"":
            break
    else:
        raise HttpError("the proxy's answer to CONNECT did not end")
    if status is None:
        raise HttpError("the proxy did not answer CONNECT in HTTP")
    if not 200 <= status < 300:
        raise HttpError(f"the proxy refused the tunnel (HTTP {status})")


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
