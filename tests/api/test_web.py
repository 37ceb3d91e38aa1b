"""The web pages over plain HTTP against a real server: sign-in and its cookies, CSRF, roles
(the server refuses what a page does not offer), bad uploads that say what was wrong and
store nothing, downloads equal to in-process scoring, the SVG charts. The browser's own view
is tests/api/test_web_browser.py."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")
pytest.importorskip("jinja2", reason="the http extra is not installed (pip install '.[http]')")

from pynomaly import service  # noqa: E402

from _http_helpers import ApiServer, make_token  # noqa: E402
from _web_helpers import WebClient, add_role_users, add_user, error_text, to_csv  # noqa: E402
from conftest import dataset_path  # noqa: E402

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A home with detector "cardio" (trained on the real cardio dataset), a user per role,
    and a server on it that accepts bodies up to 1 MB."""
    with np.load(dataset_path("cardio")) as d:
        X = np.asarray(d["X"], dtype=np.float64)
    home = tmp_path_factory.mktemp("webhome")
    service.train(home, "cardio", X, "IsolationForest", {"n_estimators": 50, "random_state": 0})
    add_role_users(home, ("viewer", "operator", "admin"), PASSWORD)
    server = ApiServer(home, "--max-body", "1M")
    try:
        yield server, home, X
    finally:
        server.stop()


def signed_in(server, role: str) -> WebClient:
    c = WebClient(server)
    status, h, _ = c.sign_in(role[:3] + "-user", PASSWORD)
    assert status == 303 and h["location"] == "/ui/detectors"
    return c


def counts(home) -> tuple:
    return len(service.list_datasets(home)), len(service.results(home, "cardio"))


# -- signing in ------------------------------------------------------------------------------
def test_sign_in_sets_a_strict_http_only_session_cookie(site):
    server, home, _ = site
    c = WebClient(server)
    status, h, _ = c.sign_in("adm-user", PASSWORD)
    assert status == 303
    session = next(v for v in c.set_cookie_headers if v.startswith("pynomaly_session="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Secure" not in session
    status, _, page = c.get("/ui/detectors")
    assert status == 200 and "adm-user" in page and 'href="/ui/detectors/cardio"' in page
    # Over TLS (here: a proxy on loopback saying so) the cookie is Secure as well.
    c2 = WebClient(server)
    csrf = c2.csrf("/")
    c2.post("/ui/signin", {"csrf": csrf, "user": "adm-user", "password": PASSWORD},
            headers={"X-Forwarded-Proto": "https"})
    assert any(v.startswith("pynomaly_session=") and "; Secure" in v for v in c2.set_cookie_headers)


def test_wrong_password_unknown_user_and_missing_csrf_are_refused(site):
    server, *_ = site
    for user, password in (("adm-user", "wrong password"), ("nobody", PASSWORD)):
        c = WebClient(server)
        status, _, page = c.sign_in(user, password)
        assert status == 401 and error_text(page) == "unknown user or wrong password"
        assert "pynomaly_session" not in c.cookies
    c = WebClient(server)
    c.csrf("/")
    status, _, page = c.post("/ui/signin", {"user": "adm-user", "password": PASSWORD})
    assert status == 403 and "security token" in error_text(page) and "pynomaly_session" not in c.cookies


def test_repeated_wrong_passwords_make_the_client_wait(site):
    server, home, _ = site
    add_user(home, "guessed", "viewer", PASSWORD)
    assert WebClient(server).sign_in("vie-user", PASSWORD)[0] == 303  # clears this client's earlier failures
    for _ in range(3):
        assert WebClient(server).sign_in("guessed", "not it")[0] == 401
    c = WebClient(server)
    status, _, page = c.sign_in("guessed", PASSWORD)  # the right one too, from this client, until the wait ends
    assert status == 429 and "too many failed sign-ins" in error_text(page) and "pynomaly_session" not in c.cookies
    time.sleep(1.1)  # backing off, not locked (tests/api/test_http_security.py has the rest)
    assert WebClient(server).sign_in("guessed", PASSWORD)[0] == 303


def test_sign_in_with_an_api_token_and_sign_out(site):
    server, home, _ = site
    c = WebClient(server)
    status, _, _ = c.sign_in(token=make_token(home, "viewer", user="token-viewer"))
    assert status == 303
    status, _, page = c.get("/ui/detectors")
    assert status == 200 and "token-viewer" in page
    c2 = WebClient(server)
    status, _, page = c2.sign_in(token="not.a.token")
    assert status == 401 and "not accepted" in error_text(page)
    csrf = c.csrf("/ui/detectors")
    assert c.post("/ui/signout", {"csrf": csrf})[0] == 303
    assert "pynomaly_session" not in c.cookies
    status, h, _ = c.get("/ui/detectors")
    assert status == 303 and h["location"].startswith("/?next=/ui/detectors")


def test_the_sign_in_page_says_only_its_own_messages(site):
    server, *_ = site
    c = WebClient(server)
    _, _, page = c.get("/?why=Your+account+is+locked.+Call+555-0100")
    assert "555-0100" not in page and error_text(page) is None
    c.cookies["pynomaly_session"] = "expired.or.forged"
    status, h, _ = c.get("/ui/detectors")
    assert status == 303 and h["location"].endswith("&why=expired")
    _, _, page = c.get(h["location"])
    assert "session has ended" in error_text(page)


def test_without_authentication_every_page_serves_as_admin(tmp_path):
    service.train(tmp_path, "tiny", np.random.default_rng(0).standard_normal((200, 3)), "IsolationForest",
                  {"n_estimators": 10})
    server = ApiServer(tmp_path, "--no-auth")
    try:
        c = WebClient(server)
        status, h, _ = c.get("/")
        assert status == 303 and h["location"] == "/ui/detectors"
        _, _, page = c.get("/ui/detectors/tiny")
        assert 'id="archive"' in page and "Sign out" not in page
        status, _, page = c.post("/ui/detectors/tiny/archive", {"csrf": "forged"})
        assert status == 403 and service.show(tmp_path, "tiny")["status"] == "active"  # CSRF still checked
        csrf = c.csrf("/ui/detectors/tiny")
        assert c.post("/ui/detectors/tiny/archive", {"csrf": csrf})[0] == 303
        assert service.show(tmp_path, "tiny")["status"] == "archived"
    finally:
        server.stop()
    # The page's action is in the audit trail like the API's (issue 15: every face).
    entries = [e for e in service.audit_entries(tmp_path) if e["origin"].startswith("http ")]
    assert [(e["action"], e["target"], e["outcome"]) for e in entries if e["action"] == "archive"] == \
        [("archive", "tiny", "ok")]
    assert service.audit_verify(tmp_path)["ok"]


def test_pages_need_a_session_and_sign_in_never_redirects_off_site(site):
    server, *_ = site
    c = WebClient(server)
    for path in ("/ui/detectors", "/ui/detectors/cardio", "/ui/detect", "/ui/train", "/ui/health"):
        status, h, _ = c.get(path)
        assert status == 303 and h["location"].startswith("/?next="), path
    csrf = c.csrf("/")
    status, h, _ = c.post("/ui/signin", {"csrf": csrf, "user": "vie-user", "password": PASSWORD,
                                         "next": "//evil.example/ui/x"})
    assert status == 303 and h["location"] == "/ui/detectors"


# -- roles -----------------------------------------------------------------------------------
def test_a_viewer_sees_no_buttons_it_may_not_use_and_is_refused_anyway(site):
    server, home, _ = site
    c = signed_in(server, "viewer")
    _, _, page = c.get("/ui/detectors/cardio")
    assert 'id="archive"' not in page and 'id="delete"' not in page and 'href="/ui/detect"' not in page
    assert 'href="/ui/detect?' not in page and 'href="/ui/train' not in page
    csrf = c.csrf("/ui/detectors")
    for action in ("archive", "delete"):
        status, _, page = c.post(f"/ui/detectors/cardio/{action}", {"csrf": csrf, "confirm": "yes"})
        assert status == 403 and "may not manage" in error_text(page)
    assert c.get("/ui/train")[0] == 403 and c.get("/ui/detect")[0] == 403
    assert service.show(home, "cardio")["status"] == "active"
    # An operator may detect but not manage; an admin sees the buttons.
    op = signed_in(server, "operator")
    _, _, page = op.get("/ui/detectors/cardio")
    assert 'href="/ui/detect?detector=cardio"' in page and 'id="archive"' not in page
    _, _, page = signed_in(server, "admin").get("/ui/detectors/cardio")
    assert 'id="archive"' in page and 'id="delete"' in page


def test_admin_actions_need_the_forms_csrf_token(site):
    server, home, _ = site
    c = signed_in(server, "admin")
    status, _, page = c.post("/ui/detectors/cardio/archive", {"csrf": "0" * 64})
    assert status == 403 and "security token" in error_text(page)
    assert service.show(home, "cardio")["status"] == "active"
    csrf = c.csrf("/ui/detectors/cardio")
    status, h, _ = c.post("/ui/detectors/cardio/archive", {"csrf": csrf})
    assert status == 303 and service.show(home, "cardio")["status"] == "archived"
    status, h, _ = c.post("/ui/detectors/cardio/activate", {"csrf": csrf})
    assert status == 303 and service.show(home, "cardio")["status"] == "active"
    status, _, page = c.post("/ui/detectors/cardio/delete", {"csrf": csrf})  # the box not ticked
    assert status == 400 and "confirm" in error_text(page) and service.show(home, "cardio")


# -- detection -------------------------------------------------------------------------------
def test_upload_detect_and_download_equal_in_process_scoring(site):
    server, home, X = site
    c = signed_in(server, "operator")
    csrf = c.csrf("/ui/detect")
    status, h, page = c.post("/ui/detect", {"csrf": csrf, "detector": "cardio", "contamination": "0.05"},
                             files={"file": ("cardio.csv", to_csv(X))})
    assert status == 303, error_text(page)
    want = service.load_for_scoring(home, "cardio").detect(X, contamination=0.05)
    status, _, page = c.get(h["location"])
    assert status == 200
    assert re.search(r'id="flagged-count">([\d,]+)<', page).group(1) == f"{int(want.labels.sum()):,}"
    assert page.count('class="bar') >= 10 and 'id="threshold-line"' in page
    assert "application/json" in page and '"above"' in page  # the slider's counts, not the scores
    top_table = page.split('id="top-anomalies"', 1)[1].split("</table>", 1)[0]
    assert top_table.count("<tr>") <= 25  # a table of the top rows, not every row
    rid = h["location"].rsplit("/", 1)[1]
    _, hh, text = c.get(f"/ui/results/{rid}/download?format=csv")
    assert hh["content-type"].startswith("text/csv")
    got = np.genfromtxt(io.StringIO(text), delimiter=",", skip_header=1)
    assert np.array_equal(got[:, 0], np.arange(len(X)))
    assert np.array_equal(got[:, 1], want.scores) and np.array_equal(got[:, 2], want.labels)
    # Another threshold: the labels follow it, by the Scorer's rule, without rescoring.
    t = float(np.quantile(want.scores, 0.8))
    _, _, text = c.get(f"/ui/results/{rid}/download?format=csv&threshold={t!r}")
    got = np.genfromtxt(io.StringIO(text), delimiter=",", skip_header=1)
    assert np.array_equal(got[:, 2], want.scores > t)
    try:
        import pyarrow.parquet as pq
    except ImportError:  # the parquet extra is not installed: CSV only (the page offers no Parquet link)
        return
    status, _, blob = c.request("GET", f"/ui/results/{rid}/download?format=parquet", raw=True)
    table = pq.read_table(io.BytesIO(blob))
    assert status == 200 and table.column_names == ["sample_index", "score", "label"]
    assert np.array_equal(table["score"].to_numpy(), want.scores)
    assert np.array_equal(table["label"].to_numpy(), want.labels)


def _upload_bytes(kind: str, X: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if kind == "npy":
        np.save(buf, X)
    elif kind == "npz":
        np.savez(buf, X=X)
    elif kind == "tsv":
        return to_csv(X).replace(b",", b"\t")
    else:
        pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (pip install '.[parquet]')")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({f"x{i}": X[:, i] for i in range(X.shape[1])}), buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["npy", "npz", "tsv", "parquet"])
def test_every_upload_format_detects_like_in_process_scoring(site, kind):
    server, home, X = site
    rows = X[::7]
    c = signed_in(server, "operator")
    csrf = c.csrf("/ui/detect")
    status, h, page = c.post("/ui/detect", {"csrf": csrf, "detector": "cardio"},
                             files={"file": (f"rows.{kind}", _upload_bytes(kind, rows))})
    assert status == 303, error_text(page)
    r = service.result(home, h["location"].rsplit("/", 1)[1])
    assert np.array_equal(r.scores, service.load_for_scoring(home, "cardio").detect(rows).scores)


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


BAD_UPLOADS = {
    "empty": ("data.csv", b"", "is empty"),
    "non-numeric cell": ("data.csv", b"x0,x1\n1,2\n3,oops\n", "non-numeric"),
    "wrong columns": ("data.npy", None, "needs 21"),
    "not what its name says": ("data.npy", b"x0,x1\n1,2\n", "not a NumPy .npy file"),
    "parquet that is not": ("data.parquet", b"PAR0 nothing", "not a Parquet file"),
    "binary called csv": ("data.csv", b"\x00\x01\x02\xff" * 100, "not a text table"),
    "unknown kind": ("data.xlsx", b"PK\x03\x04", "upload a .csv"),
    "too large": ("big.csv", b"1.0\n" * (300 * 1024), "at most 1.0 MB"),
    "missing values": ("data.csv", b"x0,x1\n1,2\n3,\n", "missing"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_show_a_readable_message_and_store_nothing(site, case):
    server, home, X = site
    filename, data, message = BAD_UPLOADS[case]
    if data is None:
        data = _npy(X[:50, :5])
    c = signed_in(server, "operator")
    csrf = c.csrf("/ui/detect")
    before = counts(home)
    status, _, page = c.post("/ui/detect", {"csrf": csrf, "detector": "cardio"}, files={"file": (filename, data)})
    assert 400 <= status < 500
    text = error_text(page)
    assert text is not None and message in text, text
    assert "Traceback" not in page and 'File "' not in page
    assert counts(home) == before
    if case != "too large":  # the form comes back with the detector still chosen
        assert re.search(r'<option value="cardio" selected>', page)


def test_detect_with_an_unknown_or_archived_detector_says_so_on_the_form(site):
    server, home, X = site
    c = signed_in(server, "operator")
    csrf = c.csrf("/ui/detect")
    before = counts(home)
    status, _, page = c.post("/ui/detect", {"csrf": csrf, "detector": "no-such"},
                             files={"file": ("data.csv", to_csv(X[:10]))})
    assert status == 404 and "no-such" in error_text(page)
    status, _, page = c.post("/ui/detect", {"csrf": csrf, "detector": "cardio", "threshold": "1", "contamination": "0.1"},
                             files={"file": ("data.csv", to_csv(X[:10]))})
    assert status == 400 and "not both" in error_text(page)
    assert counts(home) == before


def test_result_page_of_an_unknown_id_is_a_readable_404(site):
    server, *_ = site
    status, _, page = signed_in(server, "viewer").get("/ui/results/" + "0" * 32)
    assert status == 404 and "no detection result" in error_text(page)


def test_history_and_health_pages(site):
    server, home, X = site
    c = signed_in(server, "operator")
    csrf = c.csrf("/ui/detect")
    did = service.store_dataset(home, X[:300], name="first300")["id"]
    for contamination in ("0.02", "0.1"):
        assert c.post("/ui/detect", {"csrf": csrf, "detector": "cardio", "dataset_id": did,
                                     "contamination": contamination})[0] == 303
    status, _, page = c.get("/ui/detectors/cardio/history")
    n = len(service.results(home, "cardio"))
    assert status == 200 and page.count('class="point"') == n and "<polyline" not in page  # no line joins them
    status, _, page = c.get("/ui/health")
    assert status == 200 and 'id="api-health"' in page and 'id="daemon-health"' in page and "ready" in page


def test_detectors_page_shows_the_last_detection_and_its_rate(site):
    server, home, X = site
    last = service.results(home, "cardio")
    c = signed_in(server, "viewer")
    _, _, page = c.get("/ui/detectors")
    row = re.search(r'<tr>\s*<th scope="row"><a href="/ui/detectors/cardio">.*?</tr>', page, re.S).group(0)
    if last:
        r = last[-1]
        assert f'/ui/results/{r["id"]}' in row
        assert f'{100 * r["anomalies_detected"] / r["total_samples"]:.2f}%' in row
    assert "IsolationForest" in row and "active" in row and ">21<" in row


def test_training_from_a_stored_dataset_shows_progress_then_the_detector(site):
    server, home, X = site
    did = service.store_dataset(home, X, name="cardio-all")["id"]
    c = signed_in(server, "admin")
    csrf = c.csrf("/ui/train")
    status, h, page = c.post("/ui/train", {"csrf": csrf, "name": "cardio-web", "dataset_id": did,
                                           "algorithm": "IsolationForest", "params": "n_estimators=30\nrandom_state=1",
                                           "activate": "yes"})
    assert status == 303, error_text(page)
    deadline = time.monotonic() + 60
    while True:
        status, _, page = c.get(h["location"])
        assert status == 200
        if 'data-done="yes"' in page or time.monotonic() > deadline:
            break
        assert "<progress" in page
        time.sleep(0.2)
    assert 'id="done"' in page, page
    d = service.show(home, "cardio-web")
    # The new version's threshold, and the histogram of the scores it gave its training rows.
    shown = re.search(r'id="trained-threshold">([^<]+)<', page).group(1)
    assert shown == f'{d["versions"][-1]["threshold"]:.6g}'
    title = re.search(r'<title id="histogram-title">Histogram of (\d+) scores', page)
    assert title and int(title.group(1)) == len(X) and 'id="threshold-line"' in page
    assert d["status"] == "active" and d["versions"][-1]["parameters"]["n_estimators"] == 30
    assert d["versions"][-1]["dataset_id"] == did
    # Bad parameters: the message on the page, nothing trained.
    status, _, page = c.post("/ui/train", {"csrf": csrf, "name": "cardio-bad", "dataset_id": did,
                                           "algorithm": "IsolationForest", "params": "this is not a parameter"})
    assert status == 400 and "key=value" in error_text(page)
    assert "cardio-bad" not in [x.name for x in service.list_detectors(home)]
    # An upload to train on: a bad one is refused on the page; a good one is kept and trained on.
    before = len(service.list_datasets(home))
    status, _, page = c.post("/ui/train", {"csrf": csrf, "name": "cardio-up", "algorithm": "IsolationForest"},
                             files={"file": ("rows.csv", b"a,b\n1,2\n3,x\n")})
    assert status == 400 and "non-numeric" in error_text(page) and len(service.list_datasets(home)) == before
    status, h, page = c.post("/ui/train", {"csrf": csrf, "name": "cardio-up", "algorithm": "IsolationForest",
                                           "params": "n_estimators=10", "activate": "yes"},
                             files={"file": ("rows.npy", _npy(X[:400]))})
    assert status == 303, error_text(page)
    deadline = time.monotonic() + 60
    while 'data-done="yes"' not in c.get(h["location"])[2] and time.monotonic() < deadline:
        time.sleep(0.2)
    d = service.show(home, "cardio-up")
    assert d["status"] == "active" and service.dataset(home, d["versions"][-1]["dataset_id"])["n_rows"] == 400


def test_importing_pynomaly_imports_no_web_stack():
    import subprocess
    import sys

    code = "import sys, pynomaly, pynomaly.service; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('jinja2', 'selenium', 'pynomaly_api', 'starlette')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
