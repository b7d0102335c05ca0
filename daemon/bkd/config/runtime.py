"""The one holder of the live config. Reload swaps the whole (never mutated)
Config object; whoever needs to react registers a listener. A run keeps the
object it was planned with, so a reload never reaches into it.

The live config is the files' config with the hosts of each [[replica]]
that are known (Config.with_replicated): learning of one swaps the config
the same way, so that a replicated host is a host to everyone."""

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
        self.loaded = config  # what the files say
        self.replicated: dict[str, frozenset[str]] = {}  # replica → the primary's hosts known for it
        self.config = config
        self._listeners: list[Callable[[Config, Config], None]] = []
        self._reloading = asyncio.Lock()

    def replicated_hosts(self, replica: str, hosts) -> None:
        """The primary's hosts known for replica now (listed there, or found
        here): its hosts of the live config, the others' kept."""
        known = {**self.replicated, replica: frozenset(hosts)}
        if known != self.replicated:
            self.replicated = known
            changes = self._swap(self.loaded.with_replicated(known))
            if changes:
                log.info("config.replicated_hosts", replica=replica, changes=changes)

    def _swap(self, new: Config) -> list[str]:
        old = self.config
        self.config = new
        for listener in self._listeners:
            listener(old, new)
        return describe_changes(old, new)

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
        self.loaded = new
        changes = self._swap(new.with_replicated(self.replicated))
        log.info("config.reloaded", changes=changes)
        return {"ok": True, "changes": changes, "errors": []}
