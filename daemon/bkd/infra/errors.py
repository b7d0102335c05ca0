"""Domain errors. Code below the RPC edge raises these; the RPC server turns
them into JSON-RPC error codes with one table (rpc/server.py: WIRE_CODES).
And the one error that ends the daemon before it serves: StartupError."""

from __future__ import annotations


class DomainError(Exception):
    """An error the caller is told about: message says what and what to do;
    data carries machine-readable detail (e.g. the busy hosts)."""

    def __init__(self, message: str, data: dict | None = None):
        super().__init__(message)
        self.message = message
        self.data = data


class NotFound(DomainError):
    """No such host, job, snapshot, path or alert."""


class Busy(DomainError):
    """The host already has work of that kind running."""


class Conflict(DomainError):
    """The request would replace something that exists (e.g. a restore target)."""


class InvalidArgument(DomainError):
    """A parameter is well-formed but not acceptable; the message names it."""


class Denied(DomainError):
    """The caller's role or Unix identity does not allow this."""


class ShuttingDown(DomainError):
    """The daemon is stopping and takes no new work."""


class NotReady(DomainError):
    """What answers this is not ready yet (the version index being rebuilt); data says how far."""


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do, in one line."""
