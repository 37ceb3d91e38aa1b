"""The pages for what the home holds besides detectors (datasets, jobs, alerts, the audit
trail), the detectors list's sorting and filtering, version comparison, history placed by
time and health in people's words, over plain HTTP against a real server: what each page
shows agrees with the service layer, every role sees and may do what the API lets it, each
action is a POST refused without the form's CSRF token and recorded in the audit trail.
The browser's view of them is tests/api/test_web_pages_browser.py."""

from __future__ import annotations

import re
import sqlite3
import time
from html import unescape

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")
pytest.importorskip("jinja2", reason="the http extra is not installed (pip install '.[http]')")

from pynomaly import service  # noqa: E402
from pynomaly.service import alerts, jobs  # noqa: E402

from _http_helpers import ApiServer  # noqa: E402
from _web_helpers import WebClient, add_role_users, error_text  # noqa: E402
from _web_helpers import signed_in as _signed_in  # noqa: E402
from conftest import dataset_path  # noqa: E402

PASSWORD = "correct horse battery"
NEW_PAGES = ("/ui/datasets", "/ui/jobs", "/ui/alerts")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A home with "cardio" in two versions (different parameters), "cardio-lof", a stored
    dataset, a user per role, and a server that runs no jobs itself (they stay queued until
    a test runs a worker)."""
    with np.load(dataset_path("cardio")) as d:
        X = np.asarray(d["X"], dtype=np.float64)
    home = tmp_path_factory.mktemp("pageshome")
    service.train(home, "cardio", X, "IsolationForest", {"n_estimators": 30, "random_state": 0})
    service.train(home, "cardio", X, "IsolationForest", {"n_estimators": 60, "random_state": 1})
    service.train(home, "cardio-lof", X[:600], "LOF", {"n_neighbors": 10, "novelty": True})
    add_role_users(home, ("viewer", "operator", "admin"), PASSWORD)
    server = ApiServer(home, "--job-workers", "0")
    try:
        yield server, home, X
    finally:
        server.stop()


def signed_in(server, role: str) -> WebClient:
    return _signed_in(server, role, PASSWORD)


def last_audit(home, action: str, wait_s: float = 0.0, actor=None) -> dict:
    """The newest audit entry of ``action`` (by ``actor``, when given); refusals are written
    in the background: ``wait_s`` to wait for one."""
    deadline = time.monotonic() + wait_s
    while True:
        found = [e for e in service.audit_entries(home) if e["action"] == action and actor in (None, e["actor"])]
        if found or time.monotonic() > deadline:
            return found[-1]
        time.sleep(0.05)


def cells(page: str, table_id: str) -> list:
    """The text of each body row's cells (th and td) of table ``table_id`` ([] without it)."""
    m = re.search(rf'<table id="{table_id}".*?<tbody>(.*?)</tbody>', page, re.S)
    if m is None:
        return []
    body = m.group(1)
    return [[unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def nav(page: str) -> list:
    block = re.search(r'<nav aria-label="Main">(.*?)</nav>', page, re.S).group(1)
    return re.findall(r">([^<]+)</a>", block)


# -- navigation and roles ---------------------------------------------------------------------
def test_every_page_links_the_new_pages_and_the_audit_trail_is_for_admins(site):
    server, *_ = site
    viewer, admin = signed_in(server, "viewer"), signed_in(server, "admin")
    for path in ("/ui/detectors", "/ui/health", *NEW_PAGES):
        status, _, page = viewer.get(path)
        assert status == 200, (path, error_text(page))
        assert nav(page) == ["Detectors", "Datasets", "Jobs", "Alerts", "Health"], path
        assert nav(admin.get(path)[2]) == ["Detectors", "Detect", "Train", "Datasets", "Jobs", "Alerts", "Audit",
                                           "Health"]
    for role in ("viewer", "operator"):
        status, _, page = signed_in(server, role).get("/ui/audit")
        assert status == 403 and "may not manage" in error_text(page)
    status, h, _ = WebClient(server).get("/ui/datasets")  # no session: to the sign-in page, and back after
    assert status == 303 and h["location"].startswith("/?next=/ui/datasets")


# -- datasets ---------------------------------------------------------------------------------
def test_datasets_page_previews_the_rows_and_summarises_every_column(site):
    server, home, X = site
    did = service.store_dataset(home, X, name="cardio-rows")["id"]
    c = signed_in(server, "viewer")
    _, _, page = c.get("/ui/datasets")
    row = next(r for r in cells(page, "datasets") if r[0] == "cardio-rows")
    assert row[1:4] == [f"{X.shape[0]:,}", str(X.shape[1]), "yes"]
    status, _, page = c.get(f"/ui/datasets/{did}")
    assert status == 200
    head = cells(page, "preview")
    assert len(head) == 10 and [float(v) for v in head[3][1:]] == pytest.approx(X[3], rel=1e-5)
    summary = cells(page, "columns")
    assert len(summary) == X.shape[1]
    for j in (0, 7, X.shape[1] - 1):
        name, lo, mean, hi, std, distinct, zeros = summary[j]
        col = X[:, j]
        assert [float(lo), float(mean), float(hi), float(std)] == pytest.approx(
            [col.min(), col.mean(), col.max(), col.std()], rel=1e-5, abs=1e-12)
        assert int(distinct.replace(",", "")) == np.unique(col).size
        assert zeros == f"{100 * np.mean(col == 0):.2f}%"
    assert 'id="delete"' not in page  # a viewer is offered no delete
    # The dataset a detector was trained on and only recorded: described, nothing to preview.
    recorded = service.versions(home, "cardio")[0]["dataset_id"]
    _, _, page = c.get(f"/ui/datasets/{recorded}")
    assert 'id="not-kept"' in page
    assert c.get("/ui/datasets/" + "0" * 32)[0] == 404


def test_deleting_a_dataset_needs_an_admin_and_the_token_and_is_audited(site):
    server, home, X = site
    did = service.store_dataset(home, X[:50], name="doomed")["id"]
    viewer, admin = signed_in(server, "viewer"), signed_in(server, "admin")
    assert viewer.get(f"/ui/datasets/{did}")[0] == 200  # previewed (and kept for the next view)
    csrf = viewer.csrf("/ui/datasets")
    status, _, page = viewer.post(f"/ui/datasets/{did}/delete", {"csrf": csrf, "confirm": "yes"})
    assert status == 403 and "may not manage" in error_text(page)
    status, _, page = admin.post(f"/ui/datasets/{did}/delete", {"confirm": "yes"})  # no token
    assert status == 403 and "security token" in error_text(page)
    csrf = admin.csrf(f"/ui/datasets/{did}")
    assert admin.post(f"/ui/datasets/{did}/delete", {"csrf": csrf})[0] == 400  # the box not ticked
    assert service.dataset(home, did)["name"] == "doomed"
    status, h, _ = admin.post(f"/ui/datasets/{did}/delete", {"csrf": csrf, "confirm": "yes"})
    assert status == 303 and h["location"].startswith("/ui/datasets?done=")
    assert did not in {d["id"] for d in service.list_datasets(home)}
    assert viewer.get(f"/ui/datasets/{did}")[0] == 404  # not shown from the previews kept
    e = last_audit(home, "dataset.delete")
    assert (e["target"], e["outcome"], e["actor"]) == (did, "ok", "token:adm-user")


# -- jobs -------------------------------------------------------------------------------------
def test_jobs_page_shows_the_queue_cancels_by_role_and_says_why_a_job_failed(site):
    server, home, X = site
    did = service.store_dataset(home, X[:400], name="for-jobs")["id"]
    train = jobs.submit(str(home), "train", {"detector": "queued-one", "dataset_id": did,
                                             "algorithm": "IsolationForest", "params": {"n_estimators": 5}})
    detect = jobs.submit(str(home), "detect", {"detector": "cardio", "dataset_id": did})
    viewer, operator, admin = (signed_in(server, r) for r in ("viewer", "operator", "admin"))
    _, _, page = viewer.get("/ui/jobs")
    assert f'id="job-{train}" data-state="queued"' in page and 'data-live="yes"' in page and "<progress" in page
    assert f'action="/ui/jobs/{train}/cancel"' not in page  # offered to no one who may not
    _, _, page = operator.get("/ui/jobs")
    assert f'action="/ui/jobs/{detect}/cancel"' in page and f'action="/ui/jobs/{train}/cancel"' not in page
    # Refused: a viewer; an operator cancelling training (an admin's job); no token.
    csrf = operator.csrf("/ui/jobs")
    status, _, page = viewer.post(f"/ui/jobs/{train}/cancel", {"csrf": viewer.csrf("/ui/jobs")})
    assert status == 403 and "may not cancel a train job" in error_text(page)
    assert operator.post(f"/ui/jobs/{train}/cancel", {"csrf": csrf})[0] == 403
    refusal = last_audit(home, "refused", wait_s=5, actor="token:ope-user")
    assert (refusal["target"], refusal["outcome"]) == (f"/ui/jobs/{train}/cancel", "forbidden")
    assert admin.post(f"/ui/jobs/{train}/cancel", {})[0] == 403
    assert jobs.get(str(home), train)["state"] == "queued"
    status, h, _ = admin.post(f"/ui/jobs/{train}/cancel", {"csrf": admin.csrf("/ui/jobs")})
    assert status == 303 and jobs.get(str(home), train)["state"] == "cancelled"
    e = last_audit(home, "job.cancel")
    assert (e["target"], e["outcome"], e["actor"]) == (train, "ok", "token:adm-user")
    assert admin.post(f"/ui/jobs/{train}/cancel", {"csrf": admin.csrf("/ui/jobs")})[0] == 409  # already cancelled
    # A job that fails (its dataset is gone before a worker takes it): the page says why.
    service.delete_dataset(home, did)
    jobs.Worker(str(home), poll=0.05).run(max_jobs=1)
    failed = jobs.get(str(home), detect)
    assert failed["state"] == "failed" and failed["error"]
    _, _, page = viewer.get("/ui/jobs?state=failed")
    assert unescape(re.search(rf'id="error-{detect[:8]}">(.*?)</span>', page, re.S).group(1)) == failed["error"]
    assert 'data-live="no"' in page and f"job-{train}" not in page  # the filter shows failed jobs only


# -- alerts -----------------------------------------------------------------------------------
def test_alert_rules_added_approved_and_removed_by_admins_only_with_the_token(site):
    server, home, _ = site
    viewer, admin = signed_in(server, "viewer"), signed_in(server, "admin")
    form = {"detector": "cardio", "url": "https://hooks.example.com/am", "rate_above": "0.2"}
    status, _, page = viewer.post("/ui/alerts/add", dict(form, csrf=viewer.csrf("/ui/alerts")))
    assert status == 403 and alerts.list_rules(str(home)) == []
    assert 'id="add-form"' not in viewer.get("/ui/alerts")[2]
    assert admin.post("/ui/alerts/add", form)[0] == 403 and alerts.list_rules(str(home)) == []
    csrf = admin.csrf("/ui/alerts")
    status, _, page = admin.post("/ui/alerts/add", dict(form, csrf=csrf, url="http://169.254.169.254/latest"))
    assert status == 400 and "link-local" in error_text(page) and 'value="cardio"' in page  # the form, as typed
    status, _, page = admin.post("/ui/alerts/add", dict(form, csrf=csrf))
    assert status == 201, error_text(page)
    (rule,) = alerts.list_rules(str(home))
    assert rule["channel"] == "webhook" and rule["rate_above"] == 0.2 and rule["approved"]
    assert re.search(r'id="secret">([^<]+)<', page).group(1) == rule["secret"]  # shown once, to its maker
    assert rule["secret"] not in admin.get("/ui/alerts")[2]
    assert (last_audit(home, "alerts.add")["detail"] or {}).get("rule") == rule["id"]
    # Unapproved (edited in the database): an admin approves a webhook here, never a command.
    from pynomaly.store import alerts as rows
    from pynomaly.store._schema import open_database

    command = alerts.add_rule(str(home), "cardio", "command", "/bin/true")
    db = open_database(home)
    try:
        for rid in (rule["id"], command["id"]):
            rows.set_signature(db, rid, "0" * 64)
    finally:
        db.close()
    _, _, page = viewer.get("/ui/alerts")
    assert [r[4].split()[0] for r in cells(page, "rules")] == ["no", "no"] and "/approve" not in page
    # Where rules send is for admins: a webhook URL can be the key to post to a chat service.
    assert [r[2] for r in cells(page, "rules")] == ["webhook: https://hooks.example.com/…",
                                                    "command: (shown to admins)"]
    assert "hooks.example.com/am" not in page and "/bin/true" not in page
    _, _, page = admin.get("/ui/alerts")
    assert [r[2] for r in cells(page, "rules")] == ["webhook: https://hooks.example.com/am", "command: /bin/true"]
    assert f'/ui/alerts/{rule["id"]}/approve' in page and f'/ui/alerts/{command["id"]}/approve' not in page
    assert admin.post(f"/ui/alerts/{rule['id']}/approve", {})[0] == 403
    status, _, page = admin.post(f"/ui/alerts/{command['id']}/approve", {"csrf": csrf})
    assert status == 403 and "on the server's machine" in error_text(page)
    assert admin.post(f"/ui/alerts/{rule['id']}/approve", {"csrf": csrf})[0] == 303
    assert {r["id"]: r["approved"] for r in alerts.list_rules(str(home))} == {rule["id"]: True, command["id"]: False}
    assert last_audit(home, "alerts.approve")["target"] == rule["id"]
    assert viewer.post(f"/ui/alerts/{rule['id']}/remove", {"csrf": viewer.csrf("/ui/alerts")})[0] == 403
    assert admin.post(f"/ui/alerts/{rule['id']}/remove", {})[0] == 403
    assert admin.post(f"/ui/alerts/{rule['id']}/remove", {"csrf": csrf})[0] == 303
    assert admin.post(f"/ui/alerts/{rule['id']}/remove", {"csrf": csrf})[0] == 404
    assert [r["id"] for r in alerts.list_rules(str(home))] == [command["id"]]
    assert last_audit(home, "alerts.remove")["target"] == rule["id"]
    alerts.remove_rule(str(home), command["id"])


def test_alert_rules_on_drift_from_the_form_checked_as_the_cli_checks_them(site):
    server, home, _ = site
    admin = signed_in(server, "admin")
    csrf = admin.csrf("/ui/alerts")
    _, _, page = admin.get("/ui/alerts")
    assert 'name="drift_above"' in page and 'name="score_drift_above"' in page
    form = {"csrf": csrf, "detector": "cardio", "url": "https://hooks.example.com/drift"}
    refused = [({"drift_above": "0"}, "drift_above is a PSI and must be > 0 (0.2: a significant shift), got 0.0"),
               ({"score_drift_above": "-1"}, "score_drift_above must be >= 0"),
               ({"drift_above": "lots"}, "drift above (PSI) must be a number, got 'lots'"),
               ({"score_drift_above": "inf"}, "score drift above (PSI) must be a finite number"),
               ({"drift_above": "0.2", "rate_above": "0.1"}, "a rule on drift (drift_above, score_drift_above) "
                "takes no condition on anomalies")]
    for fields, message in refused:
        status, _, page = admin.post("/ui/alerts/add", dict(form, **fields))
        assert status == 400 and message in error_text(page), (fields, error_text(page))
        assert all(f'value="{v}"' in page for v in fields.values())  # the form again, as typed
    assert alerts.list_rules(str(home)) == []
    status, _, page = admin.post("/ui/alerts/add", dict(form, drift_above="0.25", score_drift_above="0.3"))
    assert status == 201, error_text(page)
    (rule,) = alerts.list_rules(str(home))
    assert (rule["drift_above"], rule["score_drift_above"], rule["rate_above"]) == (0.25, 0.3, None)
    _, _, page = signed_in(server, "viewer").get("/ui/alerts")
    assert " ".join(cells(page, "rules")[0][3].split()) == "drift: a feature's PSI ≥ 0.25 or the score's PSI ≥ 0.3"
    status, _, _ = admin.post("/ui/alerts/add", dict(form, csrf=csrf, score_drift_above="0.2"))
    assert status == 201 and alerts.list_rules(str(home))[1]["score_drift_above"] == 0.2
    for r in alerts.list_rules(str(home)):
        alerts.remove_rule(str(home), r["id"])


def test_the_outbox_shows_delivery_states_and_dead_letters(site, tmp_path):
    server, home, X = site
    sent = alerts.add_rule(str(home), "cardio-lof", "log", str(tmp_path / "alerts.jsonl"))
    dead = alerts.add_rule(str(home), "cardio-lof", "webhook", "https://hooks.example.com/never")
    from pynomaly.store import alerts as rows
    from pynomaly.store._schema import open_database

    db = open_database(home)
    try:
        rows.set_signature(db, dead["id"], "0" * 64)  # unapproved: its message is dead-lettered, not sent
    finally:
        db.close()
    # A receiver that is not there (nothing listens on port 9): the error names its URL.
    failing = alerts.add_rule(str(home), "cardio-lof", "webhook", "http://127.0.0.1:9/hook-key-123", max_attempts=1)
    service.detect(home, "cardio-lof", X[:200] + 5.0)  # far from the training rows: anomalies fire the rules
    alerts.deliver(str(home))
    by_rule = {m["rule_id"]: m for m in alerts.outbox(str(home))}
    assert by_rule[sent["id"]]["state"] == "sent" and by_rule[dead["id"]]["state"] == "dead"
    assert by_rule[failing["id"]]["state"] == "dead" and "hook-key-123" in by_rule[failing["id"]]["last_error"]
    assert "hook-key-123" in signed_in(server, "admin").get("/ui/alerts")[2]
    c = signed_in(server, "viewer")
    _, _, page = c.get("/ui/alerts")
    assert "hook-key-123" not in page  # neither in the rules nor in the delivery error
    shown = {r[1]: r for r in cells(page, "outbox")}
    assert shown[sent["id"]][2:5] == ["cardio-lof", "firing", "sent"]
    assert shown[dead["id"]][4] == "dead" and by_rule[dead["id"]]["last_error"] in shown[dead["id"]][8]
    assert re.search(r'id="dead-count">(\d+) dead<', page).group(1) == "2"
    _, _, page = c.get("/ui/alerts?state=dead")
    assert sorted(r[1] for r in cells(page, "outbox")) == sorted([dead["id"], failing["id"]])
    assert c.get("/ui/alerts?state=bogus")[0] == 400
    for r in (sent, dead, failing):
        alerts.remove_rule(str(home), r["id"])


# -- the audit trail --------------------------------------------------------------------------
def test_audit_page_lists_the_trail_newest_first_and_says_when_the_chain_breaks(site, tmp_path):
    server, home, _ = site
    service.audit_record(home, actor="someone", action="export", target="cardio@1", origin="cli")
    admin = signed_in(server, "admin")
    _, _, page = admin.get("/ui/audit?since=all")
    assert 'data-ok="yes"' in page
    entries = service.audit_entries(home)
    shown = cells(page, "audit")
    assert [int(r[0]) for r in shown] == [e["seq"] for e in entries[::-1]]
    assert shown[0][2:5] == ["someone", "export", "cardio@1"]
    _, _, page = admin.get("/ui/audit?since=all&action=export")
    assert {r[3] for r in cells(page, "audit")} == {"export"}
    # Someone edits an entry in the database: the page says the chain does not verify, and where.
    db = sqlite3.connect(home / "pynomaly.db")
    try:
        db.execute("UPDATE audit SET target='cardio@2' WHERE seq=?", (entries[-1]["seq"],))
        db.commit()
    finally:
        db.close()
    _, _, page = admin.get("/ui/audit")
    assert 'data-ok="no"' in page
    assert f"entry {entries[-1]['seq']} was modified" in unescape(page)


# -- detectors: sorting, filtering, versions compared ------------------------------------------
def test_detectors_sort_and_filter(site):
    server, home, _ = site
    c = signed_in(server, "viewer")

    def names(query: str) -> list:
        status, _, page = c.get("/ui/detectors" + query)
        assert status == 200
        return [r[0] for r in cells(page, "detectors")]

    everything = sorted(d.name for d in service.list_detectors(home))
    assert names("") == everything
    assert names("?sort=name&dir=desc") == everything[::-1]
    assert names("?q=LOF") == ["cardio-lof"]  # by algorithm, any case
    assert names("?q=lof&status=archived") == []
    assert names("?sort=versions&dir=desc")[0] == "cardio"
    by_threshold = sorted(service.overview(home), key=lambda o: o["threshold"])
    assert names("?sort=threshold") == [o["detector"].name for o in by_threshold]
    assert names("?sort=no-such-column") == everything


def test_version_comparison_overlays_the_training_scores_and_marks_what_differs(site):
    server, home, _ = site
    c = signed_in(server, "viewer")
    assert 'id="compare-link"' in c.get("/ui/detectors/cardio")[2]
    status, _, page = c.get("/ui/detectors/cardio/compare?a=1&b=2")
    assert status == 200
    v1, v2 = service.versions(home, "cardio")
    rows = {r[0]: r[1:] for r in cells(page, "comparison")}
    assert rows["Threshold"] == [f"{v1['threshold']:.6g}", f"{v2['threshold']:.6g}"]
    assert rows["n_estimators (differs)"] == ["30", "60"]
    assert page.count('<polyline class="dist') == 2
    s1 = service.training_scores(home, "cardio", 1)
    assert rows["Training scores"][0].startswith(f"{s1.size:,} rows: {s1.min():.6g} to {s1.max():.6g}")
    # The chart's outline is the histogram of each version's own training scores, in shares.
    points = re.search(r'<polyline class="dist series-0"[^>]*points="([^"]+)"', page).group(1).split()
    ys = [float(p.split(",")[1]) for p in points[1:-1:2]]
    assert len(ys) == 50 and ys.index(min(ys)) == int(np.argmax(np.histogram(
        s1, bins=50, range=_range(page))[0]))
    assert c.get("/ui/detectors/cardio/compare?a=1&b=9")[0] == 404
    assert c.get("/ui/detectors/cardio/compare?a=one")[0] == 400


def _range(page: str) -> tuple:
    m = re.search(r"Training score distributions of [^,]+, [^,]+, from ([-\d.e]+) to ([-\d.e]+)<", page)
    return float(m.group(1)), float(m.group(2))


# -- history and health ---------------------------------------------------------------------------
def test_history_places_detections_by_time_and_sizes_them_by_rows(site):
    server, home, X = site
    service.detect(home, "cardio-lof", X[:1])
    time.sleep(1.0)
    service.detect(home, "cardio-lof", X[:1500])
    _, _, page = signed_in(server, "viewer").get("/ui/detectors/cardio-lof/history")
    results = service.results(home, "cardio-lof")
    points = re.findall(r'<circle class="point" cx="([\d.]+)" cy="[\d.]+" r="([\d.]+)" data-t="([\d.e+]+)" '
                        r'data-rows="(\d+)"', page)
    assert len(points) == len(results) and "<polyline" not in page
    by_time = sorted((float(t), float(cx), float(r), int(n)) for cx, r, t, n in points)
    assert [n for *_, n in by_time] == [r["total_samples"] for r in results]
    # x follows time linearly (not the detection's place in the list)
    (t0, x0, *_), (t1, x1, *_) = by_time[0], by_time[-1]
    assert all(abs(x0 + (x1 - x0) * (t - t0) / (t1 - t0) - cx) < 0.2 for t, cx, _, _ in by_time)
    one, full = by_time[-2], by_time[-1]
    assert one[3] == 1 and full[3] == 1500 and full[2] > 3 * one[2]


def test_health_says_times_and_counters_in_words(site):
    server, *_ = site
    _, _, page = signed_in(server, "viewer").get("/ui/health")
    started = re.search(r'id="api-started">([^<]+)<', page).group(1)
    assert re.fullmatch(r"(just now|[\d.]+ (s|min|h|h \d+ min|days?) ago) ", started), started
    assert "Rows scored" in page and "cache_hits" not in page and "started</dt>" not in page


def test_times_are_said_as_people_say_them():
    from pynomaly_api.web.render import ago, duration

    now = 1_800_000_000.0
    assert [duration(s) for s in (4.2, 45, 600, 3 * 3600, 3 * 3600 + 300, 12 * 3600 + 300, 86400, 5 * 86400)] == [
        "4.2 s", "45 s", "10 min", "3 h", "3 h 5 min", "12 h", "1 day", "5 days"]
    assert ago(now - 3 * 3600, now) == "3 h ago" and ago(now + 300, now) == "in 5 min" and ago(None) == "–"
    assert ago("2027-01-15T08:00:00", now) == ago("2027-01-15T08:00:00+00:00", now)  # no zone: UTC
