"""The ``pynomaly`` command: train, detect, list, show, export, import, archive, activate,
delete and quickstart, over :mod:`pynomaly.service`.

Thin on purpose: parse arguments, call the service, format what it returns. Errors are one
line on stderr and exit status 1 (2 for usage errors, 130 on Ctrl-C); ``--debug`` shows the
traceback. The home folder is ``--home``, else ``PYNOMALY_HOME``, else the user data folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

__all__ = ["main"]


# -- progress on a terminal -----------------------------------------------------------------
class _Progress:
    """Progress on stderr: a redrawn one-line display on a terminal; with ``force`` (the
    ``--progress`` option) on any stream too, as plain lines a log keeps (a line per stage
    and at most one every ``every`` seconds within a stage).

    Called as ``progress(stage, fraction_or_None)``; on a terminal a background thread redraws
    it so a long native call (which reports no fraction) still shows the elapsed time.
    """

    def __init__(self, stream=None, force: bool = False, every: float = 5.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = self.tty or force
        self.every = every
        self.stage, self.fraction, self.t0 = "", None, time.monotonic()
        self._last_line = 0.0
        self._stop = threading.Event()
        self._thread = None

    def __call__(self, stage, fraction=None):
        if not self.enabled:
            return
        new_stage = stage != self.stage
        if new_stage:
            self.t0 = time.monotonic()
        self.stage, self.fraction = stage, fraction
        if not self.tty:
            now = time.monotonic()
            if new_stage or now - self._last_line >= self.every or fraction == 1.0:
                self._last_line = now
                self.stream.write(self._line() + "\n")
                self.stream.flush()
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        self._draw()

    def _run(self):
        while not self._stop.wait(0.2):
            self._draw()

    def _line(self) -> str:
        spent = time.monotonic() - self.t0
        if self.fraction is None:
            spin = "|/-\\"[int(spent * 5) % 4] if self.tty else "..."
            return f"{self.stage} {spin} {spent:5.1f}s"
        width = 30
        filled = int(round(width * min(max(self.fraction, 0.0), 1.0)))
        return f"{self.stage} [{'#' * filled}{'.' * (width - filled)}] {100 * self.fraction:3.0f}% {spent:5.1f}s"

    def _draw(self):
        self.stream.write("\r\033[K" + self._line())
        self.stream.flush()

    def close(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.enabled = False  # the command is done: later stages print nothing


# -- argument parsing -----------------------------------------------------------------------
def _parse_param(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param needs KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--param key {key!r} is not a parameter name")
    words = {"true": True, "false": False, "none": None, "null": None}
    if raw.strip().lower() in words:
        return key, words[raw.strip().lower()]
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw  # a plain string, e.g. max_samples=auto


def _columns(text: str):
    return [c.strip() for c in text.split(",") if c.strip()]


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pynomaly",
        description="Train, store and use anomaly detectors (native, PyOD, PyTorch, JAX).",
    )
    p.add_argument("--home", help="repository folder (default: $PYNOMALY_HOME or the user data folder)")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--progress", action="store_true",
                   help="report progress on stderr even when it is not a terminal (as lines, for logs)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a detector on a data file and store it (next version)")
    t.add_argument("--detector", required=True, help="detector name")
    t.add_argument("--data", required=True, help="training data: .csv, .npy, .npz or .parquet")
    t.add_argument("--algorithm", default="IsolationForest", help="registry name (default IsolationForest); "
                   "e.g. LOF, KNN, pyod.ECOD, TorchAutoEncoder, JaxDeepSVDD")
    t.add_argument("--param", action="append", type=_parse_param, default=[], metavar="KEY=VALUE",
                   help="algorithm parameter (repeatable); VALUE is read as JSON when it parses")
    t.add_argument("--columns", type=_columns, help="comma-separated feature columns (names or indices)")
    t.add_argument("--json", action="store_true", help="print the stored detector as JSON")

    d = sub.add_parser("detect", help="score a data file with a stored detector")
    d.add_argument("--detector", required=True, help="name of a stored, active detector")
    d.add_argument("--data", required=True, help="rows to score: .csv, .npy, .npz or .parquet")
    d.add_argument("--version", type=int, help="detector version (default: latest)")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="label rows scoring above this")
    g.add_argument("--contamination", type=float, help="label this share of the rows (0, 0.5]")
    d.add_argument("--output", help="write per-row scores and labels (.csv, .json or .parquet)")
    d.add_argument("--columns", type=_columns, help="comma-separated feature columns (names or indices); default: "
                   "the columns the detector was trained on, by name, when the file has them")
    d.add_argument("--top", type=int, default=5, help="how many top anomalies to print (default 5)")
    d.add_argument("--no-save", action="store_true", help="do not record the result in the repository")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")

    ls = sub.add_parser("list", help="list stored detectors")
    ls.add_argument("--json", action="store_true", help="print the detectors as JSON")

    s = sub.add_parser("show", help="show a detector, its versions and results")
    s.add_argument("name", help="detector name")
    s.add_argument("--json", action="store_true", help="print as JSON")

    e = sub.add_parser("export", help="write a detector version to one self-contained file")
    e.add_argument("name", help="detector name")
    e.add_argument("file", help="the file to write")
    e.add_argument("--version", type=int, help="detector version (default: latest)")

    i = sub.add_parser("import", help="import an exported file as the next version of a detector")
    i.add_argument("file", help="a file written by `pynomaly export`")
    i.add_argument("--name", help="detector name (default: the exported one)")
    i.add_argument("--trust-pickle", action="store_true",
                   help="accept a pickled (PyOD) model signed elsewhere; only for files you trust")

    for verb, text in (("archive", "retire a detector (keeps its versions)"),
                       ("activate", "make an archived detector detect again"),
                       ("delete", "delete a detector with all its versions and results")):
        x = sub.add_parser(verb, help=text, description=text[0].upper() + text[1:] + ".")
        x.add_argument("name", help="detector name")
        if verb == "delete":
            x.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation on a terminal")

    dr = sub.add_parser("doctor", help="check the home folder: database, artifacts, version numbers")
    dr.add_argument("--repair", action="store_true",
                    help="fix what can be fixed without losing anything (orphans go to lost+found/)")
    dr.add_argument("--json", action="store_true", help="print the findings as JSON")

    q = sub.add_parser("quickstart", help="train on the bundled cardio dataset, store, detect, report",
                       description="Train an isolation forest on the bundled cardio dataset (UCI "
                       "Cardiotocography via ODDS), store it in the home folder, detect with it and report.")
    q.add_argument("--detector", default="cardio-quickstart", help="name to store it under (default cardio-quickstart)")

    # Each command's own --help opens with what it does (the line `pynomaly --help` shows).
    for action in sub._choices_actions:
        parser = sub.choices[action.dest]
        if parser.description is None:
            parser.description = action.help[0].upper() + action.help[1:] + "."

    # Faces installed beside the package parse their own options (`pynomaly serve --help`,
    # `pynomaly api --help`); see _FACES.
    for face, text in _FACES.items():
        sv = sub.add_parser(face, help=text, add_help=False)
        sv.add_argument("face_args", nargs=argparse.REMAINDER)
    return p


# -- commands -------------------------------------------------------------------------------
def _fmt_time(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def _table(rows, headers) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _print_result(result, name: str, top: int, out) -> None:
    m = result.metrics
    out.write(
        f"detector {name} v{result.detector_version}: {m['total_samples']} rows, "
        f"{m['anomalies_detected']} anomalies ({100 * m['anomaly_rate']:.1f}%), "
        f"threshold {result.threshold:.6g}, scored in {m['processing_time_ms']:.1f} ms\n"
    )
    shown = result.anomalies[: max(top, 0)]
    if shown:
        out.write("most anomalous rows:\n")
        for idx, score in shown:
            out.write(f"  row {idx}: score {result.scores[idx]:.6g} (scaled {score.value:.3f})\n")


def _cmd_train(args, home, progress, out):
    from . import service

    det = service.train(home, args.detector, args.data, args.algorithm, dict(args.param),
                        columns=args.columns, progress=progress)
    progress.close()
    if args.json:
        out.write(json.dumps(det.to_dict(), indent=2) + "\n")
    else:
        out.write(f"trained {det.name} v{det.version} ({det.algorithm}) on {det.n_features} features; "
                  f"status {det.status.value}\n")


def _cmd_detect(args, home, progress, out):
    from . import service
    from .dataio import check_result_path, write_result

    if args.output:
        check_result_path(args.output)  # before any work or write: the result is not stored twice
    result = service.detect(home, args.detector, args.data, version=args.version, threshold=args.threshold,
                            contamination=args.contamination, columns=args.columns, save=not args.no_save,
                            progress=progress)
    if args.output:
        progress("writing " + str(args.output))
        write_result(args.output, result.scores, result.labels, result.summary())
    progress.close()
    if args.json:
        out.write(json.dumps(result.summary(), indent=2) + "\n")
    else:
        _print_result(result, args.detector, args.top, out)
        if args.output:
            out.write(f"scores and labels written to {args.output}\n")


def _cmd_list(args, home, progress, out):
    from . import service

    dets = service.list_detectors(home)
    if args.json:
        out.write(json.dumps([d.to_dict() for d in dets], indent=2) + "\n")
        return
    if not dets:
        out.write("no detectors yet; train one with: pynomaly train --detector NAME --data FILE\n")
        return
    rows = [(d.name, d.algorithm, d.status.value, d.version, d.n_features or "-", _fmt_time(d.trained_at)) for d in dets]
    out.write(_table(rows, ("NAME", "ALGORITHM", "STATUS", "VERSION", "FEATURES", "TRAINED (UTC)")) + "\n")


def _cmd_show(args, home, progress, out):
    from . import service

    info = service.show(home, args.name)
    if args.json:
        out.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    for key in ("name", "id", "algorithm", "status", "version", "created_at", "trained_at", "n_features", "data_fingerprint"):
        out.write(f"{key:17} {info[key]}\n")
    out.write(f"{'parameters':17} {json.dumps(info['parameters'])}\n")
    if info["feature_names"]:
        out.write(f"{'features':17} {', '.join(info['feature_names'])}\n")
    if info["error"]:
        out.write(f"{'error':17} {info['error']}\n")
    rows = [(v["version"], v["algorithm"], v["format"], v["size"], v["threshold"], v["trained_at"][:19]) for v in info["versions"]]
    if rows:
        out.write("\n" + _table(rows, ("VERSION", "ALGORITHM", "FORMAT", "BYTES", "THRESHOLD", "TRAINED (UTC)")) + "\n")
    if info["results"]:
        out.write(f"\n{len(info['results'])} stored detection result(s); latest: "
                  f"{info['results'][-1]['anomalies_detected']} of {info['results'][-1]['total_samples']} rows flagged\n")


def _cmd_export(args, home, progress, out):
    from . import service

    path = service.export(home, args.name, args.file, args.version)
    out.write(f"exported {args.name} to {path}\n")


def _cmd_import(args, home, progress, out):
    from . import service

    det = service.import_detector(home, args.file, args.name, trust_pickle=args.trust_pickle)
    out.write(f"imported {det.name} v{det.version} ({det.algorithm})\n")


def _cmd_lifecycle(args, home, progress, out):
    from . import service

    if args.command == "delete":
        if not args.yes and sys.stdin.isatty():
            n_versions = len(service.show(home, args.name)["versions"])
            answer = input(f"delete {args.name!r} with its {n_versions} version(s) and results? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                out.write("not deleted\n")
                return
        n = service.delete(home, args.name)
        out.write(f"deleted {args.name} ({n} version(s))\n")
    else:
        det = getattr(service, args.command)(home, args.name)
        out.write(f"{det.name} is now {det.status.value}\n")


def _cmd_quickstart(args, home, progress, out):
    from .quickstart import run

    run(home, args.detector, progress=progress, out=out)


# Commands that live in other packages of the wheel (the package never imports its faces):
# each is found under the `pynomaly.commands` entry point of its name.
_FACES = {
    "serve": "serve stored detectors to local processes over a Unix socket",
    "api": "serve stored detectors over HTTP (Open Inference Protocol v2, detection API; extra: http)",
    "token": "create tokens for the HTTP API (extra: http)",
    "user": "add, list or remove the web pages' users (extra: http)",
}
_FACE_PACKAGES = {"serve": "the daemon", "api": "the HTTP face (pip install 'pynomaly[http]')",
                  "token": "the HTTP face (pip install 'pynomaly[http]')",
                  "user": "the HTTP face (pip install 'pynomaly[http]')"}


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


def _cmd_doctor(args, home, progress, out):
    from . import service

    found = service.doctor(home, repair=args.repair)
    if args.json:
        out.write(json.dumps(found, indent=2) + "\n")
    else:
        problems = {k: v for k, v in found.items() if v and k != "repaired"}
        for key, items in problems.items():
            out.write(f"{key.replace('_', ' ')}: {len(items)}\n")
            for item in items[:20]:
                out.write(f"  {item}\n")
        for action in found["repaired"]:
            out.write(f"repaired: {action}\n")
        if not problems:
            out.write("no problems found\n")
    serious = ("database", "missing_artifacts", "damaged_artifacts", "lost_versions", "version_marks")
    if any(found[k] for k in serious):
        raise SystemExit(1)


_COMMANDS = {
    "serve": _cmd_face,
    "api": _cmd_face,
    "token": _cmd_face,
    "user": _cmd_face,
    "train": _cmd_train,
    "detect": _cmd_detect,
    "list": _cmd_list,
    "show": _cmd_show,
    "export": _cmd_export,
    "import": _cmd_import,
    "archive": _cmd_lifecycle,
    "activate": _cmd_lifecycle,
    "delete": _cmd_lifecycle,
    "quickstart": _cmd_quickstart,
    "doctor": _cmd_doctor,
}


def _parse(argv):
    """Parse the command line; everything after a face's name (serve, api, token) goes to the
    face untouched (argparse would otherwise claim options such as --help for itself)."""
    parser = _build_parser()
    for i, word in enumerate(argv):
        if word in _FACES:
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
    progress = _Progress(force=args.progress)
    try:
        _COMMANDS[args.command](args, home, progress, sys.stdout)
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
        from ._errors import PynomalyError

        kind = "error" if isinstance(e, (PynomalyError, OSError, ValueError)) else f"unexpected {type(e).__name__}"
        msg = str(e) or type(e).__name__
        sys.stderr.write(f"pynomaly: {kind}: {msg.splitlines()[0] if msg else ''}\n")
        if not isinstance(e, (PynomalyError, OSError, ValueError)):
            sys.stderr.write("pynomaly: rerun with --debug for the traceback\n")
        return 1
    finally:
        progress.close()


if __name__ == "__main__":
    sys.exit(main())
