"""Alerts on detections: rules per detector, an outbox in the repository, pluggable channels.

A **rule** belongs to one detector and names a channel and its target, with conditions that
must all hold for a detection to fire it (none given: any anomaly fires): ``score_above`` S
(an anomaly scored above S), ``rate_above`` R (the share of anomalous rows of a detection
above R), ``count`` N ``within`` T seconds (N anomalies or more in the last T seconds, all the
detector's detections summed). Rules on drift, ``drift_above`` P / ``score_drift_above`` P
(issue 24: a feature's / the score's PSI in the live window at or above P), are checked when
the window's counts are written to the home (:mod:`pynomaly.service.drift_alerts`).

A fired rule writes an Alertmanager v4 webhook message to the **outbox** (``alert_outbox``) in
the transaction that checks its conditions, so delivery never blocks a detection.
:func:`deliver` (a :class:`Dispatcher` thread in the daemon and ``pynomaly worker``; once by
``pynomaly detect``) claims due messages and sends them, retrying with exponential backoff and
jitter until ``max_attempts`` failed (the message is then **dead**, listed by ``pynomaly
alerts outbox --state dead``). A message stays until its channel accepted it, so a killed
process loses nothing (an unfinished claim is taken back after its lease). Delivery is at least
once; receivers deduplicate by the ``webhook-id`` header, the message's id on every attempt.

**Deduplication**: an alert is identified by its fingerprint (a hash of its labels: detector
and rule); a firing within the rule's ``dedup`` window (default 5 minutes) after a firing
message of the same fingerprint queues nothing. **Resolved**: while an alert fires (its newest
message says so), a detection that does not fire the rule (a count rule: once its window holds
fewer than ``count``) queues a ``resolved`` message as Alertmanager receivers expect (same
labels, ``status: resolved``, the firing ``startsAt``, ``endsAt`` set); the next firing after it
is sent whatever the window.

**Channels** (:mod:`pynomaly.service.alert_channels`): ``webhook`` (signed per Standard
Webhooks), ``command``, ``log``, or a user's class (an entry point in the
``pynomaly.alert_channels`` group, or ``"package.module:Class"``).

The faces call :func:`add_rule`, :func:`list_rules`, :func:`remove_rule`, :func:`evaluate`
(after each detection; :func:`pynomaly.service.detect` does), :func:`deliver`, :func:`outbox`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import random
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable, Optional, Protocol

from pynomaly.store import alerts as _rows
from pynomaly.store._schema import migrated_home, open_database
from pynomaly._errors import InvalidInputError, PynomalyError

__all__ = [
    "NotificationService",
    "Observation",
    "RuleNotFoundError",
    "DeliveryError",
    "add_rule",
    "approve_rule",
    "rule_signature",
    "list_rules",
    "remove_rule",
    "evaluate",
    "deliver",
    "outbox",
    "payload",
    "sign",
    "verify",
    "channel_for",
    "Dispatcher",
    "Evaluator",
    "queue_fired",
    "is_drift_rule",
]

log = logging.getLogger("pynomaly.alerts")

# The message and the channels that carry it live in alert_channels; named here too, as before.
from pynomaly.service.alert_channels import (  # noqa: E402,F401 - re-exported
    ALERTNAME,
    ALLOW_ENV,
    BUILTIN_CHANNELS,
    CommandChannel,
    DeliveryError,
    LogChannel,
    WebhookChannel,
    _channel_label,
    _key,
    _labels,
    _refuse_named_internal_host,
    channel_for,
    check_target,
    fingerprint,
    payload,
    sign,
    why_once,
    verify,
)

OUTBOX_LIMIT = 10_000  # pending messages at most; beyond, new alerts are dropped (and counted)
CLAIM_LEASE = 60.0  # seconds a claimed message may take to send before another dispatcher retries it
BACKOFF = 1.0  # seconds before the first retry; doubled per attempt, with jitter
MAX_BACKOFF = 300.0


class RuleNotFoundError(PynomalyError, LookupError):
    """No alert rule with that id."""


class NotificationService(Protocol):
    """What a channel is: ``send_alert(message, recipients)`` delivers ``message`` (the
    Alertmanager v4 dict) to ``recipients`` (the rule's target, as a one-item list) or raises."""

    def send_alert(self, message: dict, recipients: list) -> None: ...


def _connect(home):
    return open_database(home)  # the tables are the repository's migrations 5 and 6 (pynomaly.store._schema)


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


# -- rules -----------------------------------------------------------------------------------
def _positive(name, v, *, integer=False, unit=False):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidInputError(f"{name} must be a finite number, got {v!r}")
    if integer and (int(v) != v or v < 1):
        raise InvalidInputError(f"{name} must be a whole number >= 1, got {v!r}")
    if unit and not (0 <= v < 1):
        raise InvalidInputError(f"{name} must be in [0, 1), got {v!r}")
    if not unit and v < 0:
        raise InvalidInputError(f"{name} must be >= 0, got {v!r}")
    return v


def add_rule(home, detector: str, channel: str, target: str, *, score_above=None, rate_above=None, count=None,
             within=None, dedup: float = 300.0, secret: Optional[str] = None, timeout: float = 10.0,
             max_attempts: int = 8, from_network: bool = False, drift_above=None, score_drift_above=None) -> dict:
    """Store an alert rule for ``detector``, signed with the installation's key (see
    :func:`approve_rule`); returns it as a dict (with ``id`` and, for a webhook, the ``secret``
    receivers verify signatures with: given, or a new ``whsec_`` one).

    ``channel`` is "webhook" (``target`` an http(s) URL), "command" (a command line), "log"
    (a file path) or a user's channel (entry point name or "module:Class"). ``within`` and
    ``dedup`` are seconds; ``count`` needs ``within``. ``drift_above``/``score_drift_above``
    (PSI) make a rule on drift, which takes no condition on anomalies. The detector need not
    exist yet.
    ``from_network``: the rule comes from a network caller (the HTTP API or pages), who may
    only add webhooks: the other channels run code or write files on the server.
    """
    from pynomaly.domain import check_name

    check_name(detector)
    target, secret = check_target(channel, target, secret, timeout, from_network)
    if score_above is not None and (isinstance(score_above, bool) or not isinstance(score_above, (int, float))
                                    or not math.isfinite(score_above)):
        raise InvalidInputError(f"score_above must be a finite number, got {score_above!r}")
    _positive("rate_above", rate_above, unit=True)
    _positive("count", count, integer=True)
    _positive("within", within)
    if (count is None) != (within is None):
        raise InvalidInputError("count and within go together: N anomalies within T")
    if within is not None and within <= 0:
        raise InvalidInputError(f"within must be > 0 seconds, got {within!r}")
    for what, v in (("drift_above", drift_above), ("score_drift_above", score_drift_above)):
        if _positive(what, v) == 0:
            raise InvalidInputError(f"{what} is a PSI and must be > 0 (0.2: a significant shift), got {v!r}")
    if (drift_above is not None or score_drift_above is not None) and not (
            score_above is None and rate_above is None and count is None):
        raise InvalidInputError("a rule on drift (drift_above, score_drift_above) takes no condition on anomalies "
                                "(score_above, rate_above, count): add two rules")
    _positive("dedup", dedup)
    if _positive("timeout", timeout) == 0:
        raise InvalidInputError("timeout must be > 0 seconds")
    _positive("max_attempts", max_attempts, integer=True)
    rule_id = uuid.uuid4().hex[:12]
    db = _connect(home)
    try:
        key = _signing_key(db)
        signature = rule_signature(key, rule_id, detector, channel, target, float(timeout))
        _rows.insert_rule(db, id=rule_id, detector=detector, channel=channel, target=target, secret=secret,
                          score_above=score_above, rate_above=rate_above, count=count, within=within,
                          dedup=float(dedup), timeout=float(timeout), max_attempts=int(max_attempts),
                          created_at=_now(), signature=signature, drift_above=drift_above,
                          score_drift_above=score_drift_above)
        return _rule_dict(_rows.rule(db, rule_id), key)
    finally:
        db.close()


# -- signed rules ----------------------------------------------------------------------------
# A rule decides what a dispatcher runs (command), imports (a plugin) or writes (log) and where
# it sends detections (webhook). On a shared database, write access to rows must not be code
# execution on every worker (issue 25), so the fields that decide it are signed with the
# installation's key, which lives beside the home, never in the database (as pickles' are).
def _signing_key(db) -> bytes:
    from pynomaly.store._home import local_dir, signing_key

    return signing_key(local_dir(db.home))


def rule_signature(key: bytes, rule_id: str, detector: str, channel: str, target: str, timeout: float) -> str:
    """HMAC-SHA256 (hex) of a rule's id, detector, channel, target and timeout under ``key``."""
    msg = "\0".join(("pynomaly-alert-rule/1", rule_id, detector, channel, target, repr(float(timeout))))
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def _signed(rule, key: bytes, rule_id: Optional[str] = None) -> bool:
    sig = rule["signature"]
    return isinstance(sig, str) and hmac.compare_digest(
        rule_signature(key, rule_id or rule["id"], rule["detector"], rule["channel"], rule["target"],
                       rule["timeout"]), sig)


def _rule_dict(r, key: bytes) -> dict:
    d = dict(r)
    d["created_at"] = _iso(d["created_at"])
    d["approved"] = _signed(r, key)  # signed by this installation's key, and unchanged since
    del d["signature"]
    return d


def list_rules(home, detector: Optional[str] = None) -> list:
    """The alert rules (of one detector, or all), oldest first, as dicts; ``approved`` says
    whether a rule is signed by this installation's key (an unapproved rule's alerts are
    dead-lettered, not sent)."""
    db = _connect(home)
    try:
        rows = _rows.rules(db, detector)
        key = _signing_key(db)
        return [_rule_dict(r, key) for r in rows]
    finally:
        db.close()


def approve_rule(home, rule_id: str) -> dict:
    """Sign an existing rule with the installation's key, as it stands now: for rules made
    before rules were signed, or found unapproved. Look at its channel and target first
    (``pynomaly alerts list``): approving is vouching for what it runs or where it sends.
    Returns the rule."""
    db = _connect(home)
    try:
        key = _signing_key(db)
        with db.transaction():
            r = _rows.rule(db, rule_id)
            if r is None:
                raise RuleNotFoundError(f"no alert rule {rule_id!r}; see: pynomaly alerts list")
            sig = rule_signature(key, r["id"], r["detector"], r["channel"], r["target"], r["timeout"])
            _rows.set_signature(db, rule_id, sig)
        return _rule_dict(_rows.rule(db, rule_id), key)
    finally:
        db.close()


def remove_rule(home, rule_id: str) -> dict:
    """Delete a rule (its queued messages are still delivered); returns what was removed."""
    db = _connect(home)
    try:
        with db.transaction():
            r = _rows.rule(db, rule_id)
            if r is None:
                raise RuleNotFoundError(f"no alert rule {rule_id!r}; see: pynomaly alerts list")
            _rows.delete_rule(db, rule_id)
        return _rule_dict(r, _signing_key(db))
    finally:
        db.close()


# -- evaluation ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Observation:
    """What rules look at in one detection (or in several of one detector, summed: the daemon
    reports its detections per detector every fraction of a second).

    ``max_score`` is the highest score among the anomalous rows (-inf when none);
    ``max_rate`` the highest anomaly rate among the detections. ``why``: None, or a function
    giving a few anomalous rows with their top features
    (:func:`pynomaly.service.explaining.why_flagged`), called only when a rule fires, so the
    rows are explained only then (in the thread that evaluates the rules, off the serving path).
    """

    detector: str
    detections: int
    rows: int
    anomalies: int
    max_score: float
    max_rate: float
    version: Optional[int] = None
    at: float = dataclasses.field(default_factory=_now)
    why: Optional[Callable[[], list]] = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, detector: str, result, why=None) -> "Observation":
        """From a :class:`~pynomaly.DetectionResult` (``why``: as the field)."""
        import numpy as np

        labels = np.asarray(result.labels).astype(bool)
        n, k = int(labels.size), int(labels.sum())
        top = float(np.max(result.scores[labels])) if k else -math.inf
        return cls(detector, 1, n, k, top, k / n if n else 0.0, int(result.detector_version), why=why)


def is_drift_rule(rule) -> bool:
    return rule["drift_above"] is not None or rule["score_drift_above"] is not None


def _fires(rule, obs: Observation, window_total: Optional[int]) -> bool:
    if obs.anomalies <= 0 or is_drift_rule(rule):  # drift rules are checked on the drift window
        return False
    if rule["score_above"] is not None and not obs.max_score > rule["score_above"]:
        return False
    if rule["rate_above"] is not None and not obs.max_rate > rule["rate_above"]:
        return False
    if rule["count"] is not None and (window_total is None or window_total < rule["count"]):
        return False
    return True


def _firing(db, fp: str):
    """The firing message of the alert with fingerprint ``fp`` (a dict), or None: its newest
    message is a resolved one, or there is none."""
    last = _rows.latest(db, fp)
    if last is None:
        return None
    msg = json.loads(last["payload"])
    return msg if msg.get("status") == "firing" else None


def _evaluate(db, rules, obs: Observation) -> list:
    """Check ``rules`` against ``obs`` and queue a message for each that fires (deduplicated),
    or a ``resolved`` message for each whose alert is firing and whose condition no longer
    holds; returns the ids queued. One transaction: the window counts and the queue agree."""
    queued = []
    rules = [r for r in rules if not is_drift_rule(r)]  # checked on the drift window, fired or resolved there
    if not rules:
        return queued
    # A detection without anomalies changes nothing unless it clears a firing alert: a read
    # per rule, and no write lock taken.
    if obs.anomalies <= 0 and not any(_firing(db, fingerprint(_labels(r))) for r in rules):
        return queued
    why = why_once(obs)
    with db.transaction():
        for rule in rules:
            total = None
            if rule["count"] is not None:
                total = _rows.count_in_window(db, rule["id"], obs.at, obs.anomalies, rule["within"])
            fp = fingerprint(_labels(rule))
            if _fires(rule, obs, total):
                msg_id = queue_fired(db, rule, lambda: payload(rule, obs, total, why=why()), obs.at)
            else:
                # Cleared: a detection that does not fire it (a count rule: once its window
                # holds fewer than `count` anomalies), while its alert is firing.
                if total is not None and total >= rule["count"]:
                    continue
                firing = _firing(db, fp)
                if firing is None:
                    continue
                msg_id = queue_fired(db, rule, lambda: payload(rule, obs, total, resolves=firing), obs.at,
                                     resolving=True)
            if msg_id is not None:
                queued.append(msg_id)
    return queued


def queue_fired(db, rule, message, at: float, *, resolving: bool = False) -> Optional[str]:
    """Queue ``message()`` (the Alertmanager dict) of a fired ``rule`` in the outbox, inside the
    caller's transaction, unless deduplicated (a firing message while the same alert fired
    within the rule's dedup window; a firing after a resolved one is sent) or the outbox is
    full; returns its id or None. ``resolving``: the message ends a firing alert, never
    deduplicated."""
    from pynomaly.service import metrics

    fp = fingerprint(_labels(rule))
    if not resolving and rule["dedup"] > 0:
        last = _rows.latest(db, fp)
        if (last is not None and last["created_at"] >= at - rule["dedup"]
                and json.loads(last["payload"]).get("status") == "firing"):
            metrics.ALERTS_SENT.inc(channel=_channel_label(rule["channel"]), outcome="deduplicated")
            return None
    pending = _rows.waiting(db)
    if pending >= OUTBOX_LIMIT:
        metrics.ALERTS_SENT.inc(channel=_channel_label(rule["channel"]), outcome="dropped")
        log.warning("alert outbox full (%d messages waiting); alert of rule %s dropped", pending, rule["id"])
        return None
    msg_id = "msg_" + uuid.uuid4().hex
    _rows.queue(db, msg_id, rule["id"], rule["channel"], fp, json.dumps(message()), at)
    return msg_id


def evaluate(home, detector: str, result, why=None) -> list:
    """Check the detector's rules against one detection (a :class:`~pynomaly.DetectionResult`
    or an :class:`Observation`) and queue the alerts that fire, and the ``resolved`` messages of
    those it clears; returns the queued message ids. Cheap when the detector has no rules (one
    indexed read) or the detection no anomaly and no alert firing (a read per rule). ``why``:
    as :class:`Observation`'s, for a result."""
    obs = result if isinstance(result, Observation) else Observation.of(detector, result, why)
    db = _connect(home)
    try:
        return _evaluate(db, _rows.rules(db, detector), obs)
    finally:
        db.close()



class Evaluator:
    """Rules of a home kept in memory (re-read every ``refresh`` seconds, so a new or removed
    rule takes effect within that), for a server that evaluates many detections: detectors
    without rules cost a dict lookup."""

    def __init__(self, home, refresh: float = 2.0):
        self.home = migrated_home(home)
        self.refresh = refresh
        self._rules: dict = {}
        self._read_at = -math.inf
        self._db = None

    def rules(self, detector: str) -> list:
        now = time.monotonic()
        if now - self._read_at > self.refresh:
            if self._db is None:
                self._db = _connect(self.home)
            by = {}
            for r in _rows.rules(self._db):
                by.setdefault(r["detector"], []).append(r)
            self._rules, self._read_at = by, now
        return self._rules.get(detector, [])

    def observe(self, obs: Observation) -> list:
        rules = self.rules(obs.detector)
        if not rules:
            return []
        return _evaluate(self._db, rules, obs)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


# -- delivery --------------------------------------------------------------------------------
def _backoff(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half the doubled delay fixed, half random."""
    d = min(cap, base * 2 ** max(attempts - 1, 0))
    return d / 2 + random.uniform(0, d / 2)


def deliver(home, *, limit: int = 100, backoff: float = BACKOFF, max_backoff: float = MAX_BACKOFF,
            worker: Optional[str] = None) -> dict:
    """Send the due messages of the outbox (at most ``limit``); returns counts of ``sent``,
    ``retry`` and ``dead``. Several dispatchers may run at once: each message is claimed by
    one (a claim older than :data:`CLAIM_LEASE` is taken back, for a dispatcher that died).

    A message goes where its rule, as signed, says: the rule's channel and target, checked
    against its signature (:func:`approve_rule`), never a copy in the outbox row. A message
    whose rule is unsigned or was altered is dead at once, and the refusal is audited."""
    from pynomaly.service import metrics

    worker = worker or f"{os.getpid()}:{threading.get_ident()}"
    out = {"sent": 0, "retry": 0, "dead": 0}
    db = home if hasattr(home, "execute") else _connect(home)
    try:
        now = _now()
        if not _rows.any_due(db, now):
            return out  # nothing due: an idle dispatcher only reads
        rows = _rows.claim_due(db, worker, now, CLAIM_LEASE, limit)
        key = _signing_key(db) if rows else b""
        for r in rows:
            label = _channel_label(r["channel"]) if r["rid"] is not None else "none"
            error, final = None, False
            if r["rid"] is None:
                error, final = "its rule was removed", True
            elif not _signed(r, key, r["rid"]):
                error, final = (f"rule {r['rid']} is not approved (unsigned, or altered since it was signed); if it "
                                f"is yours, check it and run: pynomaly alerts approve {r['rid']}"), True
                _audit_refusal(db, r, error)
            else:
                try:
                    ch = channel_for(r["channel"], r["target"], r["secret"], r["timeout"])
                    if isinstance(ch, WebhookChannel):
                        ch.send_alert(json.loads(r["payload"]), [r["target"]], msg_id=r["id"])
                    else:
                        ch.send_alert(json.loads(r["payload"]), [r["target"]])
                except Exception as e:  # noqa: BLE001 - a user's channel may raise anything
                    error = f"{type(e).__name__}: {e}"
            attempts = r["attempts"] + 1
            if error is None:
                _rows.sent(db, r["id"], worker, attempts, _now())
                out["sent"] += 1
                metrics.ALERTS_SENT.inc(channel=label, outcome="sent")
            elif final or attempts >= (r["max_attempts"] or 1):
                _rows.dead(db, r["id"], worker, attempts, error)
                out["dead"] += 1
                metrics.ALERTS_SENT.inc(channel=label, outcome="dead")
                log.warning("alert %s is dead after %d attempt(s): %s", r["id"], attempts, error)
            else:
                _rows.retry_at(db, r["id"], worker, attempts, _now() + _backoff(attempts, backoff, max_backoff), error)
                out["retry"] += 1
                metrics.ALERTS_SENT.inc(channel=label, outcome="retry")
        return out
    finally:
        if db is not home:
            db.close()


def _audit_refusal(db, r, error: str) -> None:
    """Record in the home's audit trail that a message of an unapproved rule was not sent,
    with what the rule asked for (someone with write access to the rows may have made it)."""
    from pynomaly.store.audit import default_actor
    from pynomaly.store.repository import Repository

    try:
        with Repository(db.home) as repo:
            repo.audit_append(actor=default_actor(), action="alerts.refused", target=r["rid"],
                              origin=f"alerts dispatcher pid={os.getpid()}", outcome=f"refused: {error}",
                              detail={"message": r["id"], "detector": r["detector"], "channel": r["channel"],
                                      "target": r["target"]})
    except Exception as e:  # noqa: BLE001 - the message is dead-lettered whatever the trail says
        log.error("alert %s refused but not audited: %s", r["id"], e)


def outbox(home, state: Optional[str] = None, limit: int = 100) -> list:
    """Messages of the outbox, newest first (``state``: pending, sending, sent or dead)."""
    if state is not None and state not in ("pending", "sending", "sent", "dead"):
        raise InvalidInputError(f"unknown outbox state {state!r}; accepted: pending, sending, sent, dead")
    db = _connect(home)
    try:
        out = []
        for r in _rows.messages(db, state, limit):
            d = dict(r)
            d["payload"] = json.loads(d["payload"])
            for k in ("next_at", "created_at", "sent_at", "claimed_until"):
                d[k] = _iso(d[k]) if d[k] is not None else None
            out.append(d)
        return out
    finally:
        db.close()


class Dispatcher:
    """A thread that delivers the outbox of a home every ``interval`` seconds (sooner after
    :meth:`wake`), until :meth:`stop`."""

    def __init__(self, home, interval: float = 0.5, backoff: float = BACKOFF, max_backoff: float = MAX_BACKOFF):
        self.home = migrated_home(home)
        self.interval = interval
        self.backoff, self.max_backoff = backoff, max_backoff
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Dispatcher":
        self._thread = threading.Thread(target=self._run, daemon=True, name="pynomaly-alerts")
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        db = None
        while not self._stop.is_set():
            try:
                if db is None:
                    db = _connect(self.home)
                while deliver(db, backoff=self.backoff, max_backoff=self.max_backoff)["sent"] and not self._stop.is_set():
                    pass
            except Exception as e:  # noqa: BLE001 - keep delivering; the database may be busy
                log.warning("alert delivery: %s", e)
            self._wake.wait(self.interval)
            self._wake.clear()
        if db is not None:
            db.close()
