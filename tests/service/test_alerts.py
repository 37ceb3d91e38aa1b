"""Alerts (pynomaly.alerts): rules, the outbox, delivery to a real local HTTP receiver
(Alertmanager v4 shape, Standard Webhooks signature checked by the receiver's own code),
retries, dead letters, deduplication, a kill -9 between detection and delivery, the command,
log and plugin channels, the CLI, and detections of the daemon's native paths."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import pynomaly
from pynomaly.service import alerts
from pynomaly import service
from pynomaly._errors import InvalidInputError

from _daemon_helpers import DaemonProcess, cardio, wait_until
from _homes import raw_sql

PYNOMALY = [sys.executable, "-m", "pynomaly"]


class Receiver:
    """A webhook receiver on 127.0.0.1: records each POST (headers, body) and answers with the
    next of ``codes`` (then 200)."""

    def __init__(self, codes=()):
        self.codes = list(codes)
        self.got = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                code = outer.codes.pop(0) if outer.codes else 200
                outer.got.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                  "code": code})
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def ok(self):
        return [g for g in self.got if g["code"] == 200]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def receiver_verifies(secret: str, headers: dict, body: bytes) -> bool:
    """The receiver's side of Standard Webhooks, written here from the spec (not pynomaly's)."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(s.startswith("v1,") and hmac.compare_digest(s[3:], want) for s in headers["webhook-signature"].split())


def _trained(home):
    X = cardio()
    service.train(home, "cardio", X, params={"random_state": 0, "contamination": 0.1})
    return home, X


@pytest.fixture
def trained(home):
    """A home (either backend) with a detector trained on cardio."""
    return _trained(home)


@pytest.fixture
def trained_folder(tmp_path):
    """The same in a folder home, for the daemon's tests (its repository wiring is the same
    code on both backends; running it twice would only double their time)."""
    return _trained(tmp_path / "home")


def deliver_until(home, cond, timeout=30.0):
    """Run deliveries (as a dispatcher would) until cond() holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alerts.deliver(home, backoff=0.05, max_backoff=0.2)
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# -- payload and signature --------------------------------------------------------------------
def test_webhook_payload_is_alertmanager_v4_and_its_signature_verifies(trained, receiver):
    home, X = trained
    rule = alerts.add_rule(home, "cardio", "webhook", receiver.url)
    assert rule["secret"].startswith("whsec_")
    result = service.detect(home, "cardio", X)
    assert alerts.deliver(home) == {"sent": 1, "retry": 0, "dead": 0}
    (got,) = receiver.got
    h, body = got["headers"], got["body"]
    assert h["content-type"] == "application/json"
    assert receiver_verifies(rule["secret"], h, body)
    assert abs(int(h["webhook-timestamp"]) - time.time()) < 60
    assert alerts.verify(rule["secret"], h, body)
    assert not alerts.verify(rule["secret"], h, body + b" ")
    # Header names are case-insensitive: as a receiver's framework may hand them over.
    as_sent = {k.title(): v for k, v in h.items()}
    assert "Webhook-Id" in as_sent and alerts.verify(rule["secret"], as_sent, body)
    assert alerts.verify(rule["secret"], list({k.upper(): v for k, v in h.items()}.items()), body)
    m = json.loads(body)
    assert m["version"] == "4" and m["status"] == "firing" and m["receiver"]
    assert set(m) >= {"groupKey", "truncatedAlerts", "groupLabels", "commonLabels", "commonAnnotations", "externalURL"}
    (a,) = m["alerts"]
    assert a["status"] == "firing" and a["labels"]["alertname"] == "PynomalyAnomalies"
    assert a["labels"]["detector"] == "cardio" and m["groupLabels"]["detector"] == "cardio"
    assert set(a) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert all(isinstance(v, str) for v in a["annotations"].values())  # Alertmanager's annotations are strings
    assert a["annotations"]["anomalies"] == str(int(result.labels.sum()))
    assert float(a["annotations"]["max_score"]) == pytest.approx(result.scores.max(), rel=1e-5)
    assert len(a["fingerprint"]) == 16
    # The message id is the outbox id: the same on every attempt, so receivers can deduplicate.
    assert h["webhook-id"] == alerts.outbox(home, "sent")[0]["id"]


# -- conditions -------------------------------------------------------------------------------
def test_conditions_decide_what_fires(trained, tmp_path):
    home, X = trained
    scores = service.load_for_scoring(home, "cardio").score(X)
    log = str(tmp_path / "a.log")
    top = float(scores.max())
    fired = lambda: {m["rule_id"] for m in alerts.outbox(home)}  # noqa: E731
    never = alerts.add_rule(home, "cardio", "log", log, score_above=top + 1)
    score = alerts.add_rule(home, "cardio", "log", log, score_above=top - 1e-6, dedup=0)
    rate_no = alerts.add_rule(home, "cardio", "log", log, rate_above=0.5)
    rate_yes = alerts.add_rule(home, "cardio", "log", log, rate_above=0.05)
    count = alerts.add_rule(home, "cardio", "log", log, count=3 * int((scores > np.median(scores)).sum()), within=600, dedup=0)
    other = alerts.add_rule(home, "other", "log", log)
    service.detect(home, "cardio", X, save=False)
    assert fired() == {score["id"], rate_yes["id"]}
    service.detect(home, "cardio", X, save=False, threshold=float(np.median(scores)))  # half the rows
    service.detect(home, "cardio", X, save=False, threshold=float(np.median(scores)))
    assert count["id"] not in fired()
    service.detect(home, "cardio", X, save=False, threshold=float(np.median(scores)))
    assert count["id"] in fired()  # 3 detections of n/2 anomalies reached the count
    assert never["id"] not in fired() and rate_no["id"] not in fired() and other["id"] not in fired()
    service.detect(home, "cardio", X[:5], save=False, threshold=top + 1)  # no anomaly: nothing to check
    assert alerts.evaluate(home, "cardio", alerts.Observation("cardio", 1, 5, 0, -np.inf, 0.0)) == []


def test_dedup_within_the_window(trained, tmp_path):
    home, X = trained
    alerts.add_rule(home, "cardio", "log", str(tmp_path / "a.log"), dedup=600)
    for _ in range(3):
        service.detect(home, "cardio", X, save=False)
    assert len(alerts.outbox(home)) == 1
    alerts.add_rule(home, "cardio", "log", str(tmp_path / "b.log"), dedup=0)  # another rule: its own fingerprint
    service.detect(home, "cardio", X, save=False)
    service.detect(home, "cardio", X, save=False)
    assert len(alerts.outbox(home)) == 3
    # The window passes: the first rule fires again.
    raw_sql(home, "UPDATE alert_outbox SET created_at = created_at - 601")
    service.detect(home, "cardio", X, save=False)
    assert len({m["fingerprint"] for m in alerts.outbox(home)}) == 2 and len(alerts.outbox(home)) == 5


# -- retries, dead letters, a receiver that is down -------------------------------------------------
def test_retry_after_500_then_delivered(trained):
    home, X = trained
    r = Receiver(codes=[500, 503])
    try:
        alerts.add_rule(home, "cardio", "webhook", r.url)
        service.detect(home, "cardio", X, save=False)
        assert alerts.deliver(home, backoff=0.05)["retry"] == 1
        m = alerts.outbox(home)[0]
        assert m["state"] == "pending" and m["attempts"] == 1 and "500" in m["last_error"]
        assert deliver_until(home, lambda: alerts.outbox(home)[0]["state"] == "sent")
        assert [g["code"] for g in r.got] == [500, 503, 200]
        assert len({g["headers"]["webhook-id"] for g in r.got}) == 1  # one message, three attempts
        assert alerts.outbox(home)[0]["attempts"] == 3
    finally:
        r.close()


def test_receiver_down_then_up(trained):
    home, X = trained
    port = free_port()
    alerts.add_rule(home, "cardio", "webhook", f"http://127.0.0.1:{port}/hook")
    service.detect(home, "cardio", X, save=False)
    assert alerts.deliver(home, backoff=0.05)["retry"] == 1
    assert "refused" in alerts.outbox(home)[0]["last_error"].lower()
    r = Receiver()
    r.server.server_close()  # rebind the receiver on the port that was down
    r.server = ThreadingHTTPServer(("127.0.0.1", port), r.server.RequestHandlerClass)
    r.thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    r.thread.start()
    try:
        assert deliver_until(home, lambda: len(r.ok()) == 1)
    finally:
        r.close()


def test_backoff_grows_with_jitter():
    d = [alerts._backoff(a, 1.0, 300.0) for a in range(1, 12)]
    for a, x in enumerate(d, start=1):
        full = min(300.0, 2 ** (a - 1))
        assert full / 2 <= x <= full
    assert len({round(alerts._backoff(3, 1.0, 300.0), 9) for _ in range(20)}) > 1  # jitter


def test_dead_letter_after_max_attempts(trained):
    home, X = trained
    r = Receiver(codes=[500] * 10)
    try:
        alerts.add_rule(home, "cardio", "webhook", r.url, max_attempts=3)
        service.detect(home, "cardio", X, save=False)
        assert deliver_until(home, lambda: alerts.outbox(home)[0]["state"] == "dead")
        assert len(r.got) == 3
        dead = alerts.outbox(home, "dead")[0]
        assert dead["attempts"] == 3 and "500" in dead["last_error"]
        alerts.deliver(home)
        assert len(r.got) == 3  # dead letters are not retried
    finally:
        r.close()


# -- nothing lost -----------------------------------------------------------------------------------
def test_kill_9_between_detection_and_delivery_loses_nothing(trained, receiver, tmp_path):
    home, X = trained
    alerts.add_rule(home, "cardio", "webhook", receiver.url)
    np.save(tmp_path / "x.npy", X)
    code = ("import os, signal, sys; from pynomaly import service\n"
            "service.detect(sys.argv[1], 'cardio', sys.argv[2])\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code, str(home), str(tmp_path / "x.npy")])
    assert p.returncode == -signal.SIGKILL
    assert receiver.got == [] and alerts.outbox(home)[0]["state"] == "pending"
    assert alerts.deliver(home)["sent"] == 1 and len(receiver.ok()) == 1


def test_a_claim_of_a_dispatcher_killed_mid_send_is_taken_back(trained, receiver):
    home, X = trained
    alerts.add_rule(home, "cardio", "webhook", receiver.url)
    service.detect(home, "cardio", X, save=False)
    # what a dispatcher killed after its claim leaves
    raw_sql(home, "UPDATE alert_outbox SET state='sending', claimed_by='dead', claimed_until=?", (time.time() + 60,))
    assert alerts.deliver(home)["sent"] == 0  # its lease holds
    raw_sql(home, "UPDATE alert_outbox SET claimed_until=?", (time.time() - 1,))
    assert alerts.deliver(home)["sent"] == 1 and len(receiver.ok()) == 1


def test_dispatcher_thread_delivers(trained, receiver):
    home, X = trained
    alerts.add_rule(home, "cardio", "webhook", receiver.url)
    d = alerts.Dispatcher(home, interval=0.05).start()
    try:
        service.detect(home, "cardio", X, save=False)
        assert wait_until(lambda: len(receiver.ok()) == 1)
    finally:
        d.stop()


# -- the other channels -----------------------------------------------------------------------------
def test_command_channel_gets_the_message_on_stdin_and_its_failures_retry(trained, tmp_path):
    home, X = trained
    out = tmp_path / "got.json"
    script = f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())"
    alerts.add_rule(home, "cardio", "command", f"{sys.executable} -c {json.dumps(script)}")
    service.detect(home, "cardio", X, save=False)
    assert alerts.deliver(home)["sent"] == 1
    assert json.loads(out.read_text())["alerts"][0]["labels"]["detector"] == "cardio"
    alerts.add_rule(home, "cardio", "command", f"{sys.executable} -c 'import sys; sys.exit(3)'", dedup=0)
    alerts.add_rule(home, "cardio", "command", f"{sys.executable} -c 'import time; time.sleep(30)'", dedup=0,
                    timeout=0.5)
    service.detect(home, "cardio", X, save=False)
    assert alerts.deliver(home) == {"sent": 0, "retry": 2, "dead": 0}
    errors = " | ".join(m["last_error"] for m in alerts.outbox(home, "pending"))
    assert "exited with 3" in errors and "did not finish within 0.5 s" in errors


def test_log_channel_appends_json_lines(trained, tmp_path):
    home, X = trained
    log = tmp_path / "alerts.log"
    alerts.add_rule(home, "cardio", "log", str(log), dedup=0)
    service.detect(home, "cardio", X, save=False)
    service.detect(home, "cardio", X, save=False)
    alerts.deliver(home)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["status"] == "firing" for x in lines)


def test_a_channel_of_ones_own_by_import_path(trained, tmp_path, monkeypatch):
    home, X = trained
    (tmp_path / "mychannel.py").write_text(
        "SENT = []\n"
        "class Pager:\n"
        "    def send_alert(self, message, recipients):\n"
        "        SENT.append((message['alerts'][0]['labels']['detector'], recipients))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mychannel", raising=False)  # a fresh one per backend's run
    alerts.add_rule(home, "cardio", "mychannel:Pager", "ops-team")
    service.detect(home, "cardio", X, save=False)
    assert alerts.deliver(home)["sent"] == 1
    import mychannel

    assert mychannel.SENT == [("cardio", ["ops-team"])]
    with pytest.raises(InvalidInputError, match="cannot be imported"):
        alerts.add_rule(home, "cardio", "nomodule:Nope", "x")
    with pytest.raises(InvalidInputError, match="unknown alert channel"):
        alerts.add_rule(home, "cardio", "pagerduty", "x")


@pytest.mark.parametrize("kwargs, message", [
    ({"channel": "webhook", "target": "ftp://x"}, "http:// or https://"),
    ({"channel": "webhook", "target": "http://x", "secret": "nope"}, "whsec_"),
    ({"channel": "log", "target": " "}, "needs a target"),
    ({"channel": "command", "target": "'unclosed"}, "cannot be parsed"),
    ({"score_above": float("nan")}, "score_above"),
    ({"rate_above": 1.5}, "rate_above"),
    ({"count": 0, "within": 60}, "count"),
    ({"count": 3}, "count and within go together"),
    ({"within": 0, "count": 2}, "within must be > 0"),
    ({"dedup": -1}, "dedup"),
    ({"max_attempts": 0}, "max_attempts"),
])
def test_bad_rules_are_refused(tmp_path, kwargs, message):
    args = {"channel": "log", "target": str(tmp_path / "a.log"), **kwargs}
    with pytest.raises(InvalidInputError, match=message):
        alerts.add_rule(tmp_path / "home", "cardio", args.pop("channel"), args.pop("target"), **args)
    with pytest.raises(alerts.RuleNotFoundError):
        alerts.remove_rule(tmp_path / "home", "nope")


# -- signed rules (issue 25, item 3) -------------------------------------------------------------------
def _refusals(home) -> list:
    return [e for e in service.audit_entries(home) if e["action"] == "alerts.refused"]


@pytest.mark.parametrize("channel, target", [
    ("command", "touch {pwned}"),
    ("os:system", "touch {pwned}"),  # a plugin named by a database string
    ("log", "{pwned}"),  # appending to any file the worker can write
])
def test_a_rule_altered_in_the_database_runs_nothing_and_is_audited(trained, tmp_path, channel, target):
    """Write access to the rows is not code execution: a rule edited in the database is not
    signed by the installation's key, so its message is dead-lettered, nothing runs, and the
    refusal (with what the rule asked for) is in the audit trail."""
    home, X = trained
    pwned = tmp_path / "pwned"
    rule = alerts.add_rule(home, "cardio", "log", str(tmp_path / "alerts.log"), dedup=0)
    assert alerts.list_rules(home)[0]["approved"] is True
    raw_sql(home, "UPDATE alert_rules SET channel=?, target=? WHERE id=?",
            (channel, target.format(pwned=pwned), rule["id"]))
    service.detect(home, "cardio", X, save=False)
    assert alerts.deliver(home) == {"sent": 0, "retry": 0, "dead": 1}
    assert not pwned.exists() and not (tmp_path / "alerts.log").exists()
    [dead] = alerts.outbox(home, "dead")
    assert "not approved" in dead["last_error"] and f"pynomaly alerts approve {rule['id']}" in dead["last_error"]
    [entry] = _refusals(home)
    assert entry["target"] == rule["id"] and entry["outcome"].startswith("refused")
    assert str(pwned) in json.dumps(entry["detail"]) and service.audit_verify(home)["ok"]
    assert alerts.list_rules(home)[0]["approved"] is False


def test_a_signature_copied_from_another_rule_approves_nothing(trained, tmp_path, receiver):
    home, X = trained
    good = alerts.add_rule(home, "cardio", "webhook", receiver.url, dedup=0)
    evil = alerts.add_rule(home, "cardio", "log", str(tmp_path / "x.log"), dedup=0)
    raw_sql(home, "UPDATE alert_rules SET channel='webhook', target=?, signature=(SELECT signature FROM alert_rules"
                  " WHERE id=?) WHERE id=?", ("http://127.0.0.1:9/elsewhere", good["id"], evil["id"]))
    assert {r["id"]: r["approved"] for r in alerts.list_rules(home)} == {good["id"]: True, evil["id"]: False}
    service.detect(home, "cardio", X, save=False)
    assert alerts.deliver(home) == {"sent": 1, "retry": 0, "dead": 1}
    assert len(receiver.ok()) == 1


def test_delivery_follows_the_signed_rule_not_the_outbox_row(trained, tmp_path, receiver):
    """The outbox row's copy of the channel is not what decides: a row edited to name another
    channel is still delivered to the rule's own webhook."""
    home, X = trained
    alerts.add_rule(home, "cardio", "webhook", receiver.url)
    service.detect(home, "cardio", X, save=False)
    raw_sql(home, "UPDATE alert_outbox SET channel='command'")
    assert alerts.deliver(home)["sent"] == 1 and len(receiver.ok()) == 1


def test_rules_made_before_signing_need_one_approve(trained, tmp_path, receiver):
    """A home whose alert tables predate the numbered migrations (made on first use, no
    signature column): opening it migrates them (5, 6); its old rule is not approved until
    `pynomaly alerts approve`, after which its alerts are sent."""
    from _homes import is_pg

    home, X = trained
    log = tmp_path / "old.log"
    alerts.list_rules(home)  # tables at the current migration
    raw_sql(home, "ALTER TABLE alert_rules DROP COLUMN signature")
    raw_sql(home, "DELETE FROM schema_migrations WHERE version > 4")
    if not is_pg(home):
        raw_sql(home, "PRAGMA user_version = 4")
    raw_sql(home, "INSERT INTO alert_rules (id, detector, channel, target, secret, dedup, timeout, max_attempts,"
                  " created_at) VALUES ('oldrule00001', 'cardio', 'log', ?, NULL, 0, 10, 8, ?)", (str(log), time.time()))
    [old] = alerts.list_rules(home)
    assert old["approved"] is False
    assert [r[0] for r in raw_sql(home, "SELECT version FROM schema_migrations WHERE version IN (5, 6) ORDER BY version")] \
        == [5, 6]
    service.detect(home, "cardio", X, save=False)
    assert alerts.deliver(home)["dead"] == 1 and not log.exists()
    out = subprocess.run([*PYNOMALY, "--home", str(home), "alerts", "approve", "oldrule00001"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "approved rule oldrule00001" in out.stdout, out.stderr
    assert alerts.list_rules(home)[0]["approved"] is True
    assert any(e["action"] == "alerts.approve" and e["target"] == "oldrule00001" for e in service.audit_entries(home))
    service.detect(home, "cardio", X, save=False)
    assert alerts.deliver(home)["sent"] == 1 and json.loads(log.read_text())["status"] == "firing"
    with pytest.raises(alerts.RuleNotFoundError):
        alerts.approve_rule(home, "nope")


def test_rules_from_the_network_may_only_be_webhooks(tmp_path, receiver):
    home = tmp_path / "home"
    for channel, target in (("command", "true"), ("log", str(tmp_path / "a.log")), ("os:system", "true")):
        with pytest.raises(InvalidInputError, match="only be webhooks"):
            alerts.add_rule(home, "cardio", channel, target, from_network=True)
    assert alerts.add_rule(home, "cardio", "webhook", receiver.url, from_network=True)["approved"] is True
    assert [r["channel"] for r in alerts.list_rules(home)] == ["webhook"]


# -- webhooks never reach internal addresses unless allowed (issue 25, item 8) --------------------------
def test_webhooks_to_loopback_and_link_local_are_refused_unless_allowed(trained, receiver, monkeypatch):
    home, X = trained
    rule = alerts.add_rule(home, "cardio", "webhook", receiver.url, dedup=0)  # allowed by the test session
    monkeypatch.delenv("PYNOMALY_WEBHOOK_ALLOW")
    for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]/x", "http://169.254.169.254/latest",
                "http://0.0.0.0/x", "http://[::ffff:127.0.0.1]/x"):
        with pytest.raises(InvalidInputError, match="PYNOMALY_WEBHOOK_ALLOW"):
            alerts.add_rule(home, "cardio", "webhook", url)
    service.detect(home, "cardio", X, save=False)
    assert alerts.deliver(home) == {"sent": 0, "retry": 1, "dead": 0}
    [m] = alerts.outbox(home, "pending")
    assert m["rule_id"] == rule["id"] and "internal address" in m["last_error"] and receiver.got == []
    monkeypatch.setenv("PYNOMALY_WEBHOOK_ALLOW", "127.0.0.1/32")
    raw_sql(home, "UPDATE alert_outbox SET next_at = 0")
    assert alerts.deliver(home)["sent"] == 1 and len(receiver.ok()) == 1


def test_a_malformed_allow_setting_is_named(trained, receiver, monkeypatch):
    home, X = trained
    alerts.add_rule(home, "cardio", "webhook", receiver.url)
    monkeypatch.setenv("PYNOMALY_WEBHOOK_ALLOW", "127.0.0.0/8,loopback")
    with pytest.raises(InvalidInputError, match="PYNOMALY_WEBHOOK_ALLOW holds 'loopback'"):
        alerts.add_rule(home, "cardio", "webhook", "http://127.0.0.1:9/x")
    service.detect(home, "cardio", X, save=False)
    assert alerts.deliver(home) == {"sent": 0, "retry": 1, "dead": 0}  # kept until the setting is mended
    assert "PYNOMALY_WEBHOOK_ALLOW holds 'loopback'" in alerts.outbox(home, "pending")[0]["last_error"]


def test_webhooks_do_not_follow_redirects(trained, receiver):
    home, X = trained

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(307)
            self.send_header("location", receiver.url)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    bouncer = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=bouncer.serve_forever, daemon=True).start()
    try:
        alerts.add_rule(home, "cardio", "webhook", f"http://127.0.0.1:{bouncer.server_address[1]}/hook")
        service.detect(home, "cardio", X, save=False)
        assert alerts.deliver(home) == {"sent": 0, "retry": 1, "dead": 0}
        assert "redirects are not followed" in alerts.outbox(home, "pending")[0]["last_error"]
        assert receiver.got == []
    finally:
        bouncer.shutdown()
        bouncer.server_close()


# -- the CLI --------------------------------------------------------------------------------------
def test_cli_alerts_add_list_remove_and_detect_delivers(trained, receiver, tmp_path):
    home, X = trained
    np.save(tmp_path / "x.npy", X)

    def cli(*args, check=True):
        out = subprocess.run([*PYNOMALY, "--home", str(home), *args], capture_output=True, text=True, timeout=120)
        if check:
            assert out.returncode == 0, out.stderr
        return out

    added = json.loads(cli("alerts", "add", "--detector", "cardio", "--webhook", receiver.url, "--rate-above", "0.01",
                           "--json").stdout)
    assert added["rate_above"] == 0.01 and added["secret"].startswith("whsec_")
    listed = cli("alerts", "list").stdout
    assert added["id"] in listed and "rate>0.01" in listed
    cli("detect", "--detector", "cardio", "--data", str(tmp_path / "x.npy"))
    assert len(receiver.ok()) == 1 and receiver_verifies(added["secret"], receiver.got[0]["headers"], receiver.got[0]["body"])
    assert "sent" in cli("alerts", "outbox").stdout
    bad = cli("alerts", "add", "--detector", "cardio", "--count", "3", "--log", "x", check=False)
    assert bad.returncode == 1 and "count and within" in bad.stderr and "Traceback" not in bad.stderr
    assert "removed" in cli("alerts", "remove", added["id"]).stdout
    assert "no alert rules" in cli("alerts", "list").stdout


# -- the daemon ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [[], ["--no-native-loop"], ["--no-fast-path"]],
                         ids=["native-loop", "uvloop-fast-path", "python-path"])
def test_daemon_detections_fire_alerts_from_every_path(trained_folder, receiver, tmp_path, mode):
    home, X = trained_folder
    scorer = service.load_for_scoring(home, "cardio")
    scores = scorer.score(X)
    row = int(np.argmax(scores))
    rule = alerts.add_rule(home, "cardio", "webhook", receiver.url, score_above=float(scores[row]) - 1e-9)
    d = DaemonProcess(tmp_path, None, "--home", str(home), *mode)
    try:
        with pynomaly.Client(d.sock) as c:
            for i in range(50):  # single rows below the rule's score: no alert
                if i != row:
                    c.detect("cardio", X[i : i + 1])
            time.sleep(0.5)
            assert receiver.got == []
            c.detect("cardio", X[row : row + 1])  # the top row alone: served by the native path
            st = c.stats()
        assert wait_until(lambda: len(receiver.ok()) == 1, timeout=20)
        if not mode:
            assert st.fast_path_requests >= 50
    finally:
        assert d.stop() == 0
    h, body = receiver.got[0]["headers"], receiver.got[0]["body"]
    assert receiver_verifies(rule["secret"], h, body)
    a = json.loads(body)["alerts"][0]["annotations"]
    assert a["anomalies"] == "1" and float(a["max_score"]) == pytest.approx(scores[row], rel=1e-5)


def test_daemon_with_alerts_off_queues_nothing(trained_folder, receiver, tmp_path):
    home, X = trained_folder
    alerts.add_rule(home, "cardio", "webhook", receiver.url)
    d = DaemonProcess(tmp_path, None, "--home", str(home), "--no-alerts")
    try:
        with pynomaly.Client(d.sock) as c:
            c.detect("cardio", X)
        time.sleep(0.6)
    finally:
        assert d.stop() == 0
    assert alerts.outbox(home) == [] and receiver.got == []


def test_daemon_drains_counted_detections_into_the_outbox_on_sigterm(trained_folder, tmp_path):
    home, X = trained_folder
    alerts.add_rule(home, "cardio", "webhook", f"http://127.0.0.1:{free_port()}/down")
    d = DaemonProcess(tmp_path, None, "--home", str(home))
    try:
        with pynomaly.Client(d.sock) as c:
            c.detect("cardio", X)
    finally:
        assert d.stop() == 0  # at once: the last interval is handed over while draining
    assert len(alerts.outbox(home)) == 1
