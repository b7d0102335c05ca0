"""sd_notify: READY/STATUS/WATCHDOG/STOPPING for systemd (a no-op without NOTIFY_SOCKET)."""

from __future__ import annotations

import sdnotify

_notifier = sdnotify.SystemdNotifier()


def notify(*lines: str) -> None:
    _notifier.notify("\n".join(lines))
