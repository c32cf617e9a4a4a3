"""``python -m lab.apiserver --etcd-endpoints URL --listen HOST:PORT``: serve until SIGTERM / SIGINT.

Does I/O (listens on HOST:PORT, talks to etcd).
"""
from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from lab.apiserver.server import build_app


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdecimal():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.apiserver", description=__doc__)
    parser.add_argument("--etcd-endpoints", required=True,
                        help="etcd client URL (http://HOST:PORT; the first of a list is used)")
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 6443),
                        help="HOST:PORT to serve plain HTTP on (default 127.0.0.1:6443)")
    parser.add_argument("--bookmark-interval", type=float, default=5.0,
                        help="seconds between watch bookmarks (default 5)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen
    app = build_app(args.etcd_endpoints, bookmark_interval=args.bookmark_interval)
    # Open watches would hold a graceful shutdown for a minute by default: clients re-watch anyway.
    web.run_app(app, host=host, port=port, print=None, shutdown_timeout=1.0,
                access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
