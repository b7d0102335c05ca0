"""The one holder of the live config. Reload swaps the whole (never mutated)
Config object; whoever needs to react registers a listener. A run keeps the
object it was planned with, so a reload never reaches into it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from ..infra.systemd import notify
from . import Config, ConfigError, load_config
from .models import RESTART_ONLY, describe_changes

log = structlog.get_logger()


class Runtime:
    def __init__(self, config_path: Path, config: Config):
        self.config_path = config_path
        self.config = config
        self._listeners: list[Callable[[Config, Config], None]] = []
        self._reloading = asyncio.Lock()

    def on_reload(self, listener: Callable[[Config, Config], None]) -> None:
        """listener(old, new) runs right after a reload swapped the config."""
        self._listeners.append(listener)

    async def reload(self) -> dict:
        """Re-read the config; swap it in only when it is valid."""
        async with self._reloading:  # two reloads at once would race on the swap
            notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                return await self._reload()
            finally:
                notify("READY=1")

    async def _reload(self) -> dict:
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as e:
            errors = [str(problem) for problem in e.problems]
            log.error("config.reload_failed", errors=errors)
            return {"ok": False, "changes": [], "errors": errors}
        old = self.config
        fixed = [key for key in RESTART_ONLY if getattr(new, key) != getattr(old, key)]
        if fixed:
            errors = [f"{self.config_path}:{key}: cannot change while bkd runs "
                      f"(still {getattr(old, key)}); restart bkd" for key in fixed]
            log.error("config.reload_failed", errors=errors)
            return {"ok": False, "changes": [], "errors": errors}
        changes = describe_changes(old, new)
        self.config = new
        for listener in self._listeners:
            listener(old, new)
        log.info("config.reloaded", changes=changes)
        return {"ok": True, "changes": changes, "errors": []}
