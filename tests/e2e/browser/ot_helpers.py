"""Pages running OpenTok.js apps on salon: the classic script ``/v2/js/opentok.js`` loaded the
way an OpenTok app loads OpenTok's, the app's own code added as an inline script.

Tests name the server fixture before ``browser``: fixtures are torn down in reverse, so the
pages close before the server stops (a server stopping under connected pages makes their SDK
try to reconnect, and Chromium logs each refused WebSocket as a console error)."""

from __future__ import annotations

import json
from typing import Any

from browser_helpers import open_page
from playwright.async_api import Browser, Page

#: The page body of the OpenTok.js "basic video chat" tutorial: two containers the app fills.
BODY = """
<div id="videos" style="position:relative;width:640px;height:480px">
  <div id="subscriber" style="position:absolute;left:0;top:0;width:100%;height:100%"></div>
  <div id="publisher"
       style="position:absolute;width:240px;height:180px;bottom:10px;left:10px;z-index:100"></div>
</div>
"""


#: The "basic video chat" tutorial's app.js, as written there (only the globals it leaves for
#: the test to read are added: window.session/publisher/subscriber and window.errors).
BASIC_VIDEO_CHAT = """
var apiKey = {{API_KEY}};
var sessionId = {{SESSION_ID}};
var token = {{TOKEN}};
window.errors = [];

// Handling all of our errors here by alerting them
function handleError(error) {
  if (error) {
    window.errors.push({name: error.name, code: error.code, message: error.message});
  }
}

function initializeSession() {
  var session = OT.initSession(apiKey, sessionId);
  window.session = session;

  // Subscribe to a newly created stream
  session.on('streamCreated', function(event) {
    window.subscriber = session.subscribe(event.stream, 'subscriber', {
      insertMode: 'append',
      width: '100%',
      height: '100%'
    }, handleError);
  });

  // Create a publisher
  var publisher = OT.initPublisher('publisher', {
    insertMode: 'append',
    width: '100%',
    height: '100%'
  }, handleError);
  window.publisher = publisher;

  // Connect to the session
  session.connect(token, function(error) {
    // If the connection is successful, publish to the session
    if (error) {
      handleError(error);
    } else {
      session.publish(publisher, handleError);
    }
  });
}

initializeSession();
"""


async def open_ot_page(browser: Browser, base: str, label: str, body: str = BODY) -> Page:
    """A page of the server's origin (Chromium lets only a loopback page's WebSocket reach
    127.0.0.1) with ``body``, and ``<script src="/v2/js/opentok.js">`` loaded: the global OT."""
    page = await open_page(browser, label)
    await page.goto(f"{base}/")
    await page.evaluate(
        "(html) => { document.head.replaceChildren(); document.body.innerHTML = html; }", body
    )
    await page.add_script_tag(url=f"{base}/v2/js/opentok.js")
    assert await page.evaluate("typeof OT.initSession") == "function"
    return page


async def run_app(page: Page, source: str, **values: Any) -> None:
    """Add the app's code as an inline classic script, its ``{{NAME}}`` placeholders replaced
    by the JSON of ``values`` (the API key, session ID, token, …)."""
    for name, value in values.items():
        source = source.replace("{{" + name + "}}", json.dumps(value))
    await page.add_script_tag(content=source)


async def wait_for(page: Page, expression: str, timeout_ms: int = 20000, what: str = "") -> Any:
    """Wait until ``expression`` (evaluated in the page) is truthy; return its value."""
    handle = await page.wait_for_function(f"() => {expression}", timeout=timeout_ms)
    value = await handle.json_value()
    assert value, what or expression
    return value


#: Mean brightness (0-255) of a <video>'s current frame, and its decoded size.
FRAME = """(selector) => {
    const video = document.querySelector(selector);
    if (!video || video.readyState < 2 || !video.videoWidth) return null;
    const canvas = document.createElement("canvas");
    canvas.width = 64;
    canvas.height = 48;
    const g = canvas.getContext("2d", {willReadFrequently: true});
    g.drawImage(video, 0, 0, 64, 48);
    const d = g.getImageData(0, 0, 64, 48).data;
    let sum = 0, min = 255, max = 0;
    for (let i = 0; i < d.length; i += 4) {
        const v = (d[i] + d[i + 1] + d[i + 2]) / 3;
        sum += v; min = Math.min(min, v); max = Math.max(max, v);
    }
    return {mean: sum / (d.length / 4), contrast: max - min,
            width: video.videoWidth, height: video.videoHeight};
}"""


async def frame(page: Page, selector: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = await page.evaluate(FRAME, selector)
    return result
