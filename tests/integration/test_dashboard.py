"""The dashboard in a real browser: headless Chromium opens /dashboard/ on the
session's API, a customer signs in with its key, `meterflow simulate` sends
weeks of office hours and then a stolen key's night, and the fraud alert
shows up in the page's alert list without a reload, next to charts drawn by
our own copy of Chart.js. An outage behind the API is shown, and the page
recovers from it by itself.

With DASHBOARD_SCREENSHOT=docs/images/dashboard.png the test also keeps a
picture of the page at the end; that is how the one in the docs is made.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from typing import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.integration.conftest import stored_count, wait_for

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
FRAUD = "[data-kind='fraud_pattern'][data-metric='api_calls']"  # the rows of the stolen key's alert

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (scripts/install.sh installs them)",
    ),
]


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: Chromium refuses to start as root (CI containers) with its
    # sandbox on; it only ever visits the local test API here.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def simulate(settings, kind: str, prefix: str) -> int:
    """`meterflow simulate KIND` for one customer, run as a user runs it;
    returns how many events the API accepted."""
    result = subprocess.run(
        [sys.executable, "-m", "meterflow.cli", "simulate", kind, "--customers", "1", "--prefix", prefix],
        env={**os.environ, **settings.as_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return int(re.search(r"accepted (\d+)", result.stdout).group(1))


def sign_in(browser, customer_id: str, api_key: str) -> None:
    for field, value in (("customer-id", customer_id), ("api-key", api_key)):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "#connect button[type=submit]").click()


def status_says(browser, text: str) -> bool:
    return text in browser.find_element(By.ID, "status").text


def alert_rows(browser, which: str = "") -> list[dict]:
    """The alert list's rows that match a CSS selector suffix, read in one
    go (the list is redrawn every 2 s: element handles would go stale)."""
    script = "return [...document.querySelectorAll(arguments[0])].map(r => ({...r.dataset, text: r.innerText}))"
    return browser.execute_script(script, f"#alerts tr{which}")


def chart_data(browser, canvas_id: str) -> list[dict]:
    """The datasets Chart.js drew on that canvas ([] when it drew nothing)."""
    script = "const c = Chart.getChart(arguments[0]); return c ? c.data.datasets : [];"
    return browser.execute_script(script, canvas_id)


def test_fraud_alert_appears_live_without_reload(browser, api, settings, clickhouse):
    prefix = f"dash{uuid.uuid4().hex[:8]}"
    customer_id = f"{prefix}-0001"  # the simulator's name for customer 1
    response = api.post("/v1/admin/keys", json={"customer_id": customer_id, "name": "dashboard"})
    assert response.status_code == 201, response.text
    api_key = response.json()["api_key"]
    headers = {"X-API-Key": api_key}
    origin = str(api.base_url).rstrip("/")
    browser.get(f"{origin}/dashboard/")

    # Refusals are shown, not swallowed.
    sign_in(browser, customer_id, "mf_not-a-key")
    wait_for(lambda: status_says(browser, "401"), what="401 shown")
    sign_in(browser, "someone-else", api_key)
    wait_for(lambda: status_says(browser, "403"), what="403 shown")

    sign_in(browser, customer_id, api_key)
    wait_for(lambda: status_says(browser, "live"), what="signed in")
    wait_for(lambda: browser.find_element(By.ID, "alerts-empty").is_displayed(), what="empty alert list")
    browser.execute_script("window.sameDocument = true")  # lost if the page reloads

    history = simulate(settings, "history", prefix)
    wait_for(lambda: stored_count(clickhouse, settings, customer_id) == history, what="history stored")
    # Weekday baselines for the charts and pattern checks (the dataflow learns its own).
    response = api.post(
        "/v1/fraud/baselines/build",
        json={"customer_id": customer_id, "metric": "api_calls", "days": 28},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    alerts = api.get("/v1/alerts", params={"customer_id": customer_id, "kind": "fraud_pattern"}, headers=headers)
    assert [a for a in alerts.json()["alerts"] if a["metric"] == "api_calls"] == []  # office hours are no fraud

    night = simulate(settings, "fraud", prefix)
    # Arrived while the page was open: highlighted as new.
    fraud = wait_for(lambda: alert_rows(browser, f"{FRAUD}.critical.new"), timeout_s=60, what="fraud alert in the page")
    assert "similarity" in fraud[0]["text"]
    assert browser.execute_script("return window.sameDocument") is True

    # The charts: drawn by Chart.js 4 from our own origin, with the data of the API.
    assert browser.execute_script("return Chart.version").startswith("4.")
    history_chart = wait_for(
        lambda: [d for d in chart_data(browser, "history-chart") if sum(d["data"]) == history + night],
        what="every event in the usage chart",
    )[0]
    # The days the API marks as anomalies (the stolen night's among them) are the red bars.
    data = api.get(
        "/v1/dashboard/data", params={"customer_id": customer_id, "metric": "api_calls", "days": 30}, headers=headers
    ).json()
    red = browser.execute_script("return COLORS.anomaly")
    marked = [color == red for color in history_chart["backgroundColor"]]
    assert marked == [day["is_anomaly"] for day in data["usage_history"]] and any(marked)
    today, usual = chart_data(browser, "pattern-chart")
    assert len(today["data"]) == len(usual["data"]) == 24 and sum(usual["data"]) > 0
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert f"{origin}/dashboard/vendor/chart.umd.js" in resources
    assert all(url.startswith(f"{origin}/") for url in resources), resources  # no CDN
    assert not any(api_key in url for url in resources + [browser.current_url])
    # No script errors, no Content-Security-Policy violations; only the refusals asked for above.
    logged = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert [m for m in logged if not re.search(r"status of 40[13]\b", m)] == []

    # On-call filters the list down to fraud.
    Select(browser.find_element(By.ID, "alert-kind")).select_by_value("fraud_pattern")
    wait_for(lambda: {r["kind"] for r in alert_rows(browser)} == {"fraud_pattern"}, what="only fraud alerts listed")

    screenshot = os.environ.get("DASHBOARD_SCREENSHOT")
    if screenshot:
        page = "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight"
        browser.set_window_size(1280, browser.execute_script(page))
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(screenshot)

    # The key and the filter are remembered by the browser: a reload picks up where it was.
    browser.refresh()
    wait_for(lambda: alert_rows(browser, FRAUD), what="alerts after a reload")
    assert {r["kind"] for r in alert_rows(browser)} == {"fraud_pattern"}


def test_an_outage_is_shown_and_the_page_recovers(browser, api, customer, stack):
    browser.get(f"{str(api.base_url).rstrip('/')}/dashboard/")
    sign_in(browser, customer.customer_id, customer.api_key)
    wait_for(lambda: status_says(browser, "live"), what="signed in")
    stack.stop_service("clickhouse")
    try:
        wait_for(lambda: status_says(browser, "503"), what="503 shown")
        assert status_says(browser, "retrying")
    finally:
        stack.start_service("clickhouse")
    wait_for(lambda: status_says(browser, "live"), timeout_s=60, what="the page back to live by itself")
