"""Open a Prefect UI page in headless Chromium and measure its embedded plot images.

Prints one JSON object: the rendered size of every `<img>` whose source is an inline PNG
(`data:image/png;base64,...`), and saves a screenshot. Exits 1 when no such image is
rendered with a non-zero size within the time limit. Speaks the Chrome DevTools protocol
over the websocket that `--remote-debugging-port` opens (the `websockets` package comes
with Prefect).

    python deployments/ui_images.py URL SCREENSHOT.png [--chromium PATH] [--timeout 90]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from websockets.sync.client import connect

MEASURE = """JSON.stringify(Array.from(document.querySelectorAll('img'))
  .filter(i => (i.getAttribute('src') || '').startsWith('data:image/png'))
  .map(i => { const r = i.getBoundingClientRect();
              return {width: r.width, height: r.height, natural: [i.naturalWidth, i.naturalHeight],
                      complete: i.complete, alt: i.alt}; }))"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("screenshot")
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    ap.add_argument("--timeout", type=float, default=90.0)
    args = ap.parse_args()
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="ui-check-")
    browser = subprocess.Popen(
        [args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "--window-size=1400,1300",
         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + args.timeout
    try:
        while True:  # the DevTools endpoint comes up after a moment
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5))
                target = next(p for p in pages if p.get("type") == "page")
                break
            except (OSError, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise SystemExit("chromium's DevTools endpoint did not come up")
                time.sleep(0.5)
        ids = itertools.count(1)
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            def call(method: str, **params):
                n = next(ids)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=60))
                    if msg.get("id") == n:
                        return msg.get("result", {})

            call("Page.enable")
            call("Page.navigate", url=args.url)
            images: list[dict] = []
            while time.monotonic() < deadline:
                time.sleep(1.0)
                value = call("Runtime.evaluate", expression=MEASURE, returnByValue=True)
                images = json.loads(value.get("result", {}).get("value") or "[]")
                if any(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in images):
                    time.sleep(1.0)  # let the page settle before the screenshot
                    break
            shot = call("Page.captureScreenshot", format="png")
            with open(args.screenshot, "wb") as fh:
                fh.write(base64.b64decode(shot.get("data", "")))
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)
    ok = any(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in images)
    print(json.dumps({"url": args.url, "images": images, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
