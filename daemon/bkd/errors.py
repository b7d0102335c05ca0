"""Errors that reach the caller as JSON-RPC error objects."""

from __future__ import annotations


class RpcError(Exception):
    """An error the caller gets back as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
