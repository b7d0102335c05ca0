"""Run as another user: open as many connections to bkd as it will take (up
to COUNT), hold them, and on command send calls over them.

    python conn_holder.py SOCKET COUNT

Prints one JSON line when the connections are open: {"open", "refused",
"messages"}; then reads commands on stdin, one a line, answering each with
one JSON line:
    flood N BYTES   N refused job.start calls of about BYTES each, round robin
    ping            daemon.info on every held connection: how many still answer
    quit
"""

import json
import resource
import socket
import sys


def request(method: str, params: dict, request_id) -> bytes:
    return (json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}) + "\n").encode()


def answer(conn) -> dict | None:
    line = conn[1].readline()
    return json.loads(line) if line else None


def main(path: str, count: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held, refused, messages = [], 0, set()
    for index in range(count):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(60)
        sock.connect(path)
        try:
            sock.sendall(request("daemon.info", {}, index))
        except BrokenPipeError:
            pass  # refused and closed already: its error line is still there to read
        conn = (sock, sock.makefile("rb"))
        try:
            reply = answer(conn)
        except ConnectionResetError:
            reply = None
        if reply is None or reply.get("id") is None:  # refused at once: one error line, then closed
            refused += 1
            if reply:
                messages.add(reply["error"]["message"].split(":")[0])
            sock.close()
        else:
            held.append(conn)
    print(json.dumps({"open": len(held), "refused": refused, "messages": sorted(messages)}), flush=True)
    for command in sys.stdin:
        words = command.split()
        if words[0] == "flood":
            calls, size = int(words[1]), int(words[2])
            codes: dict[str, int] = {}
            pad = "x" * (size - 200)
            for index in range(calls):
                conn = held[index % len(held)]
                conn[0].sendall(request("job.start", {"hosts": ["web1"], "pad": pad}, index))
                reply = answer(conn)
                code = str(reply["error"]["code"]) if reply and "error" in reply else "ok"
                codes[code] = codes.get(code, 0) + 1
            print(json.dumps(codes), flush=True)
        elif words[0] == "ping":
            alive = 0
            for index, conn in enumerate(held):
                try:
                    conn[0].sendall(request("daemon.info", {}, index))
                    alive += answer(conn) is not None
                except OSError:
                    pass
            print(json.dumps({"alive": alive}), flush=True)
        else:
            break


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
