"""A real headless Chromium driven over the DevTools protocol: load a page, report its images and errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--remote-debugging-port=0",
]
# every <img> the page shows: [data-image-id, loaded with real pixels]
IMAGES_JS = (
    "JSON.stringify(Array.from(document.querySelectorAll('img')).map("
    "i => [i.dataset.imageId || i.getAttribute('src').slice(0, 40), i.className, i.complete && i.naturalWidth > 0]))"
)


@dataclass
class PageReport:
    url: str
    images: list[tuple[str, str, bool]]  # (image id, class, loaded)
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    title: str = ""


class Browser:
    """One headless Chromium process; `load(url)` opens the page in its tab and reports on it."""

    def __init__(self, profile: Path, headers: dict[str, str] | None = None) -> None:
        assert CHROMIUM, "chromium is not installed"
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.headers = headers or {}
        self.endpoint = self._devtools_endpoint()
        port = self.endpoint.split(":")[2].split("/")[0]
        tabs = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in tabs if t["type"] == "page")
        import websocket  # websocket-client

        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.send(method)
        if self.headers:
            self.send("Network.setExtraHTTPHeaders", {"headers": self.headers})

    def _devtools_endpoint(self) -> str:
        """Chromium prints 'DevTools listening on ws://...' on stderr once it is ready; wait for that line."""
        found: dict[str, str] = {}
        ready = threading.Event()

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:  # keep draining so Chromium never blocks on a full pipe
                if "DevTools listening on" in line and not ready.is_set():
                    found["url"] = line.split("DevTools listening on", 1)[1].strip()
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        assert ready.wait(60), "chromium did not start its DevTools endpoint within 60 s"
        assert "url" in found, "chromium exited before its DevTools endpoint was ready"
        return found["url"]

    def send(self, method: str, params: dict[str, Any] | None = None, events: list | None = None) -> dict:
        """Send one command and return its result; events seen meanwhile go to `events`."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})
            if events is not None:
                events.append(message)

    def load(self, url: str) -> PageReport:
        events: list[dict] = []
        self.send("Page.navigate", {"url": url}, events)
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            events.append(json.loads(self.ws.recv()))
        found = self.send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True}, events)
        title = self.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True}, events)
        images = [tuple(i) for i in json.loads(found["result"]["value"])]
        return PageReport(url, images, errors(events), title["result"]["value"])

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            out.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            out.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            out.append(f"network: {params.get('errorText')}")
    return out
