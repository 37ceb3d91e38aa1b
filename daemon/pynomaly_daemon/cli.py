"""Command line of the daemon: ``python -m pynomaly_daemon`` and ``pynomaly serve`` share it
(``pynomaly serve`` finds it through the ``pynomaly.commands`` entry point)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from pynomaly import PynomalyError, service

from .config import build_parser, config_from_args
from .server import Daemon
from pynomaly.serving import FolderSource, RepositorySource

__all__ = ["main", "build_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Start the daemon for parsed arguments and block until it has drained; returns the exit code."""
    logging.basicConfig(
        level=getattr(logging, args.log_level), stream=sys.stderr,
        format="%(asctime)s pynomaly-daemon %(levelname)s %(message)s",
    )
    config = config_from_args(args)
    if args.models:
        source = FolderSource(args.models, trust_pickle=config.trust_pickle)
    else:
        if config.trust_pickle:
            raise SystemExit("pynomaly daemon: --trust-pickle applies to --models folders only")
        # An encrypted home's key: --key-file/--key-command, else the environment as the CLI
        # reads it. Checked now, so a missing or wrong key stops the start with its reason
        # rather than failing each request.
        if config.key_file:
            os.environ["PYNOMALY_KEY_FILE"] = config.key_file
        if config.key_command:
            os.environ["PYNOMALY_KEY_COMMAND"] = config.key_command
        try:
            service.check_key(args.home)
        except PynomalyError as e:
            raise SystemExit(f"pynomaly daemon: {e}") from None
        source = RepositorySource(args.home)
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
