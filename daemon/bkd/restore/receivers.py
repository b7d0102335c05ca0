"""The callers' receivers of local restores: a restore job waits here for its
caller's bkctl to attach (`restore.stream`, which hands over the connection
the job then gives the receiver its ends of the sender's connection on).
Each is matched by a one-time token and the caller's uid; a token not used
in time expires with its job."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from ..infra.errors import Denied, NotFound

ATTACH_TIMEOUT = 60.0  # seconds a restore waits at most for its receiver to attach (less if rsync.timeout is)


@dataclass
class Expected:
    uid: int
    connection: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Receivers:
    def __init__(self):
        self._expected: dict[str, Expected] = {}

    def expect(self, uid: int) -> str:
        token = secrets.token_hex(16)
        self._expected[token] = Expected(uid)
        return token

    def check(self, token: str, uid: int) -> None:
        """Before the receiver is answered: the token is waiting and is the caller's."""
        expected = self._expected.get(token)
        if expected is None:
            raise NotFound("no restore is waiting for that receiver (finished, cancelled or timed out)")
        if uid not in (expected.uid, 0):
            raise Denied("permission denied: that restore belongs to another user")
        if expected.connection.done():
            raise NotFound("that restore's receiver is already attached")

    def hand_over(self, token: str, streams: tuple) -> None:
        """The answered connection's (reader, writer) are now the restore's."""
        expected = self._expected.get(token)
        if expected is None or expected.connection.done():
            streams[1].transport.abort()
            return
        expected.connection.set_result(streams)

    async def connection(self, token: str, timeout: float) -> tuple:
        async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel (see supervise.woken)
            return await asyncio.shield(self._expected[token].connection)

    def forget(self, token: str) -> None:
        expected = self._expected.pop(token, None)
        if expected and expected.connection.done() and not expected.connection.cancelled():
            _reader, writer = expected.connection.result()
            writer.transport.abort()  # ended, cancelled or failed: nothing more to say to the receiver
