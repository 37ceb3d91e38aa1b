"""The commands of faces installed beside the package: ``pynomaly serve`` (the daemon),
``pynomaly api``, ``token`` and ``user`` (the HTTP face). The package never imports its faces:
each is found under the ``pynomaly.commands`` entry point of its name and parses its own
options (``pynomaly serve --help``)."""

from __future__ import annotations

import argparse

FACES = {
    "serve": "serve stored detectors to local processes over a Unix socket",
    "api": "serve stored detectors over HTTP (Open Inference Protocol v2, detection API; extra: http)",
    "token": "create tokens for the HTTP API (extra: http)",
    "user": "add, list or remove the web pages' users (extra: http)",
}
_FACE_PACKAGES = {"serve": "the daemon", "api": "the HTTP face (pip install 'pynomaly[http]')",
                  "token": "the HTTP face (pip install 'pynomaly[http]')",
                  "user": "the HTTP face (pip install 'pynomaly[http]')"}


def add_faces(sub):
    """The faces' parsers take every word after their name as it is (see ``pynomaly.cli._parse``)."""
    for face, text in FACES.items():
        sv = sub.add_parser(face, help=text, add_help=False)
        sv.add_argument("face_args", nargs=argparse.REMAINDER)


def _cmd_face(args, home, progress, out):
    from importlib.metadata import entry_points

    found = entry_points(group="pynomaly.commands", name=args.command)
    if not found:
        raise SystemExit(f"pynomaly: {_FACE_PACKAGES[args.command]} is not installed "
                         f"(no {args.command!r} in the pynomaly.commands entry points)")
    run = next(iter(found)).load()
    argv = list(args.face_args)
    if home and "--home" not in argv and "--models" not in argv:
        argv = ["--home", home, *argv] if args.command in ("token", "user") else [*argv, "--home", home]
    code = run(argv, prog=f"pynomaly {args.command}")
    if code:
        raise SystemExit(code)


COMMANDS = {face: _cmd_face for face in FACES}
