"""The search page in a real browser: headless Chromium (Debian's chromium + chromium-driver)
driven by selenium against a live server on loopback. .ci/run installs both; elsewhere the test
is skipped when they are missing (and fails under CI=true)."""

import os
import shutil

import pytest
from _serve_data import LiveServer, build_serve_index
from fastapi.testclient import TestClient

from commonspace.apps.serve import create_app

pytestmark = pytest.mark.slow
TIMEOUT = 30


def _browser_paths():
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                   "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        message = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_serve_index(tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def app(built):
    return create_app(built["index"])


@pytest.fixture(scope="module")
def url(app):
    with LiveServer(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--autoplay-policy=no-user-gesture-required",
                 "--mute-audio", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    yield driver
    driver.quit()


def result_rows(browser):
    from selenium.webdriver.common.by import By

    return [int(e.get_attribute("data-row"))
            for e in browser.find_elements(By.CSS_SELECTOR, "#results [data-row]")]


def wait_for_status(browser, fragment):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, TIMEOUT).until(
        lambda b: fragment in b.find_element("id", "status").text)


def api_hits(app, **body):
    return TestClient(app).post("/api/search", json=body).json()["hits"]


def api_rows(app, **body):
    return [h["row"] for h in api_hits(app, **body)]


def test_query_in_the_url_then_typed_then_an_upload_then_an_audio_click(browser, url, app,
                                                                         built):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    # 1. a shared link: the query in the URL
    browser.get(f"{url}/?q=a+handwritten+seven&k=6")
    wait_for_status(browser, '6 hits for text: a handwritten seven')
    assert result_rows(browser) == api_rows(app, text="a handwritten seven", k=6)
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .badge.label")]
    assert labels == [str(h["label"]) for h in api_hits(app, text="a handwritten seven", k=6)]
    assert "130 items" in browser.find_element(By.ID, "info").text

    # 2. type a query: results, and the URL now holds it
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys("someone wrote a three", Keys.ENTER)
    wait_for_status(browser, "hits for text: someone wrote a three")
    assert result_rows(browser) == api_rows(app, text="someone wrote a three", k=6)
    assert "q=someone+wrote+a+three" in browser.current_url and "k=6" in browser.current_url
    images = browser.find_elements(By.CSS_SELECTOR, "#results .result.image img")
    assert images and all(browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in images)

    # 3. upload an image file: with every modality searched it finds itself first (by
    # default a query leaves its own modality out)
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "modality")).select_by_value("all")
    wait_for_status(browser, "hits for text: someone wrote a three")
    browser.find_element(By.ID, "file").send_keys(built["image_files"][25])
    wait_for_status(browser, "hits for image: upload")
    assert result_rows(browser)[0] == 25
    assert "q=" not in browser.current_url

    # 4. audio results: click one, it plays its recording from /api/items/ROW/media
    browser.get(f"{url}/?q=the+number+nine&modality=audio&k=3")
    wait_for_status(browser, "3 hits for text: the number nine")
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .result.audio")
    assert len(cards) == 3
    row = int(cards[0].get_attribute("data-row"))
    cards[0].find_element(By.CSS_SELECTOR, "button.play").click()
    audio = cards[0].find_element(By.TAG_NAME, "audio")
    WebDriverWait(browser, TIMEOUT).until(lambda b: b.execute_script(
        "const a = arguments[0]; return a.readyState >= 2 && a.currentTime > 0 && !a.error",
        audio))
    assert "playing" in cards[0].get_attribute("class")
    assert browser.execute_script("return arguments[0].src", audio).endswith(
        f"/api/items/{row}/media")
    assert row in range(60, 90)  # the audio rows
    # everything the page loaded came from this server (no CDN)
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(url) for name in loaded)
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_a_bad_query_in_the_url_shows_the_servers_message(browser, url):
    browser.get(f"{url}/?q=a+seven&modality=video")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, TIMEOUT).until(
        lambda b: b.find_element("id", "error").is_displayed())
    text = browser.find_element("id", "error").text
    assert text.startswith("400") and "unknown modality 'video'" in text
