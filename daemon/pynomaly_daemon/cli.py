"""Command line of the daemon: ``python -m pynomaly_daemon`` and ``pynomaly serve`` share it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from .server import Config, Daemon, default_socket_path
from .sources import FolderSource, RepositorySource


def build_parser(prog: str = "python -m pynomaly_daemon") -> argparse.ArgumentParser:
    """The daemon's options; ``pynomaly serve`` can reuse it as a subcommand parser's parent."""
    d = Config(socket_path="")
    p = argparse.ArgumentParser(prog=prog, description="Serve stored pynomaly detectors over a Unix socket.")
    p.add_argument("--socket", default=None, help=f"socket path (default {default_socket_path()})")
    p.add_argument("--home", default=None, help="repository home folder (default: $PYNOMALY_HOME, else the user's data dir)")
    p.add_argument("--models", default=None, metavar="DIR",
                   help="serve model files DIR/<name>/<version>.pnm instead of the repository")
    p.add_argument("--group", default=None, help="also let this group connect (socket mode 0660 instead of 0600)")
    p.add_argument("--allow-uid", type=int, action="append", default=None, metavar="UID",
                   help="accept only peers with this uid (SO_PEERCRED); repeatable")
    p.add_argument("--max-frame-mb", type=float, default=d.max_frame / 2**20)
    p.add_argument("--max-connections", type=int, default=d.max_connections)
    p.add_argument("--max-in-flight", type=int, default=d.max_in_flight, help="requests being worked on, all clients")
    p.add_argument("--max-in-flight-rows", type=int, default=d.max_in_flight_rows)
    p.add_argument("--max-rx-mb", type=float, default=d.max_rx_bytes / 2**20,
                   help="memory for large frames being received, all clients together")
    p.add_argument("--conn-max-in-flight", type=int, default=d.conn_max_in_flight,
                   help="per connection; reading from it pauses above this")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout, help="seconds")
    p.add_argument("--frame-timeout", type=float, default=d.frame_timeout, help="seconds to complete a started frame")
    p.add_argument("--write-timeout", type=float, default=d.write_timeout, help="seconds a client may leave replies unread")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout, help="seconds to drain after SIGTERM")
    p.add_argument("--coalesce-window-ms", type=float, default=d.coalesce_window * 1000,
                   help="wait this long to coalesce small requests (0: within one event-loop iteration)")
    p.add_argument("--coalesce-rows", type=int, default=d.coalesce_rows, help="requests with more rows are not coalesced")
    p.add_argument("--no-fast-path", dest="fast_path", action="store_false",
                   help="serve every request through the Python path (the native one answers the same, sooner)")
    p.add_argument("--inline-rows", type=int, default=d.inline_rows,
                   help="batches with more rows are scored in the thread pool")
    p.add_argument("--idle-inline-rows", type=int, default=d.idle_inline_rows,
                   help="when nothing else is in flight, requests up to this many rows skip the thread pool")
    p.add_argument("--split-rows", type=int, default=d.split_rows,
                   help="large requests are scored in chunks of at least this many rows, in parallel")
    p.add_argument("--refresh-interval", type=float, default=d.refresh_interval,
                   help="seconds between checks for a newer version of a served detector")
    p.add_argument("--cache-mb", type=float, default=d.cache_bytes / 2**20)
    p.add_argument("--workers", type=int, default=d.workers, help="scoring threads")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def config_from_args(a: argparse.Namespace) -> Config:
    return Config(
        socket_path=os.path.abspath(a.socket or default_socket_path()),
        socket_group=a.group,
        allowed_uids=frozenset(a.allow_uid) if a.allow_uid else None,
        max_frame=int(a.max_frame_mb * 2**20),
        max_connections=a.max_connections,
        max_in_flight=a.max_in_flight,
        max_in_flight_rows=a.max_in_flight_rows,
        max_rx_bytes=int(a.max_rx_mb * 2**20),
        conn_max_in_flight=a.conn_max_in_flight,
        idle_timeout=a.idle_timeout,
        frame_timeout=a.frame_timeout,
        write_timeout=a.write_timeout,
        drain_timeout=a.drain_timeout,
        coalesce_window=a.coalesce_window_ms / 1000.0,
        coalesce_rows=a.coalesce_rows,
        inline_rows=a.inline_rows,
        fast_path=a.fast_path,
        split_rows=a.split_rows,
        idle_inline_rows=a.idle_inline_rows,
        refresh_interval=a.refresh_interval,
        cache_bytes=int(a.cache_mb * 2**20),
        workers=a.workers,
    )


def run(args: argparse.Namespace) -> int:
    """Start the daemon for parsed arguments and block until it has drained; returns the exit code."""
    logging.basicConfig(
        level=getattr(logging, args.log_level), stream=sys.stderr,
        format="%(asctime)s pynomaly-daemon %(levelname)s %(message)s",
    )
    config = config_from_args(args)
    source = FolderSource(args.models) if args.models else RepositorySource(args.home)
    daemon = Daemon(source, config)
    try:
        import uvloop  # Linux dependency; elsewhere the default loop serves
    except ImportError:
        import asyncio

        asyncio.run(daemon.serve())
    else:
        uvloop.run(daemon.serve())
    return 0


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m pynomaly_daemon") -> int:
    """Entry point of ``python -m pynomaly_daemon``; ``pynomaly serve`` calls
    ``main(argv, prog="pynomaly serve")`` with the arguments after ``serve``.

    Blocks until SIGTERM/SIGINT has drained the daemon; returns the exit status (0, or 1 with
    one line on stderr when it cannot start, e.g. another daemon holds the socket).
    """
    args = build_parser(prog).parse_args(argv)
    try:
        return run(args)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 1
        raise
