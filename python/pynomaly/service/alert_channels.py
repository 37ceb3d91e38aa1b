"""Alert messages and the channels that carry them (part of :mod:`pynomaly.service.alerts`).

The message is Alertmanager's v4 webhook payload (:func:`payload`); channels implement
``send_alert(message, recipients)``: ``webhook`` (signed per Standard Webhooks, never to an
internal address unless allowed, no redirects), ``command``, ``log``, and a user's own (an entry
point of ``pynomaly.alert_channels`` or ``"package.module:Class"``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import shlex
import subprocess
import time
import uuid
from typing import Callable, Optional

from pynomaly._errors import InvalidInputError, PynomalyError

BUILTIN_CHANNELS = ("webhook", "command", "log")
ALERTNAME = "PynomalyAnomalies"


class DeliveryError(PynomalyError):
    """A channel could not deliver a message (retried later)."""


def _iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _labels(rule) -> dict:
    return {"alertname": ALERTNAME, "detector": rule["detector"], "rule": rule["id"], "severity": "warning"}


def fingerprint(labels: dict) -> str:
    """Alertmanager-style fingerprint of a label set: 16 hex digits."""
    text = "\xff".join(f"{k}\xff{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def payload(rule, obs, window_total: Optional[int] = None, *, resolves: Optional[dict] = None,
            why: Optional[list] = None) -> dict:
    """The Alertmanager v4 webhook message for a rule fired by detections; with ``resolves``
    (the firing message it ends), the ``resolved`` message for it: same labels and fingerprint,
    its ``startsAt``, and ``endsAt`` the time of the detection that cleared it. ``why``: rows
    that fired it with their top features (``{"row"?, "score", "top_features"}``), carried in
    the annotations ``top_features`` (to read) and ``top_features_json`` (to parse), and in the
    description."""
    conds = []
    if rule["score_above"] is not None:
        conds.append(f"score > {rule['score_above']:g}")
    if rule["rate_above"] is not None:
        conds.append(f"anomaly rate > {rule['rate_above']:g}")
    if rule["count"] is not None:
        conds.append(f">= {rule['count']} anomalies within {rule['within']:g} s")
    what = f"{obs.anomalies} anomal{'y' if obs.anomalies == 1 else 'ies'} in {obs.rows} row(s)"
    annotations = {
        "summary": f"detector {obs.detector}: {what}",
        "description": (f"rule {rule['id']} ({', '.join(conds) or 'any anomaly'}) "
                        f"{'fired' if resolves is None else 'cleared'} on "
                        f"{obs.detections} detection(s) of {obs.detector}"
                        + (f" v{obs.version}" if obs.version is not None else "") + f": {what}"),
        "anomalies": str(obs.anomalies),
        "rows": str(obs.rows),
        "max_score": f"{obs.max_score:.6g}",
        "anomaly_rate": f"{obs.max_rate:.6g}",
    }
    if window_total is not None:
        annotations["anomalies_in_window"] = str(window_total)
    if why:
        annotations["top_features"] = why_text(why)
        annotations["top_features_json"] = json.dumps(why, separators=(",", ":"))
        annotations["description"] += f". Why: {annotations['top_features']}"
    if resolves is not None:
        annotations["summary"] = f"detector {obs.detector}: resolved ({what})"
    return envelope(rule, annotations, obs.at, resolves=resolves)


def why_text(why: list) -> str:
    """Rows and their top features in a line: ``row 12 (score 0.71): x3 = 9.2 (+0.41), ...; ...``
    (annotations are strings)."""
    return "; ".join(
        (f"row {r['row']} " if "row" in r else "a row ") + f"(score {r['score']:.4g}): "
        + ", ".join(f"{f['feature']} = {f['value']:.6g} ({f['attribution']:+.3g})" for f in r["top_features"])
        for r in why)


def why_once(obs) -> Callable[[], list]:
    """``obs.why()`` (an alerts.Observation's) once, however many rules fire ([] without one,
    or when it fails: an alert goes out without its why rather than not at all)."""
    done: list = []

    def once() -> list:
        if not done:
            try:
                done.append(obs.why() if obs.why is not None else [])
            except Exception as e:  # noqa: BLE001 - a detector may fail to explain; the alert still fires
                logging.getLogger("pynomaly.alerts").warning("alert of %r sent without its top features: %s",
                                                             obs.detector, e)
                done.append([])
        return done[0]

    return once


def envelope(rule, annotations: dict, at: float, *, resolves: Optional[dict] = None) -> dict:
    """The Alertmanager v4 webhook message of a fired ``rule`` with these ``annotations``
    (with ``resolves``, the firing message it ends: the ``resolved`` one)."""
    labels = _labels(rule)
    group = {"alertname": ALERTNAME, "detector": rule["detector"]}
    status, starts, ends = "firing", _iso(at), "0001-01-01T00:00:00Z"
    if resolves is not None:
        status, ends = "resolved", _iso(at)
        starts = next(iter(resolves.get("alerts") or [{}])).get("startsAt", starts)
    return {
        "version": "4",
        "groupKey": "{}:{" + ", ".join(f'{k}="{v}"' for k, v in group.items()) + "}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": f"pynomaly-{rule['channel']}",
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": starts,
            "endsAt": ends,
            "generatorURL": "",
            "fingerprint": fingerprint(labels),
        }],
    }


# -- channels --------------------------------------------------------------------------------
def _key(secret: str) -> bytes:
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        raise InvalidInputError("a webhook secret looks like 'whsec_' followed by base64")
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True)
    except ValueError:
        raise InvalidInputError("a webhook secret looks like 'whsec_' followed by base64") from None
    if len(key) < 16:
        raise InvalidInputError("a webhook secret must hold at least 16 bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value: ``v1,`` + base64(HMAC-SHA256(key,
    "id.timestamp.body"))."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers, body: bytes, tolerance: float = 300.0) -> bool:
    """What a receiver does: check ``webhook-signature`` (any of its space-separated ``v1,``
    signatures) and that ``webhook-timestamp`` is within ``tolerance`` seconds of now.

    ``headers``: any mapping (or sequence of pairs) of header names to values; names are matched
    regardless of case, as HTTP says (a plain dict with ``Webhook-Id`` works)."""
    pairs = headers.items() if hasattr(headers, "items") else headers
    named = {str(k).lower(): v for k, v in pairs}
    msg_id, ts, sigs = named.get("webhook-id"), named.get("webhook-timestamp"), named.get("webhook-signature")
    if not (msg_id and ts and sigs):
        return False
    try:
        t = int(ts)
    except ValueError:
        return False
    if abs(time.time() - t) > tolerance:
        return False
    want = sign(secret, msg_id, t, body)
    return any(hmac.compare_digest(want, s) for s in sigs.split(" "))


ALLOW_ENV = "PYNOMALY_WEBHOOK_ALLOW"


def _allowed_networks() -> list:
    """Networks named in ``$PYNOMALY_WEBHOOK_ALLOW`` (comma-separated, e.g. ``127.0.0.0/8,::1``):
    internal addresses webhooks may target all the same (a receiver on the same machine)."""
    import ipaddress

    nets = []
    for part in os.environ.get(ALLOW_ENV, "").split(","):
        if part.strip():
            try:
                nets.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                # A bad setting, not a failed delivery: `alerts add` says so as bad input, and a
                # dispatcher keeps the message for a retry once the setting is mended.
                raise InvalidInputError(
                    f"{ALLOW_ENV} holds {part.strip()!r}, which is not an address or network (e.g. 127.0.0.0/8)"
                ) from None
    return nets


def _internal(ip) -> bool:
    """Loopback, link-local (cloud metadata services live there), unspecified or multicast:
    addresses a webhook has no business reaching unless the operator allows it."""
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast


def _refuse_named_internal_host(host: str) -> None:
    """At ``add_rule``: a literal internal address or ``localhost`` is refused now (a name is
    resolved, and checked, at each delivery)."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host.lower().rstrip(".") not in ("localhost", "localhost.localdomain") and not host.lower().endswith(".localhost"):
            return
        ip = ipaddress.ip_address("127.0.0.1")
    if _internal(ip) and not any(ip in n for n in _allowed_networks()):
        raise InvalidInputError(
            f"webhook target {host!r} is a loopback, link-local or unspecified address; allow it by setting "
            f"{ALLOW_ENV} (e.g. {ALLOW_ENV}=127.0.0.0/8) for a receiver on this machine"
        )


def _checked_address(host: str, port: int) -> str:
    """One address of ``host`` to connect to, every one of its addresses checked first: a name
    that resolves to an internal address is refused, unless allowed (see :func:`_internal`)."""
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise DeliveryError(f"cannot resolve {host}: {e}") from None
    allowed = _allowed_networks()
    addrs = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if _internal(ip) and not any(ip in n for n in allowed):
            raise DeliveryError(f"{host} resolves to {ip}, an internal address webhooks may not target "
                                f"(allow it with {ALLOW_ENV})")
        addrs.append(info[4][0])
    return addrs[0]


class WebhookChannel:
    """POSTs the message as JSON, signed per Standard Webhooks; a 2xx answer is delivery.

    The connection goes to an address checked when it was resolved (no second lookup for a
    rebinding name to change), and redirects are not followed: a receiver that answers 3xx is
    a failed delivery, so a webhook cannot be bounced to an internal address."""

    def __init__(self, secret: Optional[str] = None, timeout: float = 10.0):
        self.secret = secret
        self.timeout = timeout

    def send_alert(self, message: dict, recipients: list, msg_id: Optional[str] = None) -> None:
        body = json.dumps(message).encode()
        msg_id = msg_id or "msg_" + uuid.uuid4().hex
        ts = int(time.time())
        headers = {"content-type": "application/json", "user-agent": "pynomaly-alerts", "webhook-id": msg_id,
                   "webhook-timestamp": str(ts)}
        if self.secret:
            headers["webhook-signature"] = sign(self.secret, msg_id, ts, body)
        for url in recipients:
            self._post(url, body, headers)

    def _post(self, url: str, body: bytes, headers: dict) -> None:
        import http.client
        import socket
        import ssl
        from urllib.parse import urlsplit

        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise DeliveryError(f"{url} is not an http:// or https:// URL")
        port = u.port or (443 if u.scheme == "https" else 80)
        addr = _checked_address(u.hostname, port)
        timeout = self.timeout

        class Pinned(http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection):
            def connect(self):
                sock = socket.create_connection((addr, port), timeout)
                if u.scheme == "https":
                    sock = self._context.wrap_socket(sock, server_hostname=u.hostname)
                self.sock = sock

        kw = {"context": ssl.create_default_context()} if u.scheme == "https" else {}
        conn = Pinned(u.hostname, port, timeout=timeout, **kw)
        try:
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            r.read(65536)
            if 300 <= r.status < 400:
                raise DeliveryError(f"{url} answered {r.status} {r.reason} (to {r.getheader('location')!r}); "
                                    "redirects are not followed: point the rule at the final URL")
            if not 200 <= r.status < 300:
                raise DeliveryError(f"{url} answered {r.status} {r.reason}")
        except (OSError, http.client.HTTPException) as e:
            raise DeliveryError(f"{url}: {e}") from None
        finally:
            conn.close()


class CommandChannel:
    """Runs a program (the target, split like a shell would, never through a shell) with the
    message as JSON on stdin; exit status 0 within the timeout is delivery."""

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout

    def send_alert(self, message: dict, recipients: list) -> None:
        for cmd in recipients:
            try:
                r = subprocess.run(shlex.split(cmd), input=json.dumps(message).encode(), capture_output=True,
                                   timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise DeliveryError(f"command did not finish within {self.timeout:g} s: {cmd}") from None
            except OSError as e:
                raise DeliveryError(f"cannot run {cmd!r}: {e}") from None
            if r.returncode != 0:
                err = r.stderr.decode(errors="replace").strip().splitlines()
                raise DeliveryError(f"command exited with {r.returncode}: {cmd}" + (f" ({err[-1]})" if err else ""))


class LogChannel:
    """Appends the message as one JSON line to a file (created if absent)."""

    def send_alert(self, message: dict, recipients: list) -> None:
        line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        for path in recipients:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                raise DeliveryError(f"cannot append to {path}: {e}") from None


def _channel_label(name: str) -> str:
    return name if name in BUILTIN_CHANNELS else "plugin"


def channel_for(name: str, target: str = "", secret: Optional[str] = None, timeout: float = 10.0):
    """The channel object for a rule's ``channel`` name (built-in, entry point or import path)."""
    if name == "webhook":
        return WebhookChannel(secret, timeout)
    if name == "command":
        return CommandChannel(timeout)
    if name == "log":
        return LogChannel()
    cls = None
    if ":" in name:
        import importlib

        mod, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise InvalidInputError(f"alert channel {name!r} cannot be imported: {e}") from None
    else:
        from importlib.metadata import entry_points

        found = entry_points(group="pynomaly.alert_channels", name=name)
        if not found:
            raise InvalidInputError(
                f"unknown alert channel {name!r}; accepted: webhook, command, log, an entry point of the "
                "'pynomaly.alert_channels' group, or 'package.module:Class'"
            )
        cls = next(iter(found)).load()
    obj = cls() if isinstance(cls, type) else cls
    if not callable(getattr(obj, "send_alert", None)):
        raise InvalidInputError(f"alert channel {name!r} has no send_alert(message, recipients) method")
    return obj


def check_target(channel, target, secret: Optional[str], timeout: float, from_network: bool = False):
    """A rule's channel and target checked as :func:`pynomaly.service.alerts.add_rule` takes
    them: ``(target, secret)``, the target normalised (a log file's absolute path) and a
    webhook's secret made when not given. ``from_network``: a network caller may only add
    webhooks (the other channels run code or write files on the server)."""
    if not isinstance(channel, str) or not channel:
        raise InvalidInputError("an alert rule needs a channel: webhook, command, log or a plugin name")
    if from_network and channel != "webhook":
        raise InvalidInputError(
            f"alert rules added over the network may only be webhooks; a {channel} channel runs code or writes "
            "files on the server, so add it on the server's machine: pynomaly alerts add"
        )
    if not isinstance(target, str) or not target.strip():
        raise InvalidInputError(f"the {channel} channel needs a target (URL, command or file)")
    if channel == "webhook":
        from urllib.parse import urlsplit

        u = urlsplit(target)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise InvalidInputError(f"webhook target must be an http:// or https:// URL, got {target!r}")
        if secret is None:
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        _key(secret)
        _refuse_named_internal_host(u.hostname or "")
    elif channel == "command":
        try:
            if not shlex.split(target):
                raise ValueError("empty")
        except ValueError as e:
            raise InvalidInputError(f"command target cannot be parsed ({e}): {target!r}") from None
    elif channel == "log":
        target = os.path.abspath(os.path.expanduser(target))
    else:
        channel_for(channel, target, secret, timeout)  # an unknown plugin is refused now
    return target, secret
