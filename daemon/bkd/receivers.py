"""The callers' receivers of local restores: a restore job waits here for its
caller's bkctl to attach (`restore.stream`, which hands over the connection)
and, once the data has been sent, for its report of what was written
(`restore.finish`). Each is matched by a one-time token and the caller's uid."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from .errors import Denied, NotFound

ATTACH_TIMEOUT = 60.0  # seconds a restore waits for its receiver to connect
REPORT_TIMEOUT = 60.0  # seconds it waits for the receiver's report once the data is sent


@dataclass
class Expected:
    uid: int
    connection: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    report: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Receivers:
    def __init__(self):
        self._expected: dict[str, Expected] = {}

    def expect(self, uid: int) -> str:
        token = secrets.token_hex(16)
        self._expected[token] = Expected(uid)
        return token

    def _find(self, token: str, uid: int) -> Expected:
        expected = self._expected.get(token)
        if expected is None:
            raise NotFound("no restore is waiting for that receiver (finished, cancelled or timed out)")
        if uid not in (expected.uid, 0):
            raise Denied("permission denied: that restore belongs to another user")
        return expected

    def check(self, token: str, uid: int) -> None:
        """Before the receiver is answered: the token is waiting and is the caller's."""
        if self._find(token, uid).connection.done():
            raise NotFound("that restore's receiver is already attached")

    def hand_over(self, token: str, streams: tuple) -> None:
        """The answered connection's (reader, writer) now carry the rsync protocol."""
        expected = self._expected.get(token)
        if expected is None or expected.connection.done():
            streams[1].transport.abort()
            return
        expected.connection.set_result(streams)

    def report(self, token: str, uid: int, report: dict) -> None:
        expected = self._find(token, uid)
        if not expected.report.done():
            expected.report.set_result(report)

    async def connection(self, token: str) -> tuple:
        async with asyncio.timeout(ATTACH_TIMEOUT):  # not wait_for: it can swallow a cancel (see supervise.woken)
            return await asyncio.shield(self._expected[token].connection)

    async def reported(self, token: str) -> dict:
        async with asyncio.timeout(REPORT_TIMEOUT):
            return await asyncio.shield(self._expected[token].report)

    def forget(self, token: str) -> None:
        expected = self._expected.pop(token, None)
        if expected and expected.connection.done() and not expected.connection.cancelled():
            _reader, writer = expected.connection.result()
            writer.transport.abort()  # ended, cancelled or failed: nothing more to say to the receiver
