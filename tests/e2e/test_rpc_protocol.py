"""Malformed input on the socket gets the SPEC's error codes and never hurts the daemon."""

import socket
import stat
import time

import pytest

from bkctl import protocol
from conftest import exchange, make_tree


@pytest.fixture
def daemon(tmp_path, daemon_factory):
    return daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "src", 3))}]).start()


@pytest.mark.parametrize("payload,code,request_id", [
    (b"this is not json\n", protocol.ErrorCode.PARSE_ERROR, None),
    (b'{"jsonrpc": "2.0", "method": "status", "id": 1\n', protocol.ErrorCode.PARSE_ERROR, None),
    (b"[1, 2]\n", protocol.ErrorCode.INVALID_REQUEST, None),
    (b'[{"jsonrpc": "2.0", "method": "status", "id": 1}]\n', protocol.ErrorCode.INVALID_REQUEST, None),
    (b'"just a string"\n', protocol.ErrorCode.INVALID_REQUEST, None),
    (b'{"jsonrpc": "1.0", "method": "status", "id": 4}\n', protocol.ErrorCode.INVALID_REQUEST, 4),
    (b'{"jsonrpc": "2.0", "method": 5, "id": 5}\n', protocol.ErrorCode.INVALID_REQUEST, 5),
    (b'{"jsonrpc": "2.0", "method": "rm -rf", "id": 6}\n', protocol.ErrorCode.METHOD_NOT_FOUND, 6),
    (b'{"jsonrpc": "2.0", "method": "__class__", "id": 7}\n', protocol.ErrorCode.METHOD_NOT_FOUND, 7),
    (b'{"jsonrpc": "2.0", "method": "job.get", "params": {"job_id": "x"}, "id": 8}\n', protocol.ErrorCode.INVALID_PARAMS, 8),
    (b'{"jsonrpc": "2.0", "method": "job.get", "params": {}, "id": 9}\n', protocol.ErrorCode.INVALID_PARAMS, 9),
    (b'{"jsonrpc": "2.0", "method": "status", "params": [1], "id": 10}\n', protocol.ErrorCode.INVALID_PARAMS, 10),
    (b'{"jsonrpc": "2.0", "method": "job.start", "params": {"hostz": []}, "id": 11}\n', protocol.ErrorCode.INVALID_PARAMS, 11),
    (b'{"jsonrpc": "2.0", "method": "job.get", "params": {"job_id": 999}, "id": 12}\n', protocol.ErrorCode.NOT_FOUND, 12),
    (b'{"jsonrpc": "2.0", "method": "job.start", "params": {"hosts": ["nope"]}, "id": 13}\n', protocol.ErrorCode.NOT_FOUND, 13),
    (b'\xff\xfe\n', protocol.ErrorCode.PARSE_ERROR, None),
])
def test_malformed_requests_get_their_error_code_and_the_daemon_keeps_serving(daemon, payload, code, request_id):
    (response,) = exchange(daemon.socket, payload)
    assert response["jsonrpc"] == "2.0"
    assert response["error"]["code"] == code
    assert response["id"] == request_id
    assert "Traceback" not in response["error"]["message"]
    assert "hosts" in daemon.call("status")


def test_invalid_params_name_the_field(daemon):
    (response,) = exchange(daemon.socket, b'{"jsonrpc":"2.0","method":"jobs.list","params":{"limit":0},"id":1}\n')
    assert response["error"]["message"].startswith("invalid params: limit:")


def test_error_messages_speak_the_protocol_not_python(daemon):
    """An enum's Python repr and Python's advice about int_max_str_digits
    leaked into error messages."""
    (kind,) = exchange(daemon.socket, b'{"jsonrpc":"2.0","method":"job.start","params":{"kind":"bogus"},"id":1}\n')
    assert kind["error"]["code"] == protocol.ErrorCode.INVALID_PARAMS
    assert "'snapshot'" in kind["error"]["message"] and "<" not in kind["error"]["message"]
    (digits,) = exchange(daemon.socket, b'{"jsonrpc":"2.0","method":"status","id":' + b"9" * 5000 + b"}\n")
    assert digits["error"] == {"code": protocol.ErrorCode.PARSE_ERROR,
                               "message": "parse error: a number with too many digits"}


def test_a_line_over_one_mebibyte_is_refused_and_the_connection_closed(daemon):
    huge = b'{"jsonrpc":"2.0","method":"status","id":1,"pad":"' + b"x" * protocol.MAX_LINE + b'"}\n'
    responses = exchange(daemon.socket, huge + b'{"jsonrpc":"2.0","method":"status","id":2}\n')
    assert len(responses) == 1
    assert responses[0]["error"]["code"] == protocol.ErrorCode.INVALID_REQUEST
    assert "too large" in responses[0]["error"]["message"]
    assert "hosts" in daemon.call("status")


def test_several_requests_on_one_connection_and_notifications_get_no_answer(daemon):
    payload = (b'{"jsonrpc":"2.0","method":"status"}\n'
               b'{"jsonrpc":"2.0","method":"daemon.info","id":"a"}\n'
               b'{"jsonrpc":"2.0","method":"jobs.list","id":"b"}\n')
    responses = {r["id"]: r for r in exchange(daemon.socket, payload)}
    assert set(responses) == {"a", "b"}
    assert responses["a"]["result"]["protocol"] == protocol.PROTOCOL_VERSION
    assert responses["a"]["result"]["backup_root"] == str(daemon.workdir / "backup")


def test_a_silent_half_sent_client_does_not_stall_others(daemon):
    with socket.socket(socket.AF_UNIX) as stuck:
        stuck.connect(str(daemon.socket))
        stuck.sendall(b'{"jsonrpc":"2.0","method":"sta')  # and never finishes
        started = time.monotonic()
        assert "hosts" in daemon.call("status")
        assert time.monotonic() - started < 2


def test_the_socket_is_created_0660(daemon):
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660


@pytest.mark.parametrize("request_line", [
    rb'{"jsonrpc":"2.0","id":1,"method":"snapshots.browse","params":{"host":"web1","path":"/a\ud800b"}}',
    rb'{"jsonrpc":"2.0","id":1,"method":"snapshots.browse","params":{"host":"web1","path":"/a\u0000b"}}',
    rb'{"jsonrpc":"2.0","id":1,"method":"restore","params":{"host":"web1","snapshot":"latest","path":"/",'
    rb'"dest":"/tmp/x\u0000y"}}',
    rb'{"jsonrpc":"2.0","id":1,"method":"restore","params":{"host":"web1","snapshot":"latest","path":"/\udbff",'
    rb'"dest":"/tmp/x"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"job.get","params":{"job_id":9223372036854775808}}',
    b'{"jsonrpc":"2.0","id":1,"method":"alerts.ack","params":{"ids":[18446744073709551616]}}',
    b'{"jsonrpc":"2.0","id":1,"method":"snapshots.list","params":{"host":"../../../../root/secret"}}',
])
def test_parameters_that_cannot_be_file_names_or_ids_are_invalid_params(daemon, request_line):
    (response,) = exchange(daemon.socket, request_line + b"\n")
    assert response["id"] == 1
    assert response["error"]["code"] == protocol.ErrorCode.INVALID_PARAMS, response
    assert response["error"]["message"].startswith("invalid params: ")


def test_a_request_nested_a_hundred_thousand_deep_is_a_parse_error(daemon):
    deep = b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}\n"
    (response,) = exchange(daemon.socket, deep)
    assert response["error"]["code"] in (protocol.ErrorCode.PARSE_ERROR, protocol.ErrorCode.INVALID_REQUEST)
    assert "hosts" in daemon.call("status")
