#!/usr/bin/env python3
"""Deletes JetStream streams left behind by earlier test or benchmark runs (names starting with
GS_TEST_, GS_ADAPTER_, GS_LOADTEST_), which would otherwise keep their storage reserved.
Speaks the NATS text protocol directly, so no client tool is needed. Run it before tests, never
while they run."""
import json
import socket
import sys

PREFIXES = ("GS_TEST_", "GS_ADAPTER_", "GS_LOADTEST_")


def request(sock, buf, subject, payload=b""):
    sock.sendall(b"PUB %s _INBOX.gscleanup %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
    while True:
        while b"\r\n" not in buf[0]:
            buf[0] += sock.recv(65536)
        line, rest = buf[0].split(b"\r\n", 1)
        buf[0] = rest
        if line.startswith(b"MSG"):
            size = int(line.split()[-1])
            while len(buf[0]) < size + 2:
                buf[0] += sock.recv(65536)
            body, buf[0] = buf[0][:size], buf[0][size + 2:]
            return json.loads(body)
        if line.startswith(b"PING"):
            sock.sendall(b"PONG\r\n")


def main():
    sock = socket.create_connection(("127.0.0.1", 4222), timeout=10)
    buf = [b""]
    sock.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.gscleanup 1\r\n')
    names, offset = [], 0
    while True:
        r = request(sock, buf, "$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode())
        page = r.get("streams") or []
        names += page
        offset += len(page)
        if not page or offset >= r.get("total", 0):
            break
    stale = [n for n in names if n.startswith(PREFIXES)]
    for n in stale:
        request(sock, buf, "$JS.API.STREAM.DELETE." + n)
    print(f"nats cleanup: {len(stale)} leftover test streams deleted, {len(names) - len(stale)} kept")


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        print(f"nats cleanup skipped: {e}", file=sys.stderr)
