"""Speaking up (SPEC §8): the notification outbox and its sinks (webhook,
email), and the dead-man pings (per host, and the daemon's heartbeat)."""
