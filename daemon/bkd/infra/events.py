"""Live events: publishers never wait; each subscriber has a bounded queue and
is dropped when it falls that far behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from . import clock

TOPICS = ("job", "host", "progress", "log", "alert")
DEFAULT_QUEUE = 256  # events beyond what the socket buffers hold


class Subscription:
    def __init__(self, topics: set[str] | None, max_queue: int, on_drop: Callable[[], None]):
        self.topics = topics
        self.queue: asyncio.Queue[dict] = asyncio.Queue(max_queue)
        self.on_drop = on_drop
        self.dropped = False


class EventBus:
    def __init__(self):
        self.subscriptions: set[Subscription] = set()
        self.seq = 0

    def subscribe(self, topics: set[str] | None, max_queue: int, on_drop: Callable[[], None]) -> Subscription:
        subscription = Subscription(topics, max_queue, on_drop)
        self.subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    def publish(self, topic: str, **data) -> None:
        """Called from anywhere in the loop; never blocks, never raises."""
        if not self.subscriptions:
            return
        self.seq += 1
        event = {"topic": topic, "seq": self.seq, "time": clock.iso(clock.now()), **data}
        behind = []
        for subscription in list(self.subscriptions):
            if subscription.topics and topic not in subscription.topics:
                continue
            try:
                subscription.queue.put_nowait(event)
            except asyncio.QueueFull:
                behind.append(subscription)
        # Dropping logs, and logging publishes: only after this event reached everyone.
        for subscription in behind:
            subscription.dropped = True
            self.subscriptions.discard(subscription)
            subscription.on_drop()
