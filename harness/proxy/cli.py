"""`turnproof proxy ...` commands (wired into the main CLI as its `proxy` group)."""

from __future__ import annotations

import argparse
import sys

from harness.proxy.addresses import is_loopback
from harness.proxy.server import serve_forever


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnproof proxy", description="Toxiproxy-compatible proxy server of the harness."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the Toxiproxy HTTP API in the foreground")
    serve.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8474, help="API port (default 8474)")
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow non-loopback addresses for the API and for proxy listeners",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for usage errors, as argparse does)."""
    args = build_parser().parse_args(argv)
    if not args.allow_remote and not is_loopback(args.host):
        print(
            f"turnproof proxy serve: refusing to listen on non-loopback address {args.host!r}; "
            "pass --allow-remote to expose the proxy API and its proxies on the network",
            file=sys.stderr,
        )
        return 2
    try:
        serve_forever(args.host, args.port, args.allow_remote)
    except OSError as exc:
        print(
            f"turnproof proxy serve: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
