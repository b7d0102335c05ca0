"""Run as another user: connections that pipeline requests to bkd and never
read an answer (issue 18, item 2).

    python pipeliner.py SOCKET SECONDS METHOD PARAMS_JSON COUNT CONNECTIONS

Each of CONNECTIONS threads connects and sends COUNT requests of METHOD
(COUNT 0: without end) as fast as the socket takes them, reading nothing;
when the daemon closes the connection it connects again, until SECONDS have
passed. Prints one JSON line: per connection opened, {opened, last_write,
closed, sent} in seconds since the start (closed null: still open at the
end).
"""

import json
import select
import socket
import sys
import threading
import time


def pipeline(path: str, line: bytes, count: int, deadline: float, start: float, record: list) -> None:
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        entry = {"opened": time.monotonic() - start, "last_write": None, "closed": None, "sent": 0}
        record.append(entry)
        if not flood(sock, line, count, deadline, start, entry):
            return  # still open at the end
        entry["closed"] = time.monotonic() - start
        sock.close()
        if count:
            return


def flood(sock: socket.socket, line: bytes, count: int, deadline: float, start: float, entry: dict) -> bool:
    """Send until the daemon closes the connection (True) or the deadline (False)."""
    try:
        while not count or entry["sent"] < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            sock.sendall(line)
            entry["sent"] += 1
            entry["last_write"] = time.monotonic() - start
    except socket.timeout:
        return False
    except OSError:
        return True
    # Sent them all: hold the connection, unread, until the daemon hangs up.
    poll = select.poll()
    poll.register(sock, select.POLLRDHUP | select.POLLHUP)
    return bool(poll.poll(max(0.0, deadline - time.monotonic()) * 1000))


def main(path: str, seconds: float, method: str, params: str, count: int, connections: int) -> None:
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": json.loads(params)}).encode() + b"\n"
    start = time.monotonic()
    records: list[list] = [[] for _ in range(connections)]
    threads = [threading.Thread(target=pipeline, args=(path, line, count, start + seconds, start, records[i]))
               for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps([entry for record in records for entry in record]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
