"""The web pages in a real browser: Debian's chromium, driven by Selenium through its
chromedriver, against a real server started here. One browser and one server for the module;
the tests run in order (sign in, detect, the threshold, the download, a viewer refused, a bad
upload).

Screenshots of the main pages are written to $PYNOMALY_SCREENSHOTS when it is set, never
otherwise (the README's come from `PYNOMALY_SCREENSHOTS=docs/screenshots pytest
tests/api/test_web_browser.py tests/api/test_web_pages_browser.py`).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")
pytest.importorskip("selenium", reason="selenium is not installed (pip install '.[test]')")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from pynomaly import service  # noqa: E402

from _browser_helpers import PHONE, SIZE, browser, page_overflow, shot, url, wait  # noqa: E402,F401 - browser: a fixture
from _http_helpers import ApiServer, make_token  # noqa: E402
from _web_helpers import add_user, to_csv  # noqa: E402
from conftest import dataset_path  # noqa: E402

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with np.load(dataset_path("cardio")) as d:
        X = np.asarray(d["X"], dtype=np.float64)
    home = tmp_path_factory.mktemp("browserhome")
    service.train(home, "cardio", X, "IsolationForest", {"n_estimators": 100, "random_state": 0})
    service.train(home, "cardio-lof", X, "LOF", {"n_neighbors": 20, "novelty": True})
    add_user(home, "ann", "admin", PASSWORD)
    csv = tmp_path_factory.mktemp("upload") / "cardio.csv"
    csv.write_bytes(to_csv(X))
    server = ApiServer(home)
    try:
        yield server, home, X, csv
    finally:
        server.stop()


def sign_in(driver, server, user=None, password=None, token=None, screenshot=False):
    driver.delete_all_cookies()
    driver.get(url(server, "/"))
    if screenshot:
        shot(driver, "signin")
    if token:
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    else:
        driver.find_element(By.ID, "user").send_keys(user)
        driver.find_element(By.ID, "password").send_keys(password + Keys.ENTER)  # the keyboard signs in
    wait(driver, lambda d: d.current_url.endswith("/ui/detectors"))


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def test_sign_in_and_see_the_detectors(browser, site):
    server, home, X, _ = site
    sign_in(browser, server, "ann", PASSWORD, screenshot=True)
    rows = browser.find_elements(By.CSS_SELECTOR, "#detectors tbody tr")
    assert [r.find_element(By.TAG_NAME, "a").text for r in rows] == ["cardio", "cardio-lof"]
    assert "IsolationForest" in rows[0].text and "active" in rows[0].text


def test_the_detect_form_is_reachable_by_keyboard(browser, site):
    server, *_ = site
    browser.get(url(server, "/ui/detect"))
    seen = []
    for _ in range(30):  # Tab from the top of the page, as a person would
        ActionChains(browser).send_keys(Keys.TAB).perform()
        active = browser.switch_to.active_element
        seen.append(active.get_attribute("id") or active.tag_name)
        if seen[-1] == "detect":
            break
    assert {"detector", "file", "detect"} <= set(seen), seen


def test_upload_a_real_dataset_detect_and_move_the_threshold(browser, site):
    server, home, X, csv = site
    want = service.load_for_scoring(home, "cardio").detect(X)
    browser.get(url(server, "/ui/detectors"))
    browser.find_element(By.LINK_TEXT, "Detect anomalies").click()
    Select(browser.find_element(By.ID, "detector")).select_by_value("cardio")
    browser.find_element(By.ID, "file").send_keys(str(csv))
    shot(browser, "detect")
    browser.find_element(By.ID, "detect").click()
    wait(browser, lambda d: "/ui/results/" in d.current_url)
    flagged = int(want.labels.sum())
    assert text(browser, "total-count") == f"{len(X):,}"
    assert text(browser, "flagged-count") == f"{flagged:,}"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#histogram rect.bar")) >= 10
    assert browser.find_elements(By.CSS_SELECTOR, "#histogram rect.bar.flagged")
    line = browser.find_element(By.ID, "threshold-line")
    x_before = float(line.get_attribute("x1"))
    top = browser.find_elements(By.CSS_SELECTOR, "#top-anomalies tbody tr")
    assert int(top[0].find_element(By.TAG_NAME, "th").text) == int(np.argmax(want.scores))
    assert len(top[0].find_elements(By.TAG_NAME, "td")) == 3 + X.shape[1]  # score, flagged, top features, every feature
    shot(browser, "result")

    # Move the threshold with the keyboard: the count follows, exactly, with no new request.
    slider = browser.find_element(By.ID, "threshold-slider")
    slider.send_keys(Keys.ARROW_LEFT * 25)
    t, shown_count = browser.execute_script(
        "var d = JSON.parse(document.getElementById('stops').textContent);"
        "var i = +document.getElementById('threshold-slider').value; return [d.t[i], d.above[i]];")
    expected = int((want.scores > t).sum())
    assert t < want.threshold and expected > flagged
    assert shown_count == expected and text(browser, "flagged-count") == f"{expected:,}"
    assert text(browser, "slider-flagged") == f"{expected:,}"
    assert float(line.get_attribute("x1")) < x_before
    shot(browser, "result-threshold")

    # The download follows the slider's threshold and equals in-process scoring.
    for old in browser.downloads.glob("*"):
        old.unlink()
    browser.find_element(By.ID, "download-csv").click()
    path = wait(browser, lambda d: next((p for p in browser.downloads.glob("*.csv")), None))
    wait(browser, lambda d: not list(browser.downloads.glob("*.crdownload")))
    got = np.genfromtxt(io.StringIO(path.read_text()), delimiter=",", skip_header=1)
    assert np.array_equal(got[:, 0], np.arange(len(X)))
    assert np.array_equal(got[:, 1], want.scores)  # bit-equal
    assert np.array_equal(got[:, 2], want.scores > t)

    # At a phone's width the page does not scroll sideways (wide tables scroll in their box).
    browser.set_window_size(*PHONE)
    try:
        browser.refresh()
        assert page_overflow(browser) <= 1
        shot(browser, "result-phone")
    finally:
        browser.set_window_size(*SIZE)


def test_history_detector_and_health_pages(browser, site):
    server, home, X, _ = site
    for i, contamination in enumerate((0.02, 0.06, 0.04, 0.08)):  # a few more results for the chart
        service.detect(home, "cardio", X[i * 400:(i + 1) * 400 + 300], contamination=contamination)
    browser.get(url(server, "/ui/detectors"))
    last = service.results(home, "cardio")[-1]
    row = browser.find_element(By.CSS_SELECTOR, "#detectors tbody tr")
    assert f"{100 * last['anomalies_detected'] / last['total_samples']:.2f}%" in row.text
    shot(browser, "detectors")
    browser.get(url(server, "/ui/detectors/cardio"))
    assert browser.find_element(By.ID, "archive") and browser.find_element(By.ID, "delete")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")) == 1
    shot(browser, "detector")
    browser.find_element(By.PARTIAL_LINK_TEXT, "History").click()
    n = len(service.results(home, "cardio"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history-chart circle.point")) == n
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == n
    shot(browser, "history")
    browser.get(url(server, "/ui/health"))
    assert "ready" in text(browser, "api-health")
    shot(browser, "health")
    browser.get(url(server, "/ui/train"))
    shot(browser, "train")


def test_a_viewer_sees_no_admin_buttons_and_is_refused_an_admin_action(browser, site):
    server, home, *_ = site
    sign_in(browser, server, token=make_token(home, "viewer", user="vic"))
    browser.get(url(server, "/ui/detectors/cardio"))
    assert not browser.find_elements(By.ID, "archive") and not browser.find_elements(By.ID, "delete")
    nav = browser.find_element(By.CSS_SELECTOR, "header nav").text
    assert nav.split("\n") == ["Detectors", "Datasets", "Jobs", "Alerts", "Health"]
    # The server refuses what the page does not offer: a form built by hand, with a valid
    # CSRF token, asking to archive.
    browser.execute_script("""
        var f = document.createElement('form'); f.method = 'post';
        f.action = '/ui/detectors/cardio/archive';
        var c = document.createElement('input'); c.type = 'hidden'; c.name = 'csrf';
        c.value = document.querySelector('input[name=csrf]').value; f.appendChild(c);
        document.body.appendChild(f); f.submit();""")
    wait(browser, lambda d: d.find_elements(By.ID, "error"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not allowed"
    assert "may not manage" in text(browser, "error")
    assert service.show(home, "cardio")["status"] == "active"


def test_a_bad_upload_shows_its_message_and_stores_nothing(browser, site, tmp_path):
    server, home, X, _ = site
    sign_in(browser, server, "ann", PASSWORD)
    bad = tmp_path / "typo.csv"
    rows = to_csv(X[:20]).decode().splitlines()
    rows[5] = rows[5].replace(",", ",n/a,", 1).rsplit(",", 1)[0]  # one cell not a number
    bad.write_text("\n".join(rows) + "\n")
    before = (len(service.list_datasets(home)), len(service.results(home, "cardio")))
    browser.get(url(server, "/ui/detect"))
    browser.find_element(By.ID, "file").send_keys(str(bad))
    browser.find_element(By.ID, "detect").click()
    wait(browser, lambda d: d.find_elements(By.ID, "error"))
    message = text(browser, "error")
    assert "typo.csv" in message and "non-numeric" in message and "Traceback" not in browser.page_source
    assert (len(service.list_datasets(home)), len(service.results(home, "cardio"))) == before
    shot(browser, "bad-upload")
