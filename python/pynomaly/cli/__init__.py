"""The ``pynomaly`` command: train, detect, stream, list, show, export, import, archive, activate,
delete, quickstart, init, keys, audit, jobs, alerts and worker, over :mod:`pynomaly.service`.
One module per group of commands (:mod:`.detectors`, :mod:`.keys`, :mod:`.jobs`,
:mod:`.alerts`, :mod:`.quickstart`, :mod:`.faces`), each with its parsers and a ``COMMANDS``
table; this one assembles the parser and runs a command.

Every state-changing command (and one refused for a missing or wrong key) is recorded in the
home's audit trail with its outcome (:func:`pynomaly.service.audit_record`).

Thin on purpose: parse arguments, call the service, format what it returns. Errors are one
line on stderr and exit status 1 (2 for usage errors, 130 on Ctrl-C); ``--debug`` shows the
traceback. The home is ``--home``, else ``PYNOMALY_HOME``, else the user data folder; a home
is a folder or a PostgreSQL URL (``postgresql://user@host/db?host=/socket/dir&port=N``), and
every command works on either (``init --encrypt`` only on a folder).
"""

from __future__ import annotations

import argparse
import sys

from pynomaly.cli import alerts, detectors, drift, faces, jobs, keys, quickstart
from pynomaly.cli._common import Progress

__all__ = ["main"]

# The commands' parsers in the order `pynomaly --help` lists them.
_PARSERS = (
    detectors.add_train, detectors.add_detect, detectors.add_explain, detectors.add_stream, detectors.add_list, detectors.add_show,
    detectors.add_export, detectors.add_import, keys.add_init, keys.add_keys, keys.add_audit, detectors.add_lifecycle, keys.add_doctor,
    quickstart.add_quickstart, jobs.add_jobs, jobs.add_worker, alerts.add_alerts, drift.add_drift,
)
_COMMANDS = {**detectors.COMMANDS, **keys.COMMANDS, **quickstart.COMMANDS, **jobs.COMMANDS, **alerts.COMMANDS,
             **faces.COMMANDS, **drift.COMMANDS}


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pynomaly",
        description="Train, store and use anomaly detectors (native, PyOD, PyTorch, JAX).",
    )
    p.add_argument("--home", help="repository folder, or a PostgreSQL URL postgresql://user@host/db "
                                  "(default: $PYNOMALY_HOME or the user data folder)")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--progress", action="store_true",
                   help="report progress on stderr even when it is not a terminal (as lines, for logs)")
    p.add_argument("--key-file", metavar="PATH",
                   help="an encrypted home's key-encryption key: a file (mode 0600, outside the home) holding the "
                        "base64 of 32 random bytes (default: $PYNOMALY_KEY_FILE, $PYNOMALY_KEY_COMMAND, $PYNOMALY_KEY)")
    p.add_argument("--key-command", metavar="CMD",
                   help="a command that prints the key-encryption key (e.g. a KMS or systemd-creds call)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _PARSERS:
        add(sub)

    # Each command's own --help opens with what it does (the line `pynomaly --help` shows).
    for action in sub._choices_actions:
        parser = sub.choices[action.dest]
        if parser.description is None:
            parser.description = action.help[0].upper() + action.help[1:] + "."

    faces.add_faces(sub)  # after the loop above: their --help is their own
    return p


# What each state-changing command records in the audit trail: the action and its target.
def _audited(args):
    c = args.command
    if c == "train":
        return "train", args.detector
    if c == "detect" and not args.no_save:
        return "detect", args.detector
    if c in ("archive", "activate", "delete"):
        return c, args.name
    if c == "export":
        return "export", f"{args.name} -> {args.file}"
    if c == "import":
        return "import", f"{args.file} -> {args.name or '(its own name)'}"
    if c == "init" and args.encrypt:
        return "init.encrypt", ""
    if c == "keys":
        return f"keys.{args.keys_command}", ""
    if c == "doctor" and args.repair:
        return "doctor.repair", ""
    if c == "alerts" and args.alerts_command in ("add", "remove", "approve"):
        return f"alerts.{args.alerts_command}", getattr(args, "rule", None) or args.detector
    if c == "drift" and args.set_reference:
        return "drift.set_reference", args.detector
    if c == "quickstart":  # a throwaway home has no trail worth keeping (nor a default one to create)
        return ("train", args.detector) if quickstart.keeps_detector(args.home) else None
    return None


def _record(args, home, outcome: str) -> None:
    """Append the command's audit entry; a home that cannot take it gets a warning, not a failure."""
    what = _audited(args)
    if what is None:
        return
    from pynomaly import service

    try:
        import socket

        service.audit_record(home, action=what[0], target=what[1], origin=f"cli host={socket.gethostname()}",
                             outcome=outcome)
    except Exception as e:  # noqa: BLE001 - the command's own outcome stands
        sys.stderr.write(f"pynomaly: warning: not recorded in the audit trail: {e}\n")


class _KeyEnv:
    """``--key-file``/``--key-command`` for the length of one command: set in the environment,
    where every repository the command opens (and a daemon it starts) finds them."""

    def __init__(self, args):
        self.set = {}
        if args.key_file and args.key_command:
            raise SystemExit("pynomaly: give either --key-file or --key-command, not both")
        if args.key_file:
            self.set = {"PYNOMALY_KEY_FILE": args.key_file, "PYNOMALY_KEY_COMMAND": None, "PYNOMALY_KEY": None}
        elif args.key_command:
            self.set = {"PYNOMALY_KEY_COMMAND": args.key_command, "PYNOMALY_KEY_FILE": None, "PYNOMALY_KEY": None}

    def __enter__(self):
        import os

        self.old = {k: os.environ.get(k) for k in self.set}
        for k, v in self.set.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def __exit__(self, *exc):
        import os

        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _parse(argv):
    """Parse the command line; everything after a face's name (serve, api, token) goes to the
    face untouched (argparse would otherwise claim options such as --help for itself)."""
    parser = _build_parser()
    for i, word in enumerate(argv):
        if word in faces.FACES:
            try:
                args, rest = parser.parse_known_args(argv[: i + 1])
            except SystemExit:
                break
            if args.command == word and not rest:
                args.face_args = argv[i + 1 :]
                return args
            break
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (also used as ``sys.exit`` code)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    home = args.home if args.home else None
    progress = Progress(force=args.progress)
    try:
        with _KeyEnv(args):
            try:
                _COMMANDS[args.command](args, home, progress, sys.stdout)
            except SystemExit as e:
                _record(args, home, "ok" if e.code in (None, 0) else f"error: exit status {e.code}")
                raise
            except BaseException as e:
                _record(args, home, f"error: {(str(e) or type(e).__name__).splitlines()[0][:200]}")
                raise
            _record(args, home, "ok")
        return 0
    except BrokenPipeError:  # e.g. `pynomaly list | head -1`: the reader left, not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        progress.close()
        if args.debug:
            raise
        sys.stderr.write("pynomaly: interrupted\n")
        return 130
    except Exception as e:  # one clear line, unless --debug
        progress.close()
        if args.debug:
            raise
        from pynomaly._errors import PynomalyError

        kind = "error" if isinstance(e, (PynomalyError, OSError, ValueError)) else f"unexpected {type(e).__name__}"
        msg = str(e) or type(e).__name__
        sys.stderr.write(f"pynomaly: {kind}: {msg.splitlines()[0] if msg else ''}\n")
        if not isinstance(e, (PynomalyError, OSError, ValueError)):
            sys.stderr.write("pynomaly: rerun with --debug for the traceback\n")
        return 1
    finally:
        progress.close()
