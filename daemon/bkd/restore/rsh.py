"""The remote shell of a local restore's rsync: `python -I -S rsh.py FD HOST COMMAND...`.

The daemon's rsync (the sender, a client) starts it as it would start ssh,
with its two ends of the connection as stdin and stdout. It hands those two
descriptors and the server command rsync asked for to the daemon over the
inherited socket FD, then exits: the caller's receiver, which gets them from
the daemon, then talks to the sender directly. Standard library only, run
by path (no site packages), so it starts in milliseconds."""

import os
import socket
import sys


def main() -> int:
    channel = socket.socket(fileno=int(sys.argv[1]))
    command = sys.argv[3:]  # after the host name rsync puts first
    socket.send_fds(channel, [b"\0".join(os.fsencode(arg) for arg in command)], [0, 1])
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
