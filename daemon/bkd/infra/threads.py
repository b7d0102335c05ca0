"""Blocking work on a thread of its own, for work that must not hold a thread
of the shared pool (which the backups use) or the daemon's exit: a sample
pass at idle I/O priority (a per-thread setting), an SMTP conversation with
a server that stalls."""

from __future__ import annotations

import asyncio
import threading


async def in_own_thread(func, *args):
    """func(*args) on a new daemon thread; its result or its exception."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(result, error) -> None:
        if not done.done():
            done.set_exception(error) if error else done.set_result(result)

    def target():
        try:
            result = func(*args)
        except BaseException as error:  # handed to the waiting coroutine
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, daemon=True, name=getattr(func, "__name__", "worker")).start()
    return await done
