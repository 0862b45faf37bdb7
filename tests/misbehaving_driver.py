"""A driver that breaks the protocol in one chosen way: `python misbehaving_driver.py MODE`.

It is a real process on real pipes, so the tests see what a broken driver in any
language would do to the harness. It answers `connect` and `close` properly and
misbehaves on the first contract operation (or in its hello, for the hello modes).
"""

from __future__ import annotations

import json
import sys
import threading

HELLO = {"protocol": 1, "implementation": "misbehaving", "capabilities": ["turns"]}
"""A version 1 hello: the harness still serves version 1 drivers."""


def send(message: object) -> None:
    sys.stdout.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
    sys.stdout.flush()


def main(mode: str) -> int:
    if mode == "no-hello":
        print("cannot load libturnstore.so", file=sys.stderr)
        return 1
    if mode == "bad-hello":
        send("hello, harness")
    elif mode == "hello-v3":
        send({"hello": {**HELLO, "protocol": 3}})
    elif mode == "v1-coalescing":
        send({"hello": {**HELLO, "capabilities": ["turns", "coalescing"]}})
    elif mode == "unknown-capability":
        send({"hello": {**HELLO, "capabilities": ["turns", "teleport"]}})
    elif mode == "silent":
        threading.Event().wait()  # never says hello, never exits by itself
    else:
        send({"hello": HELLO})
    held: list[dict] = []
    for line in sys.stdin:
        request = json.loads(line)
        rid, op = request["id"], request["op"]
        if op in ("connect", "install", "close"):
            send({"id": rid, "ok": None})
            if op == "close":
                return 0
            continue
        print(f"got {op}", file=sys.stderr, flush=True)
        if mode == "garbage":
            send("this is not a protocol line")
        elif mode == "exit":
            print("about to fall over", file=sys.stderr, flush=True)
            return 3
        elif mode == "fatal":
            send({"fatal": "the disk is on fire"})
            return 1
        elif mode == "wrong-type":
            send({"id": rid, "ok": 42})
        elif mode == "unknown-id":
            send({"id": rid + 1000, "ok": "x"})
        elif mode == "null-id":
            send({"id": None, "error": {"kind": "ProtocolError", "message": "unreadable"}})
        elif mode == "other-error":
            send({"id": rid, "error": {"kind": "Other", "message": "disk full"}})
        elif mode == "reverse":  # answers two requests, the later one first
            held.append(request)
            if len(held) == 2:
                for r in reversed(held):
                    send({"id": r["id"], "ok": f"chat-of-{r['args']['workspace_id']}"})
                held.clear()
        # mode "hang": never answers
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
