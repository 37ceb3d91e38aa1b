"""The datasets, jobs, alerts and audit pages, the detectors list's filter and sort, and the
version comparison in a real browser (Debian's chromium through Selenium; skipped with the
reason where it is missing), against a real server started here. One browser and one server
for the module; the tests run in order. Screenshots only with $PYNOMALY_SCREENSHOTS set
(see tests/_browser_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")
pytest.importorskip("selenium", reason="selenium is not installed (pip install '.[test]')")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from pynomaly import service  # noqa: E402
from pynomaly.service import alerts, jobs  # noqa: E402

from _browser_helpers import PHONE, SIZE, browser, page_overflow, shot, url, wait  # noqa: E402,F401 - browser: a fixture
from _http_helpers import ApiServer  # noqa: E402
from _web_helpers import add_user  # noqa: E402
from conftest import dataset_path  # noqa: E402

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """cardio in two versions, a LOF detector, a stored dataset, two queued jobs (the server
    runs none itself), an alert rule with a delivered message, and admin "ann"."""
    with np.load(dataset_path("cardio")) as d:
        X = np.asarray(d["X"], dtype=np.float64)
    home = tmp_path_factory.mktemp("pagesbrowserhome")
    service.train(home, "cardio", X, "IsolationForest", {"n_estimators": 30, "random_state": 0})
    service.train(home, "cardio", X, "IsolationForest", {"n_estimators": 60, "random_state": 1})
    service.train(home, "cardio-lof", X[:600], "LOF", {"n_neighbors": 10, "novelty": True})
    did = service.store_dataset(home, X, name="cardio-rows")["id"]
    queued = [jobs.submit(str(home), "detect", {"detector": "cardio", "dataset_id": did}) for _ in range(2)]
    log = tmp_path_factory.mktemp("alerts") / "alerts.jsonl"
    rule = alerts.add_rule(str(home), "cardio", "log", str(log))
    for i in range(3):  # detections of different sizes for the history; the rule fires on them
        service.detect(home, "cardio", X[: (1, 300, 1831)[i]] + (4.0 if i == 1 else 0.0))
    alerts.deliver(str(home))
    add_user(home, "ann", "admin", PASSWORD)
    server = ApiServer(home, "--job-workers", "0")
    try:
        yield server, home, X, {"dataset": did, "jobs": queued, "rule": rule}
    finally:
        server.stop()


def sign_in(driver, server) -> None:
    driver.delete_all_cookies()
    driver.get(url(server, "/"))
    driver.find_element(By.ID, "user").send_keys("ann")
    driver.find_element(By.ID, "password").send_keys(PASSWORD + Keys.ENTER)
    wait(driver, lambda d: d.current_url.endswith("/ui/detectors"))


def nav_click(driver, label: str) -> None:
    driver.find_element(By.CSS_SELECTOR, "header nav").find_element(By.LINK_TEXT, label).click()


def at_phone_width(driver, check) -> None:
    driver.set_window_size(*PHONE)
    try:
        driver.refresh()
        check()
    finally:
        driver.set_window_size(*SIZE)


def tick_font_px(driver, chart_id: str) -> float:
    """The height, on screen, of a chart's first axis label."""
    return driver.execute_script(
        f"return document.querySelector('#{chart_id} text.tick').getBoundingClientRect().height")


def test_datasets_preview_at_a_phone_width_and_delete(browser, site):
    server, home, X, made = site
    sign_in(browser, server)
    nav_click(browser, "Datasets")
    browser.find_element(By.LINK_TEXT, "cardio-rows").click()
    wait(browser, lambda d: "/ui/datasets/" in d.current_url)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#preview tbody tr")) == 10
    assert len(browser.find_elements(By.CSS_SELECTOR, "#columns tbody tr")) == X.shape[1]
    shot(browser, "dataset")

    def no_sideways_page_but_the_table_scrolls():
        assert page_overflow(browser) <= 1
        box = browser.find_element(By.CSS_SELECTOR, "#preview").find_element(By.XPATH, "..")
        assert browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", box)
        shot(browser, "dataset-phone")

    at_phone_width(browser, no_sideways_page_but_the_table_scrolls)
    browser.find_element(By.CSS_SELECTOR, "input[name=confirm]").click()
    browser.find_element(By.ID, "delete").click()
    wait(browser, lambda d: d.find_elements(By.ID, "notice"))
    assert "deleted dataset cardio-rows" in browser.find_element(By.ID, "notice").text
    assert made["dataset"] not in {d["id"] for d in service.list_datasets(home)}


def test_jobs_progress_follows_without_a_reload_and_cancel(browser, site):
    server, home, _, made = site
    first, second = made["jobs"]
    nav_click(browser, "Jobs")
    wait(browser, lambda d: d.find_elements(By.ID, f"job-{first}"))
    browser.execute_script("window.notReloaded = true;")
    shot(browser, "jobs")
    jobs.cancel(str(home), second)  # changed elsewhere: the page follows by itself
    wait(browser, lambda d: d.find_element(By.ID, f"job-{second}").get_attribute("data-state") == "cancelled", 15)
    assert browser.execute_script("return window.notReloaded === true")
    browser.find_element(By.CSS_SELECTOR, f"#job-{first} button.cancel").click()
    wait(browser, lambda d: d.find_elements(By.ID, "notice"))
    assert browser.find_element(By.ID, f"job-{first}").get_attribute("data-state") == "cancelled"
    assert browser.find_element(By.ID, "jobs-live").get_attribute("data-live") == "no"


def test_alerts_rules_outbox_add_and_remove(browser, site):
    server, home, _, made = site
    nav_click(browser, "Alerts")
    assert browser.find_element(By.ID, f"rule-{made['rule']['id']}")
    states = [r.get_attribute("data-state") for r in browser.find_elements(By.CSS_SELECTOR, "#outbox tbody tr")]
    assert states and set(states) == {"sent"}
    browser.find_element(By.CSS_SELECTOR, "#add-rule summary").click()
    browser.find_element(By.ID, "rule-detector").send_keys("cardio-lof")
    browser.find_element(By.ID, "rule-url").send_keys("https://hooks.example.com/am")
    browser.find_element(By.ID, "score_above").send_keys("0.7")
    for field, label in (("drift_above", "Drift above (PSI)"), ("score_drift_above", "Score drift above (PSI)")):
        assert browser.find_element(By.ID, field).is_displayed()  # the rules on drift, beside the others
        assert browser.find_element(By.CSS_SELECTOR, f'label[for="{field}"]').text == label
    browser.find_element(By.ID, "add").click()
    wait(browser, lambda d: d.find_elements(By.ID, "secret"))
    added = next(r for r in alerts.list_rules(str(home)) if r["detector"] == "cardio-lof")
    assert browser.find_element(By.ID, "secret").text == added["secret"] and added["score_above"] == 0.7
    shot(browser, "alerts")
    browser.find_element(By.CSS_SELECTOR, f"#rule-{added['id']} button.remove").click()
    wait(browser, lambda d: d.find_elements(By.ID, "notice"))
    assert [r["id"] for r in alerts.list_rules(str(home))] == [made["rule"]["id"]]


def test_the_audit_page_shows_what_was_just_done(browser, site):
    nav_click(browser, "Detectors")  # from any page: the navigation is on every one
    nav_click(browser, "Audit")
    assert browser.find_element(By.ID, "chain").get_attribute("data-ok") == "yes"
    actions = [r.find_elements(By.TAG_NAME, "td")[3].text for r in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
    assert actions[:4] == ["alerts.remove", "alerts.add", "job.cancel", "dataset.delete"]
    shot(browser, "audit")


def test_detectors_filter_sort_compare_and_readable_labels_on_a_phone(browser, site):
    server, home, *_ = site
    nav_click(browser, "Detectors")
    browser.find_element(By.ID, "q").send_keys("lof" + Keys.ENTER)
    wait(browser, lambda d: "q=lof" in d.current_url)
    assert [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#detectors tbody th")] == ["cardio-lof"]
    browser.get(url(server, "/ui/detectors"))
    browser.find_element(By.PARTIAL_LINK_TEXT, "Name").click()  # sorted by name already: now the other way
    wait(browser, lambda d: "dir=desc" in d.current_url)
    assert [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#detectors tbody th")] == ["cardio-lof", "cardio"]
    shot(browser, "detectors-sorted")
    browser.get(url(server, "/ui/detectors/cardio"))
    browser.find_element(By.ID, "compare-link").click()
    wait(browser, lambda d: d.find_elements(By.ID, "compare-chart"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#compare-chart polyline.dist")) == 2
    shot(browser, "compare")

    def labels_stay_readable():
        assert page_overflow(browser) <= 1
        assert tick_font_px(browser, "compare-chart") >= 11  # shrunk with the chart, they were ~6 px
        shot(browser, "compare-phone")

    at_phone_width(browser, labels_stay_readable)
    browser.get(url(server, "/ui/detectors/cardio/history"))
    sizes = sorted(float(c.get_attribute("r")) for c in browser.find_elements(By.CSS_SELECTOR, "#history-chart circle"))
    assert len(sizes) == len(service.results(home, "cardio")) and sizes[-1] > 3 * sizes[0]
    nav_click(browser, "Health")
    assert "ago" in browser.find_element(By.ID, "api-started").text
