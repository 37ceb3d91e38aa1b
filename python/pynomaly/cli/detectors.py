"""Commands on detectors: train, detect, stream, list, show, export, import, archive, activate, delete."""

from __future__ import annotations

import json
import sys

from pynomaly._errors import InvalidInputError
from pynomaly.cli._common import columns, fmt_time, parse_param, table


def add_train(sub):
    t = sub.add_parser("train", help="train a detector on a data file and store it (next version)")
    t.add_argument("--detector", required=True, help="detector name")
    t.add_argument("--data", required=True, help="training data: .csv, .npy, .npz or .parquet")
    t.add_argument("--algorithm", default="IsolationForest", help="registry name (default IsolationForest); "
                   "e.g. LOF, KNN, pyod.ECOD, TorchAutoEncoder, JaxDeepSVDD")
    t.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE",
                   help="algorithm parameter (repeatable); VALUE is read as JSON when it parses")
    t.add_argument("--columns", type=columns, help="comma-separated feature columns (names or indices)")
    t.add_argument("--json", action="store_true", help="print the stored detector as JSON")
    t.add_argument("--background", action="store_true",
                   help="queue the training as a job and print its id at once (run by `pynomaly worker`)")


def add_detect(sub):
    d = sub.add_parser("detect", help="score a data file with a stored detector")
    d.add_argument("--detector", required=True, help="name of a stored, active detector")
    d.add_argument("--data", required=True, help="rows to score: .csv, .npy, .npz or .parquet")
    d.add_argument("--version", type=int, help="detector version (default: latest)")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="label rows scoring above this")
    g.add_argument("--contamination", type=float, help="label this share of the rows (0, 0.5]")
    d.add_argument("--output", help="write per-row scores and labels (.csv, .json or .parquet)")
    d.add_argument("--columns", type=columns, help="comma-separated feature columns (names or indices); default: "
                   "the columns the detector was trained on, by name; a header lacking some of them is refused "
                   "(indices read a file by position)")
    d.add_argument("--top", type=int, default=5, help="how many top anomalies to print (default 5)")
    d.add_argument("--explain", type=int, metavar="K",
                   help="add each flagged row's top K features (name, value, attribution) to the --output file")
    d.add_argument("--explain-method", metavar="METHOD", help="how to explain (default: the detector's; see "
                   "`pynomaly explain --help`)")
    d.add_argument("--no-save", action="store_true", help="do not record the result in the repository")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_explain(sub):
    x = sub.add_parser("explain", help="show which features make rows of a data file anomalous",
                       description="Print, per row, the features pushing its score most toward anomalous, with "
                       "their values and attributions. Methods: IsolationForest tree_shap (default, exact "
                       "TreeSHAP) or path; KNN and LOF neighbors; TorchAutoEncoder reconstruction; any "
                       "detector permutation (model-agnostic).")
    x.add_argument("--detector", required=True, help="name of a stored, active detector")
    x.add_argument("--data", required=True, help="rows: .csv, .npy, .npz or .parquet")
    x.add_argument("--version", type=int, help="detector version (default: latest)")
    x.add_argument("--rows", help="row indices and ranges, e.g. 3,7,10-20 (default: the 10 highest-scoring rows)")
    x.add_argument("--method", help="explanation method (default: the detector's)")
    x.add_argument("--top", type=int, default=3, metavar="K", help="features shown per row (default 3)")
    x.add_argument("--columns", type=columns, help="comma-separated feature columns (names or indices)")
    x.add_argument("--json", action="store_true", help="print the rows and their top features as JSON")


def add_stream(sub):
    s = sub.add_parser("stream", help="run a data file through a stored streaming detector, record by record")
    s.add_argument("--detector", required=True, help="name of a stored, active HalfSpaceTrees or OnlineIsolationForest")
    s.add_argument("--data", required=True, help="records in order: .csv, .npy, .npz or .parquet")
    s.add_argument("--version", type=int, help="detector version (default: latest)")
    s.add_argument("--learn", action="store_true", help="learn each record after scoring it (prequential); the "
                   "learned state is not stored")
    s.add_argument("--alpha", type=float, default=0.01, help="flag records whose conformal p-value is at most this "
                   "(default 0.01)")
    s.add_argument("--calibration", type=int, default=1000, help="recent scores a p-value is computed against "
                   "(default 1000)")
    s.add_argument("--output", help="write per-record scores, flags (label) and p-values (.csv, .json or .parquet)")
    s.add_argument("--columns", type=columns, help="comma-separated feature columns (names or indices)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_list(sub):
    ls = sub.add_parser("list", help="list stored detectors")
    ls.add_argument("--json", action="store_true", help="print the detectors as JSON")


def add_show(sub):
    s = sub.add_parser("show", help="show a detector, its versions and results")
    s.add_argument("name", help="detector name")
    s.add_argument("--json", action="store_true", help="print as JSON")


def add_export(sub):
    e = sub.add_parser("export", help="write a detector version to one self-contained file")
    e.add_argument("name", help="detector name")
    e.add_argument("file", help="the file to write")
    e.add_argument("--version", type=int, help="detector version (default: latest)")
    e.add_argument("--export-key-file", metavar="PATH",
                   help="encrypt the file to this key (base64 of 32 bytes; created, mode 0600, if absent); "
                        "required for a detector of an encrypted home")


def add_import(sub):
    i = sub.add_parser("import", help="import an exported file as the next version of a detector")
    i.add_argument("file", help="a file written by `pynomaly export`")
    i.add_argument("--name", help="detector name (default: the exported one)")
    i.add_argument("--trust-pickle", action="store_true",
                   help="accept a pickled (PyOD) model signed elsewhere; only for files you trust")
    i.add_argument("--export-key-file", metavar="PATH", help="the key an encrypted export file was written to")


def add_lifecycle(sub):
    for verb, text in (("archive", "retire a detector (keeps its versions)"),
                       ("activate", "make an archived detector detect again"),
                       ("delete", "delete a detector with all its versions and results")):
        x = sub.add_parser(verb, help=text, description=text[0].upper() + text[1:] + ".")
        x.add_argument("name", help="detector name")
        if verb == "delete":
            x.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation on a terminal")


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
    from pynomaly import service

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
    from pynomaly import service
    from pynomaly.store.dataio import check_result_path, write_result

    if args.output:
        check_result_path(args.output)  # before any work or write: the result is not stored twice
    if args.explain is not None and (not args.output or args.explain < 1):
        raise InvalidInputError("--explain K adds each flagged row's top K features (K >= 1) to the --output "
                                f"file; give --output FILE and a positive K (got {args.explain})")
    result = service.detect(home, args.detector, args.data, version=args.version, threshold=args.threshold,
                            contamination=args.contamination, columns=args.columns, save=not args.no_save,
                            progress=progress)
    top = None
    if args.explain is not None and result.anomaly_indices.size:
        progress("explaining")
        explained = service.explain(home, args.detector, args.data, version=result.detector_version,
                                    rows=result.anomaly_indices, method=args.explain_method, columns=args.columns)
        top = [None] * len(result.scores)
        for row, features in zip(explained.rows, service.top_features(explained.explanation, args.explain)):
            top[row] = features
    if args.output:
        progress("writing " + str(args.output))
        write_result(args.output, result.scores, result.labels, result.summary(), top_features=top,
                     top_k=args.explain)
    progress.close()
    if args.json:
        out.write(json.dumps(result.summary(), indent=2) + "\n")
    else:
        _print_result(result, args.detector, args.top, out)
        if args.output:
            out.write(f"scores and labels written to {args.output}\n")
    out.flush()
    _deliver_now(home)


def _cmd_explain(args, home, progress, out):
    from pynomaly import service

    progress("explaining")
    got = service.explain(home, args.detector, args.data, version=args.version, rows=args.rows, method=args.method,
                          columns=args.columns)
    e = got.explanation
    top = service.top_features(e, args.top)
    progress.close()
    if args.json:
        out.write(json.dumps({"method": e.method, "output": e.output, "rows": [
            {"row": int(r), "score": float(s), "label": int(lab), "base": float(b), "top_features": t}
            for r, s, lab, b, t in zip(got.rows, got.scores, got.labels, e.base_values, top)]}, indent=2) + "\n")
        return
    out.write(f"detector {args.detector}: method {e.method}; attributions add up to {e.output} "
              f"(with the base value); positive pushes toward {'normal' if e.anomalous_sign < 0 else 'anomalous'}\n")
    lines = []
    for r, s, lab, feats in zip(got.rows, got.scores, got.labels, top):
        for rank, f in enumerate(feats, 1):
            first = rank == 1
            lines.append((r if first else "", f"{s:.6g}" if first else "", ("yes" if lab else "no") if first else "",
                          rank, f["feature"], f"{f['value']:.6g}", f"{f['attribution']:+.4g}"))
    out.write(table(lines, ("ROW", "SCORE", "FLAGGED", "RANK", "FEATURE", "VALUE", "ATTRIBUTION")) + "\n")


def _cmd_stream(args, home, progress, out):
    from pynomaly import service
    from pynomaly.store.dataio import check_result_path, write_result

    if args.output:
        check_result_path(args.output)
    run = service.stream(home, args.detector, args.data, version=args.version, learn=args.learn, alpha=args.alpha,
                         calibration=args.calibration, columns=args.columns, progress=progress)
    if args.output:
        progress("writing " + str(args.output))
        write_result(args.output, run.scores, run.flags.astype("int64"), run.summary(), extra={"p_value": run.p_values})
    progress.close()
    summary = run.summary()
    if args.json:
        out.write(json.dumps(summary, indent=2) + "\n")
    else:
        out.write(f"{summary['n_rows']} records through {args.detector}{' (learning)' if run.learned else ''}: "
                  f"{summary['n_flagged']} flagged at alpha {args.alpha}\n")
        if args.output:
            out.write(f"scores, flags and p-values written to {args.output}\n")


def _deliver_now(home) -> None:
    """Send what a detection queued, once, after its result is out; what fails stays queued
    for `pynomaly worker` or the daemon, with its retries."""
    from pynomaly.service import alerts

    done = alerts.deliver(home)
    if done["retry"] or done["dead"]:
        sys.stderr.write(f"pynomaly: {done['retry'] + done['dead']} alert(s) not delivered; see: pynomaly alerts outbox\n")


def _cmd_list(args, home, progress, out):
    from pynomaly import service

    dets = service.list_detectors(home)
    if args.json:
        out.write(json.dumps([d.to_dict() for d in dets], indent=2) + "\n")
        return
    if not dets:
        out.write("no detectors yet; train one with: pynomaly train --detector NAME --data FILE\n")
        return
    rows = [(d.name, d.algorithm, d.status.value, d.version, d.n_features or "-", fmt_time(d.trained_at)) for d in dets]
    out.write(table(rows, ("NAME", "ALGORITHM", "STATUS", "VERSION", "FEATURES", "TRAINED (UTC)")) + "\n")


def _cmd_show(args, home, progress, out):
    from pynomaly import service

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
        out.write("\n" + table(rows, ("VERSION", "ALGORITHM", "FORMAT", "BYTES", "THRESHOLD", "TRAINED (UTC)")) + "\n")
    if info["results"]:
        out.write(f"\n{len(info['results'])} stored detection result(s); latest: "
                  f"{info['results'][-1]['anomalies_detected']} of {info['results'][-1]['total_samples']} rows flagged\n")


def _export_key(path, create: bool, out):
    from pynomaly import service

    if path is None:
        return None
    from pathlib import Path

    if create and not Path(path).expanduser().exists():
        service.create_key_file(path)
        out.write(f"wrote a new export key to {path} (mode 0600); the importer needs it\n")
    return service.key_source(key_file=path).load()


def _cmd_export(args, home, progress, out):
    from pynomaly import service

    key = _export_key(args.export_key_file, True, out)
    path = service.export(home, args.name, args.file, args.version, key=key)
    out.write(f"exported {args.name} to {path}" + (" (encrypted)" if key else "") + "\n")


def _cmd_import(args, home, progress, out):
    from pynomaly import service

    key = _export_key(args.export_key_file, False, out)
    det = service.import_detector(home, args.file, args.name, trust_pickle=args.trust_pickle, key=key)
    out.write(f"imported {det.name} v{det.version} ({det.algorithm})\n")


def _cmd_lifecycle(args, home, progress, out):
    from pynomaly import service

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


COMMANDS = {
    "train": _cmd_train,
    "detect": _cmd_detect,
    "explain": _cmd_explain,
    "stream": _cmd_stream,
    "list": _cmd_list,
    "show": _cmd_show,
    "export": _cmd_export,
    "import": _cmd_import,
    "archive": _cmd_lifecycle,
    "activate": _cmd_lifecycle,
    "delete": _cmd_lifecycle,
}
