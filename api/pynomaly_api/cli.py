"""``pynomaly api`` (the HTTP server) and ``pynomaly token`` (tokens for it): the commands the
``pynomaly`` CLI finds through the ``pynomaly.commands`` entry points."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Optional, Sequence

from .settings import ENV, Settings


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?", text.strip().lower())
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 64M, 2G, 1048576)")
    return int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2)])


def _public_key(text: str):
    kid, sep, path = text.partition("=")
    if not sep:
        from pathlib import Path

        kid, path = Path(text).stem, text
    return kid, path


def build_parser(prog: str = "pynomaly api") -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve stored detectors over HTTP: the Open Inference Protocol v2 (/v2/...) and the "
        "detection API (/api/v1/..., OpenAPI schema at /openapi.json). Clients send 'Authorization: Bearer <token>' "
        "(pynomaly token create); health endpoints are open.",
    )
    p.add_argument("--home", help="repository folder (default: $PYNOMALY_HOME or the user data folder)")
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port})")
    p.add_argument("--uds", help="listen on this Unix socket instead of host:port")
    p.add_argument("--workers", type=int, default=d.workers, help="server processes (default 1)")
    p.add_argument("--no-auth", action="store_true",
                   help="check no tokens: every caller is admin (refused off loopback, see --allow-open-network)")
    p.add_argument("--allow-open-network", action="store_true",
                   help="allow --no-auth on a non-loopback address (only behind something that authenticates)")
    p.add_argument("--jwt-public-key", action="append", type=_public_key, default=[], metavar="[KID=]PEM",
                   help="accept tokens signed by this identity provider key (RS256, ES256/384/512, EdDSA); "
                   "repeatable; the kid defaults to the file's name without extension")
    p.add_argument("--jwt-issuer", default=d.issuer, help=f"required iss claim (default {d.issuer})")
    p.add_argument("--jwt-audience", default=d.audience, help=f"required aud claim (default {d.audience})")
    p.add_argument("--jwt-role-claim", default=d.role_claim, help="claim holding the role (default role)")
    p.add_argument("--max-body", type=_size, default=d.max_body_bytes, metavar="SIZE",
                   help="largest request body accepted, e.g. 64M (default 256M)")
    p.add_argument("--max-dataset", type=_size, default=d.max_dataset_bytes, metavar="SIZE",
                   help="largest uploaded table once read (as float64 values), e.g. 1G (default 256M); "
                        "checked from the file's headers before reading")
    p.add_argument("--max-dataset-columns", type=int, default=d.max_dataset_columns, metavar="N",
                   help=f"most columns an uploaded table may have (default {d.max_dataset_columns})")
    p.add_argument("--upload-dir", default=None, metavar="DIR",
                   help="where uploads wait while they are read (default: the system temp folder)")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, metavar="SECONDS",
                   help=f"answer 504 after this long (default {d.request_timeout_s:g})")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout_s, metavar="SECONDS",
                   help="close a connection whose request head is not complete this long after it opened or "
                   f"after its last response (default {d.header_timeout_s:g})")
    p.add_argument("--max-client-connections", type=int, default=d.max_client_connections, metavar="N",
                   help=f"open connections per client address and process (default {d.max_client_connections}; "
                   "0: no cap, e.g. behind a proxy that caps its clients)")
    p.add_argument("--cache", type=_size, default=d.cache_bytes, metavar="SIZE",
                   help="memory for loaded detectors (default 2G)")
    p.add_argument("--threads", type=int, default=d.threads, help="scoring threads (default: one per CPU)")
    p.add_argument("--job-workers", type=int, default=d.job_workers, metavar="N",
                   help="background-job workers in each server process (default 1; 0 leaves the jobs to `pynomaly worker`)")
    p.add_argument("--checkpoint-seconds", type=float, default=d.checkpoint_seconds, metavar="SECONDS",
                   help="save a learning streaming detector as a new version this often (default 60)")
    p.add_argument("--checkpoint-records", type=int, default=d.checkpoint_records, metavar="N",
                   help="... or after it learned this many records (default 100000)")
    p.add_argument("--checkpoint-keep", type=int, default=d.checkpoint_keep, metavar="N",
                   help="checkpoint versions kept per detector (default 5; trained versions are never deleted)")
    p.add_argument("--learner-lease-seconds", type=float, default=d.learner_lease_seconds, metavar="SECONDS",
                   help="one process learns a detector per home: its lease lapses this long after its last renewal "
                        "(e.g. after a crash), and another process may learn it then (default 30)")
    p.add_argument("--no-drift", action="store_true",
                   help="do not count the rows this server scores in the detectors' drift windows (pynomaly drift "
                        "still reads what other processes count)")
    p.add_argument("--key-file", help="an encrypted home's key file (default: $PYNOMALY_KEY_FILE, $PYNOMALY_KEY)")
    p.add_argument("--key-command", help="a command that prints an encrypted home's key (e.g. a KMS call)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log level (default info)")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        home=args.home, host=args.host, port=args.port, uds=args.uds, workers=args.workers, auth=not args.no_auth,
        allow_open_network=args.allow_open_network, public_keys=dict(args.jwt_public_key), issuer=args.jwt_issuer,
        audience=args.jwt_audience, role_claim=args.jwt_role_claim, max_body_bytes=args.max_body,
        max_dataset_bytes=args.max_dataset, max_dataset_columns=args.max_dataset_columns, upload_dir=args.upload_dir,
        request_timeout_s=args.request_timeout, cache_bytes=args.cache, threads=args.threads,
        job_workers=args.job_workers, header_timeout_s=args.header_timeout,
        max_client_connections=args.max_client_connections, checkpoint_seconds=args.checkpoint_seconds,
        checkpoint_records=args.checkpoint_records, checkpoint_keep=args.checkpoint_keep,
        learner_lease_seconds=args.learner_lease_seconds, drift=not args.no_drift,
    ).check()


def main(argv: Optional[Sequence[str]] = None, prog: str = "pynomaly api") -> int:
    """Run the HTTP server until SIGINT/SIGTERM; returns the exit code."""
    import os

    try:
        import uvicorn
    except ImportError:
        sys.stderr.write(f"{prog}: the HTTP extra is not installed: pip install 'pynomaly[http]'\n")
        return 2
    args = build_parser(prog).parse_args(argv)
    try:
        settings = settings_from_args(args)
        # An encrypted home's key, as the daemon takes it: passed to the workers through the
        # environment the CLI reads, and checked now, so that a missing or wrong key stops the
        # start with its reason instead of failing each request.
        if args.key_file:
            os.environ["PYNOMALY_KEY_FILE"] = args.key_file
        if args.key_command:
            os.environ["PYNOMALY_KEY_COMMAND"] = args.key_command
        from pynomaly import service as _service

        _service.check_key(settings.home)
        if settings.auth:
            from .tokens import ensure_secret
            from pynomaly import service

            ensure_secret(service.home_path(settings.home))  # before the workers start: one secret for all
    except Exception as e:  # noqa: BLE001 - one clear line
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    os.environ[ENV] = settings.to_env()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from . import guard

    # Slow heads, idle keep-alives and one address's many connections are closed (guard), so
    # that slow clients cannot hold every file descriptor (README: the descriptor limit to set).
    uvicorn.run(
        "pynomaly_api.app:create_app", factory=True, host=settings.host, port=settings.port, uds=settings.uds,
        workers=settings.workers, log_level=args.log_level, access_log=False, server_header=False,
        timeout_keep_alive=min(5.0, settings.header_timeout_s), timeout_graceful_shutdown=30,
        h11_max_incomplete_event_size=guard.MAX_HEAD_BYTES,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http=guard.protocol("httptools" if _has("httptools") else "h11"),
    )
    return 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- pynomaly token ---------------------------------------------------------------------------
def token_parser(prog: str = "pynomaly token") -> argparse.ArgumentParser:
    from .tokens import ROLES

    p = argparse.ArgumentParser(prog=prog, description="Tokens for the HTTP API (signed with the home's secret).")
    p.add_argument("--home", help="repository folder (default: $PYNOMALY_HOME or the user data folder)")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("create", help="create a token and print it (alone on the last line)")
    c.add_argument("--user", required=True, help="who the token is for (its subject)")
    c.add_argument("--role", required=True, choices=ROLES, help="viewer | operator | admin")
    c.add_argument("--ttl", default="24h", help="lifetime, e.g. 15m, 24h, 30d (default 24h)")
    c.add_argument("--issuer", default=Settings.issuer, help="iss claim (default: the server's default)")
    c.add_argument("--audience", default=Settings.audience, help="aud claim (default: the server's default)")
    r = sub.add_parser("rotate", help="add a new signing secret; --retire old ones (their tokens stop working)")
    r.add_argument("--retire", action="append", default=[], metavar="KID", help="secret to remove (repeatable)")
    sub.add_parser("keys", help="list the signing secrets' ids (never the secrets)")
    v = sub.add_parser("revoke", help="refuse a token (or every token of a user) from now on; running servers "
                       "refuse it within a second")
    which = v.add_mutually_exclusive_group(required=True)
    which.add_argument("token", nargs="?", metavar="TOKEN_OR_ID", help="the whole token, or its id (jti)")
    which.add_argument("--user", help="revoke every token and session of this user issued until now")
    return p


def token_main(argv: Optional[Sequence[str]] = None, prog: str = "pynomaly token") -> int:
    from pynomaly import service

    from . import tokens

    args = token_parser(prog).parse_args(argv)
    try:
        home = service.home_path(args.home)
        if args.action == "create":
            what = ("token.create", f"{args.user} ({args.role})")
            try:
                token, expires = tokens.create_token(home, args.user, args.role, tokens.parse_ttl(args.ttl),
                                                     issuer=args.issuer, audience=args.audience)
            except Exception as e:
                _audit(home, *what, f"error: {e}")
                raise
            _audit(home, *what, "ok", {"ttl": args.ttl})
            sys.stdout.write(f"# {args.role} token for {args.user}, expires {expires.isoformat()}\n{token}\n")
        elif args.action == "rotate":
            kids = tokens.rotate(home, args.retire)
            _audit(home, "token.rotate", kids[-1], "ok", {"retired": list(args.retire)})
            sys.stdout.write(f"signing with {kids[-1]}; also accepted: {', '.join(kids[:-1]) or 'none'}\n")
        elif args.action == "revoke":
            from pynomaly.store import revocations

            if args.user is not None:
                revocations.revoke_subject(home, args.user)
                _audit(home, "token.revoke", f"user {args.user}", "ok")
                sys.stdout.write(f"revoked every token of {args.user} issued until now\n")
            else:
                jti, expires = tokens.token_id(args.token)
                revocations.revoke_token(home, jti, expires)
                _audit(home, "token.revoke", jti, "ok")
                sys.stdout.write(f"revoked token {jti}\n")
        else:
            for k in tokens.read_secrets(home):
                sys.stdout.write(f"{k['kid']}  created {k['created']}\n")
        return 0
    except Exception as e:  # noqa: BLE001 - one clear line
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 1


def _audit(home, action: str, target: str, outcome: str, detail=None) -> None:
    import socket

    from pynomaly import service

    service.audit_record(home, action=action, target=target, origin=f"cli host={socket.gethostname()}",
                         outcome=outcome, detail=detail)


# -- pynomaly user ----------------------------------------------------------------------------
def user_parser(prog: str = "pynomaly user") -> argparse.ArgumentParser:
    from .tokens import ROLES

    p = argparse.ArgumentParser(prog=prog, description="Users who sign in to the web pages with a password "
                                "(stored scrypt-hashed in the home folder, mode 0600).")
    p.add_argument("--home", help="repository folder (default: $PYNOMALY_HOME or the user data folder)")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = sub.add_parser("add", help="add a user, or set an existing one's role and password")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLES, help="viewer | operator | admin")
    a.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input's first line (for scripts) instead of asking")
    sub.add_parser("list", help="list users and their roles (never their passwords)")
    r = sub.add_parser("remove", help="remove a user and revoke their sessions and tokens")
    r.add_argument("name")
    return p


def user_main(argv: Optional[Sequence[str]] = None, prog: str = "pynomaly user") -> int:
    import getpass

    from pynomaly import service

    from . import sessions

    args = user_parser(prog).parse_args(argv)
    try:
        home = service.home_path(args.home)
        if args.action == "add":
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
            elif not sys.stdin.isatty():
                # getpass would read the password from a pipe, or fail on an empty one with no words.
                raise ValueError("no terminal to ask for the password on; pass it on standard input with "
                                 f"--password-stdin, e.g. `printf '%s\\n' \"$PASSWORD\" | {prog} add "
                                 f"{args.name} --role {args.role} --password-stdin`")
            else:
                password = getpass.getpass(f"password for {args.name}: ")
                if getpass.getpass("again: ") != password:
                    raise ValueError("the passwords differ")
            sessions.add_user(home, args.name, args.role, password)
            sys.stdout.write(f"{args.name} can sign in as {args.role}\n")
        elif args.action == "list":
            for name, u in sorted(sessions.read_users(home).items()):
                sys.stdout.write(f"{name}  {u['role']}  added {u['created']}\n")
        else:
            from pynomaly.store import revocations

            sessions.remove_user(home, args.name)
            # Their open sessions (and API tokens in their name) stop working on every server.
            revocations.revoke_subject(home, args.name)
            sys.stdout.write(f"removed {args.name}; their sessions and tokens are revoked\n")
        return 0
    except Exception as e:  # noqa: BLE001 - one clear line
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 1
