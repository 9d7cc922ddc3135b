"""/docs works with no internet (issue 12, papercut of item 10): the page
refers to assets on the API's own origin only, those assets are served,
and headless Chromium that can resolve no name but loopback renders the
operations from /openapi.json."""

from __future__ import annotations

import re
import shutil
import time
from html.parser import HTMLParser
from typing import Iterator

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from api.dashboard import STATIC_DIR

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


class References(HTMLParser):
    """Every src= and href= of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return parser.urls


def test_docs_refer_only_to_local_assets_and_they_are_served(api):
    page = api.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = references(page.text)
    assert len(urls) == 3, urls  # stylesheet, favicon, script
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
    assert not re.search(r"https?://|cdn\.", page.text), "the page names a remote address"
    assert '"validatorUrl": null' in page.text  # no badge fetched from validator.swagger.io
    served = {url: api.get(url) for url in urls}
    for url, response in served.items():
        assert response.status_code == 200, (url, response.status_code)
    [script] = [u for u in urls if u.endswith(".js")]
    [style] = [u for u in urls if u.endswith(".css")]
    assert "SwaggerUIBundle" in served[script].text and len(served[script].content) > 1_000_000
    assert served[script].headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert ".swagger-ui" in served[style].text and served[style].headers["content-type"].startswith("text/css")
    assert "sourceMappingURL" not in served[style].text  # the map is not vendored: no 404 to ask for
    # Apache-2.0 asks for the licence and notice to travel with the copy.
    assert "Apache License" in (STATIC_DIR / "vendor" / "swagger-ui-LICENSE").read_text()
    assert (STATIC_DIR / "vendor" / "swagger-ui-NOTICE").read_text().strip()


def test_redoc_is_not_served_as_a_blank_page(api):
    """ReDoc would load from a CDN too; only /docs is offered."""
    assert api.get("/redoc").status_code == 404


@pytest.fixture
def offline_browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/install.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Every name but loopback fails to resolve: the internet is gone for this browser.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_swagger_ui_renders_the_operations_offline(offline_browser, api, settings):
    origin = f"http://{settings.api_host}:{settings.api_port}"
    offline_browser.get(origin + "/docs")
    operations = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(operations) < 10:
        operations = offline_browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
        time.sleep(0.2)
    paths = {element.get_attribute("data-path") for element in operations}
    openapi = httpx.get(origin + "/openapi.json").json()
    assert paths == set(openapi["paths"]), paths
    loaded = offline_browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(origin + "/") for url in loaded), loaded
