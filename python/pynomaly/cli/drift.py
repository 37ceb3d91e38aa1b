"""``pynomaly drift``: a detector's served traffic (or a file) against its training reference,
and ``--set-reference`` for versions that have none (see :mod:`pynomaly.service.drift`)."""

from __future__ import annotations

import argparse
import json

from pynomaly.cli._common import columns, table

def window(text: str) -> float:
    """A duration such as 90s, 15m, 1h or 7d (a bare number is seconds)."""
    from pynomaly._errors import InvalidInputError
    from pynomaly.service.drift import parse_window

    try:
        return parse_window(text)
    except InvalidInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_drift(sub):
    d = sub.add_parser("drift", help="has the data drifted? a detector's served rows (or a file) against its "
                       "training reference",
                       description="Compare what a detector served in the last --window (every process on the "
                       "home counts: batch detect, the HTTP API) or the rows of --data with the reference stored "
                       "when the version was trained, feature by feature and on the scores; most drifted first.")
    d.add_argument("--detector", required=True, help="detector name")
    d.add_argument("--version", type=int, help="detector version (default: latest)")
    d.add_argument("--window", type=window, metavar="DURATION", help="the live window: e.g. 15m, 1h (default), 7d")
    d.add_argument("--data", help="compare this file offline instead (.csv, .npy, .npz or .parquet)")
    d.add_argument("--columns", type=columns, help="comma-separated feature columns of --data (names or indices)")
    d.add_argument("--method", choices=["psi", "ks"], default="psi",
                   help="decide by PSI >= --psi (default) or by the KS p-value < --alpha / tests (Bonferroni)")
    d.add_argument("--psi", type=float, default=0.2, dest="psi_threshold", help="PSI threshold (default 0.2)")
    d.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    d.add_argument("--min-rows", type=int, metavar="N",
                   help="rows needed before drift is decided (default 300: fewer give the statistics, no decision)")
    d.add_argument("--set-reference", action="store_true",
                   help="make --data the version's reference instead (for versions stored before drift "
                        "monitoring, imported ones, or a reference of your choosing)")
    d.add_argument("--json", action="store_true", help="print the drift document as JSON (as the HTTP API sends it)")


def _cmd_drift(args, home, progress, out):
    from pynomaly.service import drift

    if args.set_reference:
        if not args.data:
            raise SystemExit("pynomaly drift: --set-reference needs --data FILE (the rows to take as the reference)")
        r = drift.set_reference(home, args.detector, args.data, version=args.version, columns=args.columns)
        if args.json:
            out.write(json.dumps(r, indent=2) + "\n")
        else:
            out.write(f"reference of {r['detector']} v{r['version']} set from {r['rows']} rows, {r['features']} "
                      f"features ({r['bytes']} bytes{', with scores' if r['score'] else ''})\n")
        return
    opts = dict(version=args.version, method=args.method, psi_threshold=args.psi_threshold, alpha=args.alpha,
                min_rows=args.min_rows)
    if args.data:
        doc = drift.compare_data(home, args.detector, args.data, columns=args.columns, **opts)
    else:
        doc = drift.report(home, args.detector, window=args.window, **opts)
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
        return
    out.write(_summary(doc) + "\n")
    rows = [(f["feature"], f"{f['psi']:.3f}", f"{f['ks']:.3f}", f"{f['p_value']:.3g}", f"{f['wasserstein']:.4g}",
             _decision(f["drift"])) for f in doc["features"]]
    s = doc["score"]
    if s is not None:
        rows.append(("(score)", f"{s['psi']:.3f}", f"{s['ks']:.3f}", f"{s['p_value']:.3g}", f"{s['wasserstein']:.4g}",
                     _decision(s["drift"])))
    out.write(table(rows, ("feature", "PSI", "KS", "p", "W1", "decision")) + "\n")
    if s is not None and s["expected_rate"] is not None:
        out.write(f"flagged {s['flagged']} of {s['scored']} ({100 * s['flagged_rate']:.1f}%; trained "
                  f"{100 * s['expected_rate']:.1f}%, p = {s['rate_p_value']:.3g})\n")


def _decision(drift) -> str:
    return "undecided" if drift is None else "DRIFT" if drift else "-"


def _summary(doc: dict) -> str:
    where = f"the last {_duration(doc['window_s'])}" if doc["source"] == "live" else "the data"
    sampled = f", profiled on {100 * doc['sample_rate']:.0f}% of them" if doc["sample_rate"] < 1 else ""
    if doc["drift"] is None:
        return (f"detector {doc['detector']} v{doc['version']}: undecided in {doc['rows_seen']} rows of {where}"
                f"{sampled}: {doc['reason']} (--min-rows)")
    verdict = "DRIFT" if doc["drift"] else "no drift"
    rule = f"PSI >= {doc['psi_threshold']:g}" if doc["method"] == "psi" else f"KS p < {doc['alpha']:g} / tests"
    return (f"detector {doc['detector']} v{doc['version']}: {verdict} ({rule}) in {doc['rows_seen']} rows of "
            f"{where}{sampled}")


def _duration(seconds: float) -> str:
    for unit, s in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= s and seconds % s == 0:
            return f"{int(seconds // s)} {unit}"
    return f"{seconds:g} s"


COMMANDS = {"drift": _cmd_drift}
