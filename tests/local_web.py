"""Real HTTP servers on loopback addresses standing in for the web in search/fetch tests and benchmarks.

`LocalWeb` serves routes from a dict; `searxng_routes` adds a stand-in that speaks SearXNG's JSON format
(including its `/image_proxy?url=...` image links on the same origin). Nothing here leaves 127.0.0.0/8 / ::1.
"""

from __future__ import annotations

import io
import json
import socket
import ssl
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from PIL import Image

Handler = Callable[[BaseHTTPRequestHandler, dict[str, list[str]]], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _V6Server(_Server):
    address_family = socket.AF_INET6


class LocalWeb:
    """A threaded HTTP server on `host`; `routes[path] = handler(request, query)`; `hits` counts paths."""

    def __init__(self, host: str = "127.0.0.2", tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: Counter[str] = Counter()
        self.hosts: list[str] = []  # the Host header of each request
        self.release = threading.Event()  # frees handlers that stall on purpose
        web = self

        class Request(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                web.hits[parts.path] += 1
                web.hosts.append(self.headers.get("Host", ""))
                handler = web.routes.get(parts.path)
                try:
                    if handler is None:
                        send(self, 404, b"not found", "text/plain")
                    else:
                        handler(self, parse_qs(parts.query))
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self._server = (_V6Server if ":" in host else _Server)((host, 0), Request)
        self.host, self.port = host, self._server.server_address[1]
        self.scheme = "https" if tls else "http"
        self.server_names: list[str | None] = []  # TLS SNI of each handshake
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __enter__(self) -> LocalWeb:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    # -- ready-made handlers ------------------------------------------------------------------------
    def static(self, path: str, body: bytes, content_type: str, status: int = 200, **headers: str) -> None:
        self.routes[path] = lambda req, q: send(req, status, body, content_type, headers)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = lambda req, q: send(req, status, b"", "text/plain", {"Location": location})

    def stall(self, path: str, content_type: str = "text/html") -> None:
        """Headers and a little body, then nothing until the test ends: a page that never finishes."""

        def handler(req: BaseHTTPRequestHandler, q: dict) -> None:
            req.send_response(200)
            req.send_header("Content-Type", content_type)
            req.send_header("Content-Length", "100000")
            req.end_headers()
            req.wfile.write(b"<html><body><p>the beginning")
            req.wfile.flush()
            self.release.wait()
            req.close_connection = True

        self.routes[path] = handler

    def drip(self, path: str, content_type: str = "text/html") -> None:
        """A byte every 20 ms, for ever: each read is quick, only the total deadline stops it."""

        def handler(req: BaseHTTPRequestHandler, q: dict) -> None:
            req.send_response(200)
            req.send_header("Content-Type", content_type)
            req.end_headers()  # no length: the body runs until the connection closes
            req.close_connection = True
            while not self.release.wait(0.02):
                req.wfile.write(b"x")
                req.wfile.flush()

        self.routes[path] = handler

    def drip_headers(self, path: str) -> None:
        """The status line and headers a byte every 20 ms, never ending: the body is never reached."""

        def handler(req: BaseHTTPRequestHandler, q: dict) -> None:
            req.close_connection = True
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n" + b"X-Pad: " + b"a" * 10**6
            for byte in head:
                if self.release.wait(0.02):
                    return
                req.wfile.write(bytes([byte]))
                req.wfile.flush()

        self.routes[path] = handler

    def processing(self, path: str) -> None:
        """`102 Processing` every 100 ms for ever: informational answers, never the final one."""

        def handler(req: BaseHTTPRequestHandler, q: dict) -> None:
            req.close_connection = True
            while not self.release.wait(0.1):
                req.wfile.write(b"HTTP/1.1 102 Processing\r\n\r\n")
                req.wfile.flush()

        self.routes[path] = handler

    def endless(self, path: str, content_type: str = "image/png") -> None:
        """64 KiB chunks until the client hangs up, with no Content-Length."""

        def handler(req: BaseHTTPRequestHandler, q: dict) -> None:
            req.send_response(200)
            req.send_header("Content-Type", content_type)
            req.end_headers()
            req.close_connection = True
            chunk = b"\0" * 65536
            while not self.release.is_set():
                req.wfile.write(chunk)

        self.routes[path] = handler


def send(
    req: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str, headers: dict | None = None
) -> None:
    req.send_response(status)
    req.send_header("Content-Type", content_type)
    req.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        req.send_header(name, value)
    req.end_headers()
    req.wfile.write(body)


# -- content -----------------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny file whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def searxng_routes(web: LocalWeb, images: dict[str, bytes], extra_image_urls: Sequence[str] = ()) -> dict:
    """A SearXNG stand-in on `web`: `/search?format=json` and `/image_proxy?url=...` serving `images`.

    Image results link through the instance's own `/image_proxy` (SearXNG's image_proxy feature); each URL
    in `extra_image_urls` is returned as a plain `img_src`. The returned dict can be changed by the test:
    `status` (answer every search with it), `retry_after` (a Retry-After header with it) and `body` (answer
    every search with these bytes instead of results).
    """
    state: dict[str, Any] = {"status": 200, "retry_after": None, "body": None}
    proxied = {f"https://images.example.org/{name}": data for name, data in images.items()}

    def search(req: BaseHTTPRequestHandler, q: dict) -> None:
        if state["status"] != 200:
            headers = {"Retry-After": str(state["retry_after"])} if state["retry_after"] else {}
            send(req, state["status"], b'{"error": "busy"}', "application/json", headers)
            return
        if state["body"] is not None:
            send(req, 200, state["body"], "application/json")
            return
        query, category = q.get("q", [""])[0], q.get("categories", ["general"])[0]
        page = int(q.get("pageno", ["1"])[0])
        results = []
        if category == "images" and page == 1:
            for i, url in enumerate([*proxied, *extra_image_urls]):
                src = f"/image_proxy?url={quote(url, safe='')}&h=0123abcd" if url in proxied else url
                results.append({
                    "url": f"https://pages.example.org/photo{i}", "title": f"{query} photo {i}",
                    "content": "", "template": "images.html", "img_src": src, "thumbnail_src": "",
                    "resolution": "512 x 512", "source": "pages.example.org", "engine": "bing images",
                    "engines": ["bing images"], "category": "images", "publishedDate": None,
                })  # fmt: skip
        elif category in ("general", "news") and page <= 2:
            for i in range(10):
                n = (page - 1) * 10 + i
                results.append({
                    "url": f"https://news.example.org/{category}/{n}", "title": f"{query} result {n}",
                    "content": f"Snippet {n} about {query}.", "engine": "duckduckgo", "engines": ["duckduckgo"],
                    "category": category, "publishedDate": "2026-10-01T08:00:00" if category == "news" else None,
                })  # fmt: skip
        body = {"query": query, "number_of_results": len(results), "results": results, "answers": [],
                "corrections": [], "infoboxes": [], "suggestions": [], "unresponsive_engines": []}  # fmt: skip
        send(req, 200, json.dumps(body).encode(), "application/json")

    def image_proxy(req: BaseHTTPRequestHandler, q: dict) -> None:
        data = proxied.get(q.get("url", [""])[0])
        if data is None:
            send(req, 404, b"", "text/plain")
        else:
            send(req, 200, data, "image/jpeg" if data.startswith(b"\xff\xd8") else "image/png")

    web.routes["/search"] = search
    web.routes["/image_proxy"] = image_proxy
    return state
