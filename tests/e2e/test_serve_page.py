"""The chat page of `mixatt serve` in a real browser: Debian's headless Chromium driven by selenium (issue 16).
A message typed into the page and sent with Enter streams its answer into the page: the assistant's bubble is
seen growing while the reply is generated, and its final text equals the server's own greedy answer to the same
conversation through the API (/v1/chat/completions, not streamed), so the page drops and repeats nothing. The
page's stats line then reports the token count. A screenshot is written to the test's directory, and to
docs/serve-chat.png when MIXATT_SCREENSHOT=1 (that is how the committed one was made)."""
import os
import shutil
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import ROOT
from test_serve import CTX, Server

MAX_TOKENS = 40
MESSAGE = "Write two sentences about rivers."


@pytest.fixture(scope="module")
def page_server(mixatt, model):
    s = Server(mixatt, model, "--ctx", CTX, "--parallel", 2)
    yield s
    rc, err = s.stop()
    assert rc == 0, err


@pytest.fixture
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver are missing: run `make deps`"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,700"):
        opts.add_argument(a)
    os.environ["SE_OFFLINE"] = "true"  # selenium must not look for drivers on the network
    b = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    yield b
    b.quit()


def assistant_text(b):
    bubbles = b.find_elements(By.CSS_SELECTOR, "#log .msg.assistant, #log .msg.error")
    return (bubbles[-1].get_attribute("textContent"), bubbles[-1].get_attribute("class")) if bubbles else ("", "")


def test_chat_page_streams_the_greedy_answer(page_server, browser, tmp_path):
    status, _, ref = page_server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": MESSAGE}], "max_tokens": MAX_TOKENS, "temperature": 0})
    assert status == 200, ref
    expected = ref["choices"][0]["message"]["content"]
    n_expected = ref["usage"]["completion_tokens"]
    assert n_expected >= 8, ref  # enough tokens for the growth to be seen

    b = browser
    b.get(page_server.url + "/")
    assert b.title == "mixatt chat"
    for field, value in (("max", MAX_TOKENS), ("temp", 0)):
        el = b.find_element(By.ID, field)
        el.clear()
        el.send_keys(str(value))
    b.find_element(By.ID, "in").send_keys(MESSAGE, Keys.ENTER)

    seen = []  # the distinct lengths of the answer while it streams
    deadline = time.time() + 120
    while time.time() < deadline:
        text, cls = assistant_text(b)
        assert "error" not in cls, text
        if not seen or len(text) != seen[-1]:
            seen.append(len(text))
        if b.find_element(By.ID, "stats").text:  # written once the stream has ended
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"no end of stream in 120 s; the answer so far: {assistant_text(b)[0]!r}")
    text, _ = assistant_text(b)
    assert text == expected
    assert len([n for n in seen if 0 < n < len(expected)]) >= 2, f"not seen streaming: lengths {seen}"
    assert b.find_element(By.ID, "stats").text.startswith(f"{n_expected} tokens in ")
    user = b.find_elements(By.CSS_SELECTOR, "#log .msg.user")
    assert [u.text for u in user] == [MESSAGE]
    assert b.save_screenshot(str(tmp_path / "serve-chat.png"))
    if os.environ.get("MIXATT_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "serve-chat.png", os.path.join(ROOT, "docs", "serve-chat.png"))
