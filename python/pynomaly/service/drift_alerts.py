"""Alert rules on drift (issue 24): a rule with ``drift_above`` P fires when a feature's PSI in
the detector's live drift window reaches P, one with ``score_drift_above`` P when the score's
does (rules are added, signed and delivered as every rule of :mod:`pynomaly.service.alerts`);
neither fires while the window holds fewer than ``settings.min_rows`` rows (nothing is decided).

:func:`check` runs whenever a process writes a detector's window counts to the home
(:func:`pynomaly.service.drift_live.flush`: every few seconds while serving, before a report,
at exit), on the home's merged window of the last hour (``settings.window_s``), so every
process checks the same numbers; a rule's dedup window (default 5 minutes) makes that one alert
per rule and window however many processes check. Its message waits in the outbox like any
alert, for the serving processes' (or ``pynomaly alerts deliver``'s) dispatcher.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from pynomaly.service import alerts
from pynomaly.service.alert_channels import envelope
from pynomaly.store import alerts as _rows
from pynomaly.store._schema import open_database

__all__ = ["check", "fired"]


def fired(rule, doc: dict) -> list:
    """What of the drift document ``doc`` reaches ``rule``'s conditions: ``[(what, psi)]``,
    features by name (most drifted first) and ``"score"``; empty when the rule does not fire,
    or when the window held too few rows to decide (the document's ``drift`` is None)."""
    if doc["drift"] is None:
        return []
    out = []
    if rule["drift_above"] is not None:
        out += [(f["feature"], f["psi"]) for f in doc["features"] if f["psi"] >= rule["drift_above"]]
    s = doc.get("score")
    if rule["score_drift_above"] is not None and s is not None and s["psi"] >= rule["score_drift_above"]:
        out.append(("score", s["psi"]))
    return out


def check(home, name: str, document: Callable[[], Optional[dict]]) -> list:
    """Queue the alerts of ``name``'s drift rules that ``document()`` (its drift document, or
    None when there is none; only asked for when the detector has such rules) fires; returns
    the queued message ids."""
    db = open_database(home)
    try:
        rules = _rows.drift_rules(db, name)
        if not rules:
            return []
        doc = document()
        if doc is None:
            return []
        now = time.time()
        queued = []
        with db.transaction():
            for rule in rules:
                hits = fired(rule, doc)
                if hits:
                    msg_id = alerts.queue_fired(db, rule, lambda: _message(rule, name, doc, hits, now), now)
                    if msg_id is not None:
                        queued.append(msg_id)
        return queued
    finally:
        db.close()


def _message(rule, name: str, doc: dict, hits: list, at: float) -> dict:
    conds = []
    if rule["drift_above"] is not None:
        conds.append(f"a feature's PSI >= {rule['drift_above']:g}")
    if rule["score_drift_above"] is not None:
        conds.append(f"the score's PSI >= {rule['score_drift_above']:g}")
    what = ", ".join(f"{w} (PSI {psi:.3g})" for w, psi in hits[:5]) + (f" and {len(hits) - 5} more" if len(hits) > 5 else "")
    window = doc.get("window_s")
    annotations = {
        "summary": f"detector {name} drifted: {what}",
        "description": (f"rule {rule['id']} ({' or '.join(conds)}) fired on the drift window of {name}"
                        + (f" ({window:g} s)" if window else "") + f", {doc['rows_seen']} row(s) served: {what}; "
                        f"see: pynomaly drift --detector {name}"),
        "drifted": ",".join(w for w, _ in hits),
        "max_psi": f"{max(psi for _, psi in hits):.6g}",
        "rows": str(doc["rows_seen"]),
    }
    return envelope(rule, annotations, at)
