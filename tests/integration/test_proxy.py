"""Webhooks and pings through the proxy the daemon's environment names
(http_proxy, https_proxy, no_proxy), as curl and urllib honour them: a real
forwarding proxy and real receivers on loopback, plain and over TLS."""

from __future__ import annotations

import asyncio
import base64

import pytest

from bkd.alerts.notify import http
from conftest import make_tree, wait_until
from receivers import HttpProxy, HttpReceiver, self_signed_certificate

PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "all_proxy",
                   "ALL_PROXY")


@pytest.fixture
def environment(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def proxy():
    proxy = HttpProxy()
    yield proxy
    proxy.stop()


def post(url: str) -> int:
    return asyncio.run(http.request(url, "POST", b'{"a": 1}', {"Content-Type": "application/json"}, timeout=10))


def test_an_http_url_is_asked_of_http_proxy_in_absolute_form(environment, proxy):
    receiver = HttpReceiver()
    environment.setenv("http_proxy", proxy.url())
    assert post(receiver.url("/hook?token=1")) == 200
    assert proxy.seen == [(f"POST {receiver.url('/hook?token=1')} HTTP/1.1", None)]
    (request,) = receiver.requests
    assert (request.method, request.path, request.body) == ("POST", "/hook?token=1", b'{"a": 1}')
    assert "Proxy-Authorization" not in request.headers  # the proxy's login stays with the proxy
    receiver.stop()


def test_an_https_url_goes_through_a_connect_tunnel_tls_to_the_receiver(environment, proxy, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    receiver = HttpReceiver(tls=(cert, key))
    environment.setenv("SSL_CERT_FILE", str(cert))
    environment.setenv("HTTPS_PROXY", proxy.url("bkd:s%40cret"))  # upper case works too; the login as a URL's
    assert post(receiver.url("/hook", host="localhost")) == 200
    login = "Basic " + base64.b64encode(b"bkd:s@cret").decode()
    assert proxy.seen == [(f"CONNECT localhost:{receiver.port} HTTP/1.1", login)]
    assert [(r.method, r.path) for r in receiver.requests] == [("POST", "/hook")]
    receiver.stop()


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*", ".0.0.1"])
def test_no_proxy_sends_straight_to_the_receiver(environment, proxy, no_proxy):
    receiver = HttpReceiver()
    environment.setenv("http_proxy", proxy.url())
    environment.setenv("no_proxy", no_proxy)
    assert post(receiver.url()) == 200
    assert proxy.seen == [] and len(receiver.requests) == 1
    receiver.stop()


def test_a_proxy_that_refuses_the_tunnel_is_named_and_nothing_reaches_the_receiver(environment, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    receiver = HttpReceiver(tls=(cert, key))
    refusing = HttpProxy(refuse=407)
    environment.setenv("https_proxy", refusing.url())
    with pytest.raises(http.HttpError, match=r"^the proxy refused the tunnel \(HTTP 407\)$"):
        post(receiver.url())
    assert receiver.requests == [] and len(refusing.seen) == 1
    refusing.stop()
    receiver.stop()


def test_a_proxy_that_is_down_or_not_http_is_a_clear_failure(environment, proxy):
    receiver = HttpReceiver()
    environment.setenv("http_proxy", proxy.url())
    proxy.stop()
    with pytest.raises(http.HttpError, match=r"^connection refused \(through the proxy\)$"):
        post(receiver.url())
    environment.setenv("http_proxy", "socks5://127.0.0.1:1080")
    with pytest.raises(http.HttpError, match="not an http:// proxy"):
        post(receiver.url())
    assert receiver.requests == []
    receiver.stop()


def test_the_daemons_webhooks_and_pings_take_the_proxy_of_its_environment(tmp_path, daemon_factory, proxy):
    hook, pings = HttpReceiver(), HttpReceiver()
    daemon = daemon_factory(
        [{"name": "web1", "source": str(make_tree(tmp_path / "web1", 2)), "ping_url": pings.url("/ping/web1")}],
        notify=[{"name": "chat", "type": "webhook", "url": hook.url()}])
    daemon.start(env={"http_proxy": proxy.url(), "no_proxy": "", "NO_PROXY": ""})
    result = daemon.bkctl("notify", "test", "chat")
    assert result.returncode == 0 and "chat: delivered" in result.stdout, result.stdout + result.stderr
    assert daemon.run_snapshot()["status"] == "ok"
    wait_until(lambda: len(pings.requests) == 2, 20, what="the start and success pings")
    assert sorted(line for line, _ in proxy.seen) == sorted([
        f"POST {hook.url()} HTTP/1.1", f"GET {pings.url('/ping/web1/start')} HTTP/1.1",
        f"GET {pings.url('/ping/web1')} HTTP/1.1"])
    daemon.stop()

    # The same daemon with its receivers in no_proxy: straight to them, the proxy sees nothing more.
    daemon.start(env={"http_proxy": proxy.url(), "no_proxy": "127.0.0.1"})
    assert daemon.bkctl("notify", "test", "chat").returncode == 0
    assert len(proxy.seen) == 3 and len(hook.requests) == 2
    daemon.stop()
    hook.stop()
    pings.stop()
