"""Live events (bkd.events): a publisher never waits and never fails; each
subscriber has a bounded queue and is dropped when it falls that far behind."""

from bkd.events import EventBus


def drain(subscription) -> list[dict]:
    events = []
    while not subscription.queue.empty():
        events.append(subscription.queue.get_nowait())
    return events


async def test_each_subscriber_gets_its_topics_in_order_numbered_across_topics():
    bus = EventBus()
    bus.publish("job", job_id=1)  # nobody listens: nothing is kept, nothing is numbered
    everything = bus.subscribe(None, 10, lambda: None)
    hosts = bus.subscribe({"host"}, 10, lambda: None)
    bus.publish("job", job_id=2)
    bus.publish("host", host="a")
    bus.publish("progress", host="a")
    assert [(e["topic"], e["seq"]) for e in drain(everything)] == [("job", 1), ("host", 2), ("progress", 3)]
    (event,) = drain(hosts)
    assert (event["host"], event["seq"]) == ("a", 2) and event["time"].endswith("Z")
    bus.unsubscribe(hosts)
    bus.publish("host", host="b")
    assert drain(hosts) == [] and len(drain(everything)) == 1


async def test_a_subscriber_that_falls_behind_is_dropped_after_the_others_got_the_event():
    bus = EventBus()
    told = []
    subscriptions = [bus.subscribe(None, 4, lambda: None) for _ in range(4)]
    slow = next(iter(bus.subscriptions))  # the first one each event reaches
    others = [s for s in subscriptions if s is not slow]
    # Dropping logs, and logging publishes.
    slow.on_drop = lambda: told.append("dropped") or bus.publish("log", event="dropped")
    slow.queue.put_nowait({"job_id": "unread"})
    slow.queue.put_nowait({"job_id": "unread"})
    for number in range(3):  # the third does not fit in the slow one's queue
        bus.publish("job", job_id=number)
    assert told == ["dropped"] and slow.dropped and slow not in bus.subscriptions
    assert [e["job_id"] for e in drain(slow)] == ["unread", "unread", 0, 1]  # nothing more comes
    for subscription in others:  # the drop's own event comes after the one that caused it
        assert [e.get("job_id", e["topic"]) for e in drain(subscription)] == [0, 1, 2, "log"]
    bus.publish("job", job_id=3)
    assert drain(slow) == [] and told == ["dropped"]
