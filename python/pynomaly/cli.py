"""The ``pynomaly`` command: train, detect, list, show, export, import, archive, activate,
delete, quickstart, init, keys, audit, jobs, alerts and worker, over :mod:`pynomaly.service`,
:mod:`pynomaly.jobs` and :mod:`pynomaly.alerts`.

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

    t = sub.add_parser("train", help="train a detector on a data file and store it (next version)")
    t.add_argument("--detector", required=True, help="detector name")
    t.add_argument("--data", required=True, help="training data: .csv, .npy, .npz or .parquet")
    t.add_argument("--algorithm", default="IsolationForest", help="registry name (default IsolationForest); "
                   "e.g. LOF, KNN, pyod.ECOD, TorchAutoEncoder, JaxDeepSVDD")
    t.add_argument("--param", action="append", type=_parse_param, default=[], metavar="KEY=VALUE",
                   help="algorithm parameter (repeatable); VALUE is read as JSON when it parses")
    t.add_argument("--columns", type=_columns, help="comma-separated feature columns (names or indices)")
    t.add_argument("--json", action="store_true", help="print the stored detector as JSON")
    t.add_argument("--background", action="store_true",
                   help="queue the training as a job and print its id at once (run by `pynomaly worker`)")

    d = sub.add_parser("detect", help="score a data file with a stored detector")
    d.add_argument("--detector", required=True, help="name of a stored, active detector")
    d.add_argument("--data", required=True, help="rows to score: .csv, .npy, .npz or .parquet")
    d.add_argument("--version", type=int, help="detector version (default: latest)")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="label rows scoring above this")
    g.add_argument("--contamination", type=float, help="label this share of the rows (0, 0.5]")
    d.add_argument("--output", help="write per-row scores and labels (.csv, .json or .parquet)")
    d.add_argument("--columns", type=_columns, help="comma-separated feature columns (names or indices); default: "
                   "the columns the detector was trained on, by name; a header lacking some of them is refused "
                   "(indices read a file by position)")
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
    e.add_argument("--export-key-file", metavar="PATH",
                   help="encrypt the file to this key (base64 of 32 bytes; created, mode 0600, if absent); "
                        "required for a detector of an encrypted home")

    i = sub.add_parser("import", help="import an exported file as the next version of a detector")
    i.add_argument("file", help="a file written by `pynomaly export`")
    i.add_argument("--name", help="detector name (default: the exported one)")
    i.add_argument("--trust-pickle", action="store_true",
                   help="accept a pickled (PyOD) model signed elsewhere; only for files you trust")
    i.add_argument("--export-key-file", metavar="PATH", help="the key an encrypted export file was written to")

    n = sub.add_parser("init", help="create the home folder; --encrypt makes it an encrypted one")
    n.add_argument("--encrypt", action="store_true",
                   help="seal models, results and sensitive fields with a data key wrapped by the key-encryption key "
                        "(--key-file PATH, created if absent; --key-command CMD; or $PYNOMALY_KEY)")

    k = sub.add_parser("keys", help="key rotation of an encrypted home")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION",
                            help="rotate: a new key-encryption key; reencrypt: a new data key")
    kr = ksub.add_parser("rotate", help="wrap the data key with a new key-encryption key (no data is rewritten)",
                         description="Wrap the data key with a new key-encryption key; no data is rewritten. "
                                     "Needs the current key (--key-file, --key-command or $PYNOMALY_KEY) and the new one.")
    kr.add_argument("--new-key-file", metavar="PATH", help="the new key's file (created, mode 0600, if absent)")
    kr.add_argument("--new-key-command", metavar="CMD", help="a command printing the new key")
    ksub.add_parser("reencrypt", help="seal everything under a new data key (resumable: rerun after a crash)",
                    description="Seal every artifact and field under a new data key, then forget the old one. "
                                "Resumable: after a crash, run it again.")

    au = sub.add_parser("audit", help="show the audit trail, or check its hash chain (audit verify)",
                        description="Show the audit trail (who did what, when, from where, outcome); "
                                    "`pynomaly audit verify` checks its hash chain and exits 1 on a break.")
    au.add_argument("action", nargs="?", choices=["verify"], help="verify: check the chain")
    au.add_argument("--since", help="entries at or after an ISO date/time (2026-11-30T12:00) or an age (30m, 12h, 7d)")
    au.add_argument("--json", action="store_true", help="print as JSON")

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

    jb = sub.add_parser("jobs", help="background jobs: list, show, cancel, watch")
    jsub = jb.add_subparsers(dest="jobs_command", required=True, metavar="ACTION", help="what to do")
    jl = jsub.add_parser("list", help="the latest jobs, newest first")
    jl.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"],
                    help="only jobs in this state")
    jl.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    jl.add_argument("--json", action="store_true", help="print the jobs as JSON")
    for verb, text in (("show", "one job in full"), ("cancel", "cancel a queued or running job"),
                       ("watch", "follow a job's progress until it finishes")):
        x = jsub.add_parser(verb, help=text)
        x.add_argument("job", help="job id (or a unique prefix of at least 4 characters)")
        if verb != "cancel":
            x.add_argument("--json", action="store_true", help="print JSON (watch: one object per change)")

    wk = sub.add_parser("worker", help="run queued jobs and deliver alerts until SIGTERM",
                        description="Run queued jobs of the home one at a time and deliver its alert outbox, until "
                        "SIGTERM or Ctrl-C; a job running then is interrupted and re-queued. Several workers may "
                        "share a home: each job runs in exactly one.")
    wk.add_argument("--no-alerts", action="store_true", help="do not deliver alerts from this worker")
    wk.add_argument("--poll", type=float, default=0.5, help="seconds between looks at an empty queue (default 0.5)")
    wk.add_argument("--max-jobs", type=int, help="exit after running this many jobs")

    al = sub.add_parser("alerts", help="alert rules on detections: add, list, remove; the outbox")
    asub = al.add_subparsers(dest="alerts_command", required=True, metavar="ACTION", help="what to do")
    aa = asub.add_parser("add", help="add a rule: when a detection of DETECTOR matches, send an alert",
                         description="Add an alert rule. All conditions given must hold; with none, any anomaly "
                         "fires. Alerts are queued in the outbox and sent by `pynomaly worker`, the daemon, or "
                         "`pynomaly alerts deliver`.")
    aa.add_argument("--detector", required=True, help="detector name (it need not exist yet)")
    ch = aa.add_mutually_exclusive_group(required=True)
    ch.add_argument("--webhook", metavar="URL", help="POST an Alertmanager v4 message, signed (Standard Webhooks)")
    ch.add_argument("--command", dest="run_command", metavar="CMD", help="run CMD with the message as JSON on stdin")
    ch.add_argument("--log", metavar="FILE", help="append the message as a JSON line to FILE")
    ch.add_argument("--channel", metavar="NAME", help="a channel of your own: entry point name or module:Class "
                    "(with --to)")
    aa.add_argument("--to", metavar="TARGET", help="the target given to a --channel of your own")
    aa.add_argument("--score-above", type=float, metavar="S", help="an anomaly scored above S")
    aa.add_argument("--rate-above", type=float, metavar="R", help="a detection's anomaly rate above R (0..1)")
    aa.add_argument("--count", type=int, metavar="N", help="N anomalies or more ... (with --within)")
    aa.add_argument("--within", type=float, metavar="MINUTES", help="... within this many minutes")
    aa.add_argument("--dedup", type=float, default=5.0, metavar="MINUTES",
                    help="send the same alert at most once per this many minutes (default 5; 0: always)")
    aa.add_argument("--secret", help="webhook signing secret (whsec_...); default: a new one, printed")
    aa.add_argument("--timeout", type=float, default=10.0, help="seconds per delivery attempt (default 10)")
    aa.add_argument("--max-attempts", type=int, default=8, help="attempts before a message is dead (default 8)")
    aa.add_argument("--json", action="store_true", help="print the rule as JSON")
    alst = asub.add_parser("list", help="the alert rules")
    alst.add_argument("--detector", help="only this detector's rules")
    alst.add_argument("--json", action="store_true", help="print the rules as JSON")
    ar = asub.add_parser("remove", help="remove a rule (its queued messages are still sent)")
    ar.add_argument("rule", help="rule id")
    ap = asub.add_parser("approve", help="sign a rule with this installation's key, so its alerts are sent",
                         description="Sign an existing rule (as it stands now) with this installation's key. Rules "
                         "are signed when added; a rule made before rules were signed, or changed in the database "
                         "since, is not approved and its alerts are dead-lettered. Check its channel and target "
                         "first (pynomaly alerts list): approving vouches for what it runs or where it sends.")
    ap.add_argument("rule", help="rule id")
    ao = asub.add_parser("outbox", help="queued, sent and dead alert messages")
    ao.add_argument("--state", choices=["pending", "sending", "sent", "dead"], help="only messages in this state")
    ao.add_argument("--limit", type=int, default=50, help="at most this many, newest first (default 50)")
    ao.add_argument("--json", action="store_true", help="print the messages as JSON")
    asub.add_parser("deliver", help="send the due messages of the outbox once, now")

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
    from pynomaly.service import usecases as service

    if args.background:
        from pynomaly.service import jobs

        job_id = jobs.submit(home, "train", {"detector": args.detector, "data": args.data, "algorithm": args.algorithm,
                                             "params": dict(args.param), "columns": args.columns})
        if args.json:
            out.write(json.dumps(jobs.get(home, job_id), indent=2) + "\n")
        else:
            out.write(f"{job_id}\nqueued; follow it with: pynomaly jobs watch {job_id[:8]}\n")
        return
    det = service.train(home, args.detector, args.data, args.algorithm, dict(args.param),
                        columns=args.columns, progress=progress)
    progress.close()
    if args.json:
        out.write(json.dumps(det.to_dict(), indent=2) + "\n")
    else:
        out.write(f"trained {det.name} v{det.version} ({det.algorithm}) on {det.n_features} features; "
                  f"status {det.status.value}\n")


def _cmd_detect(args, home, progress, out):
    from pynomaly.service import usecases as service
    from pynomaly.store.dataio import check_result_path, write_result

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
    out.flush()
    _deliver_now(home)


def _deliver_now(home) -> None:
    """Send what a detection queued, once, after its result is out; what fails stays queued
    for `pynomaly worker` or the daemon, with its retries."""
    from pynomaly.service import alerts

    done = alerts.deliver(home)
    if done["retry"] or done["dead"]:
        sys.stderr.write(f"pynomaly: {done['retry'] + done['dead']} alert(s) not delivered; see: pynomaly alerts outbox\n")


def _cmd_list(args, home, progress, out):
    from pynomaly.service import usecases as service

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
    from pynomaly.service import usecases as service

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


def _export_key(path, create: bool, out):
    from pynomaly.service import usecases as service

    if path is None:
        return None
    from pathlib import Path

    if create and not Path(path).expanduser().exists():
        service.create_key_file(path)
        out.write(f"wrote a new export key to {path} (mode 0600); the importer needs it\n")
    return service.key_source(key_file=path).load()


def _cmd_export(args, home, progress, out):
    from pynomaly.service import usecases as service

    key = _export_key(args.export_key_file, True, out)
    path = service.export(home, args.name, args.file, args.version, key=key)
    out.write(f"exported {args.name} to {path}" + (" (encrypted)" if key else "") + "\n")


def _cmd_import(args, home, progress, out):
    from pynomaly.service import usecases as service

    key = _export_key(args.export_key_file, False, out)
    det = service.import_detector(home, args.file, args.name, trust_pickle=args.trust_pickle, key=key)
    out.write(f"imported {det.name} v{det.version} ({det.algorithm})\n")


def _cmd_init(args, home, progress, out):
    from pathlib import Path

    from pynomaly.service import usecases as service
    from pynomaly.store._home import redacted

    key = None
    if args.encrypt:
        if args.key_file and not Path(args.key_file).expanduser().exists():
            service.create_key_file(args.key_file)
            out.write(f"wrote a new key-encryption key to {args.key_file} (mode 0600); keep it (and a copy) "
                      "outside the home: without it the home cannot be read\n")
        key = service.key_source(args.key_file, args.key_command)
    path = service.init_home(home, encrypt=args.encrypt, key=key)
    out.write(f"{'encrypted ' if args.encrypt else ''}home ready at {redacted(str(path))}\n")


def _cmd_keys(args, home, progress, out):
    from pathlib import Path

    from pynomaly.service import usecases as service

    if args.keys_command == "rotate":
        if args.new_key_file and not Path(args.new_key_file).expanduser().exists():
            service.create_key_file(args.new_key_file)
            out.write(f"wrote a new key-encryption key to {args.new_key_file} (mode 0600)\n")
        new = service.key_source(args.new_key_file, args.new_key_command, prefix="PYNOMALY_NEW_")
        if new is None:
            raise SystemExit("pynomaly: keys rotate needs the new key: --new-key-file PATH (created if absent), "
                             "--new-key-command CMD, or $PYNOMALY_NEW_KEY")
        ids = service.rotate_key(home, new)
        out.write(f"data key(s) {', '.join(ids)} now wrapped by {new.describe()}; the old key no longer opens "
                  "this home\n")
    else:
        done = service.reencrypt(home, progress=progress)
        progress.close()
        out.write(f"re-encrypted {done['files']} file(s) and {done['fields']} field(s) under data key {done['key']}; "
                  f"retired {', '.join(done['retired']) or 'nothing'}\n")


def _cmd_audit(args, home, progress, out):
    from pynomaly.service import usecases as service

    if args.action == "verify":
        found = service.audit_verify(home)
        if args.json:
            out.write(json.dumps(found, indent=2) + "\n")
        elif found["ok"]:
            out.write(f"audit trail intact: {found['entries']} entries\n")
        else:
            for p in found["problems"]:
                out.write(f"BROKEN: {p}\n")
        if not found["ok"]:
            raise SystemExit(1)
        return
    entries = service.audit_entries(home, since=args.since)
    if args.json:
        out.write(json.dumps(entries, indent=2) + "\n")
        return
    rows = [(e["seq"], e["at"][:19], e["actor"], e["action"], e["target"] or "-", e["origin"] or "-", e["outcome"])
            for e in entries]
    if rows:
        out.write(_table(rows, ("SEQ", "WHEN (UTC)", "WHO", "WHAT", "TARGET", "FROM", "OUTCOME")) + "\n")
    else:
        out.write("no audit entries" + (f" since {args.since}" if args.since else "") + "\n")


def _cmd_lifecycle(args, home, progress, out):
    from pynomaly.service import usecases as service

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
    from pynomaly.quickstart import run

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
    from pynomaly.service import usecases as service

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
    serious = ("database", "missing_artifacts", "damaged_artifacts", "unloadable_versions", "lost_versions",
               "version_marks")
    if any(found[k] for k in serious):
        raise SystemExit(1)


def _job_line(j) -> tuple:
    frac = f"{100 * j['fraction']:.0f}%" if j["fraction"] is not None else "-"
    what = j["params"].get("detector", "")
    return (j["id"][:8], j["kind"], what, j["state"], j["stage"] or "-", frac, (j["created_at"] or "")[:19],
            (j["error"] or "")[:60])


def _cmd_jobs(args, home, progress, out):
    from pynomaly.service import jobs

    if args.jobs_command == "list":
        js = jobs.list_jobs(home, args.state, args.limit)
        if args.json:
            out.write(json.dumps(js, indent=2) + "\n")
        elif not js:
            out.write("no jobs\n")
        else:
            out.write(_table([_job_line(j) for j in js],
                             ("ID", "KIND", "DETECTOR", "STATE", "STAGE", "DONE", "CREATED (UTC)", "ERROR")) + "\n")
    elif args.jobs_command == "show":
        j = jobs.get(home, args.job)
        if args.json:
            out.write(json.dumps(j, indent=2) + "\n")
        else:
            for k, v in j.items():
                out.write(f"{k:17} {json.dumps(v) if isinstance(v, (dict, list)) else v}\n")
    elif args.jobs_command == "cancel":
        j = jobs.cancel(home, args.job)
        out.write(f"job {j['id']} " + ("cancelled\n" if j["state"] == "cancelled" else "asked to stop\n"))
    else:  # watch
        last = None
        for j in jobs.watch(home, args.job):
            last = j
            if args.json:
                out.write(json.dumps(j) + "\n")
            else:
                frac = f" {100 * j['fraction']:.0f}%" if j["fraction"] is not None else ""
                out.write(f"{j['state']}" + (f": {j['stage']}{frac}" if j["stage"] else "") + "\n")
            out.flush()
        if last is not None and not args.json:
            if last["error"]:
                out.write(f"error: {last['error']}\n")
            if last["result"]:
                out.write(f"result: {json.dumps(last['result'])}\n")
        if last is not None and last["state"] != "succeeded":
            raise SystemExit(1)


def _cmd_worker(args, home, progress, out):
    import signal

    from pynomaly.service import alerts, jobs

    worker = jobs.Worker(home, poll=args.poll, signals=True)
    dispatcher = None if args.no_alerts else alerts.Dispatcher(worker.home).start()

    def on_signal(signum, frame):
        worker.shutdown()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    sys.stderr.write(f"pynomaly worker {worker.id}: serving {worker.home}\n")
    sys.stderr.flush()
    try:
        n = worker.run(max_jobs=args.max_jobs)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if dispatcher is not None:
            dispatcher.stop()
    sys.stderr.write(f"pynomaly worker {worker.id}: stopped after {n} job(s)\n")


def _cmd_alerts(args, home, progress, out):
    from pynomaly.service import alerts

    c = args.alerts_command
    if c == "add":
        for name, target in (("webhook", args.webhook), ("command", args.run_command), ("log", args.log),
                             (args.channel, args.to)):
            if name and (target is not None or name == args.channel):
                break
        if args.channel and not args.to:
            raise ValueError("--channel needs --to TARGET")
        rule = alerts.add_rule(
            home, args.detector, name, target, score_above=args.score_above, rate_above=args.rate_above,
            count=args.count, within=None if args.within is None else 60.0 * args.within,
            dedup=60.0 * args.dedup, secret=args.secret, timeout=args.timeout, max_attempts=args.max_attempts,
        )
        if args.json:
            out.write(json.dumps(rule, indent=2) + "\n")
        else:
            out.write(f"rule {rule['id']} added for {rule['detector']} ({rule['channel']} {rule['target']})\n")
            if rule["secret"] and not args.secret:
                out.write(f"webhook secret (receivers verify signatures with it): {rule['secret']}\n")
    elif c == "list":
        rules = alerts.list_rules(home, args.detector)
        if args.json:
            out.write(json.dumps(rules, indent=2) + "\n")
        elif not rules:
            out.write("no alert rules; add one with: pynomaly alerts add --detector NAME --webhook URL\n")
        else:
            def when(r):
                parts = []
                if r["score_above"] is not None:
                    parts.append(f"score>{r['score_above']:g}")
                if r["rate_above"] is not None:
                    parts.append(f"rate>{r['rate_above']:g}")
                if r["count"] is not None:
                    parts.append(f"{r['count']} in {r['within'] / 60:g}min")
                return " and ".join(parts) or "any anomaly"

            out.write(_table([(r["id"], r["detector"], r["channel"], r["target"], when(r),
                               "yes" if r["approved"] else "NO: pynomaly alerts approve " + r["id"]) for r in rules],
                             ("ID", "DETECTOR", "CHANNEL", "TARGET", "WHEN", "APPROVED")) + "\n")
    elif c == "remove":
        r = alerts.remove_rule(home, args.rule)
        out.write(f"removed rule {r['id']} ({r['detector']}, {r['channel']})\n")
    elif c == "approve":
        r = alerts.approve_rule(home, args.rule)
        out.write(f"approved rule {r['id']} ({r['detector']}: {r['channel']} {r['target']})\n")
    elif c == "outbox":
        msgs = alerts.outbox(home, args.state, args.limit)
        if args.json:
            out.write(json.dumps(msgs, indent=2) + "\n")
        elif not msgs:
            out.write("the outbox is empty\n")
        else:
            out.write(_table([(m["id"], m["rule_id"], m["channel"], m["state"], m["attempts"], (m["created_at"] or "")[:19],
                               (m["last_error"] or "")[:60]) for m in msgs],
                             ("ID", "RULE", "CHANNEL", "STATE", "ATTEMPTS", "CREATED (UTC)", "LAST ERROR")) + "\n")
    else:  # deliver
        done = alerts.deliver(home)
        out.write(f"sent {done['sent']}, to retry {done['retry']}, dead {done['dead']}\n")


_COMMANDS = {
    "jobs": _cmd_jobs,
    "worker": _cmd_worker,
    "alerts": _cmd_alerts,
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
    "init": _cmd_init,
    "keys": _cmd_keys,
    "audit": _cmd_audit,
}


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
    if c == "quickstart":
        return "train", args.detector
    return None


def _record(args, home, outcome: str) -> None:
    """Append the command's audit entry; a home that cannot take it gets a warning, not a failure."""
    what = _audited(args)
    if what is None:
        return
    from pynomaly.service import usecases as service

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


if __name__ == "__main__":
    sys.exit(main())
