"""`turnproof proxy ...` commands (wired into the main CLI as its `proxy` group).

Every mistake in the command line is one line and exit 2, as argparse does for its own.
"""

from __future__ import annotations

import argparse
import sys

from harness.proxy.addresses import is_loopback
from harness.proxy.server import serve_forever

EXIT_USAGE = 2


def add_commands(parser: argparse.ArgumentParser) -> None:
    """The proxy's subcommands, on `parser` (this module's own, or the main CLI's `proxy`)."""
    commands = parser.add_subparsers(dest="proxy_command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the Toxiproxy HTTP API in the foreground")
    serve.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=8474, help="API port (default 8474)")
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow non-loopback addresses for the API and for proxy listeners",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnproof proxy", description="Toxiproxy-compatible proxy server of the harness."
    )
    add_commands(parser)
    return parser


def port_number(text: str) -> int:
    """A TCP port for argparse: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0 to 65535)")
    return port


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for usage errors, as argparse does)."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the parsed `proxy` command."""
    if not args.allow_remote and not is_loopback(args.host):
        print(
            f"turnproof proxy serve: refusing to listen on non-loopback address {args.host!r}; "
            "pass --allow-remote to expose the proxy API and its proxies on the network",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        serve_forever(args.host, args.port, args.allow_remote)
    except OSError as exc:
        print(
            f"turnproof proxy serve: cannot listen on {args.host}:{args.port}: "
            f"{exc.strerror or exc}; choose another --port (or --host)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
