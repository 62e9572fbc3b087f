"""The safe fetcher: the pure address check, and end-to-end refusals against real servers on loopback.

Every connection these tests open goes to 127.0.0.0/8 or ::1; refused public-looking addresses are only
ever classified, never contacted.
"""

from __future__ import annotations

import ssl
from urllib.parse import quote

import anyio
import pytest
import trustme
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image
from skimage import data

from tests.conftest import connect, error_text, structured
from tests.local_web import LocalWeb, encode, huge_png, searxng_routes
from tools.core.fetch import FetchError, FetchLimits, SafeFetcher, is_public_address, refusal_reason
from tools.core.images import ImageStore, decode_image, resolve_image

pytestmark = pytest.mark.anyio

PAGE = b"<html><head><title>Local</title></head><body><article><p>Hello from a local page.</p></article></body></html>"

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "10.1.2.3": "private",
    "172.31.0.1": "private",
    "192.168.0.10": "private",
    "100.64.0.1": "carrier-grade NAT",
    "169.254.169.254": "metadata",
    "100.100.100.200": "metadata",
    "169.254.10.1": "link-local",
    "0.0.0.0": "unspecified",
    "224.0.0.251": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "192.0.2.1": "reserved",
    "198.18.0.1": "reserved",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fe80::1%eth0": "link-local",
    "fd00::1": "unique local",
    "fc00::1": "unique local",
    "fd00:ec2::254": "metadata",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "2001:db8::1": "reserved",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:169.254.169.254": "metadata",
    "::ffff:0:a00:1": "private",  # IPv4-translated 10.0.0.1
    "64:ff9b::c0a8:1": "private",  # NAT64 of 192.168.0.1
    "::7f00:1": "IPv4-compatible",
    "2002:7f00:1::1": "loopback",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::": "metadata",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo",
    "127.1": "loopback",
    "2130706433": "loopback",
    "0x7f000001": "loopback",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "reason"), sorted(REFUSED.items()))
def test_the_address_check_refuses_private_link_local_metadata_multicast_and_reserved(address, reason):
    assert reason in (refusal_reason(address) or "")
    assert not is_public_address(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_the_address_check_lets_public_addresses_through(address):
    assert refusal_reason(address) is None


async def test_every_loopback_form_is_refused_end_to_end(make_settings):
    with LocalWeb("127.0.0.1") as v4, LocalWeb("::1") as v6:
        v4.static("/", PAGE, "text/html")
        v6.static("/", PAGE, "text/html")
        p, p6 = v4.port, v6.port
        forms = [
            f"http://127.0.0.1:{p}/", f"http://localhost:{p}/", f"http://[::1]:{p6}/", f"http://127.1:{p}/",
            f"http://2130706433:{p}/", f"http://0x7f000001:{p}/", f"http://0.0.0.0:{p}/",
            f"http://[::ffff:127.0.0.1]:{p}/", f"http://017700000001:{p}/", f"https://127.0.0.1:{p}/",
        ]  # fmt: skip
        async with connect(make_settings()) as client:
            for url in forms:
                text = error_text(await client.call_tool("fetch_page", {"url": url}))
                assert "refused" in text and ("loopback" in text or "unspecified" in text), (url, text)
        assert v4.total_hits == 0 and v6.total_hits == 0
        # the same pages are reachable once their origin is allow-listed: the refusals above were the check
        async with connect(make_settings(fetch_intranet_allow=(v4.base,))) as client:
            out = structured(await client.call_tool("fetch_page", {"url": v4.base + "/"}))
            assert "Hello from a local page" in out["text"]


async def test_urls_with_other_schemes_or_credentials_are_refused(settings):
    async with connect(settings) as client:
        for url in [
            "file:///etc/passwd",
            "ftp://example.org/a.html",
            "gopher://example.org/",
            "javascript:alert(1)",
        ]:
            text = error_text(await client.call_tool("fetch_page", {"url": url}))
            assert "http" in text and "scheme" in text, text
        text = error_text(await client.call_tool("fetch_page", {"url": "http://user:pw@127.0.0.2/"}))
        assert "credentials" in text
        assert (await client.list_tools()).tools  # still answering


async def test_a_redirect_from_the_allow_listed_origin_to_another_loopback_address_is_refused(make_settings):
    with LocalWeb("127.0.0.2") as intranet, LocalWeb("127.0.0.1") as inside:
        inside.static("/secret", PAGE, "text/html")
        intranet.redirect("/go", f"{inside.base}/secret")
        intranet.static("/page", PAGE, "text/html")
        intranet.redirect("/hop", "/page")
        intranet.redirect("/broken", "http://[2001:db8::1/page")  # an unbalanced IPv6 bracket
        async with connect(make_settings(fetch_intranet_allow=(intranet.base,))) as client:
            text = error_text(await client.call_tool("fetch_page", {"url": f"{intranet.base}/go"}))
            assert "refused" in text and "127.0.0.1" in text
            text = error_text(await client.call_tool("fetch_page", {"url": f"{intranet.base}/broken"}))
            assert "redirected to a malformed URL" in text and "retry" not in text, text
            out = structured(await client.call_tool("fetch_page", {"url": f"{intranet.base}/hop"}))
            assert out["url"] == f"{intranet.base}/page" and "Hello" in out["text"]
        assert inside.total_hits == 0 and intranet.hits["/go"] == 1


async def test_the_searxng_allow_list_opens_its_origin_to_the_searxng_backend_and_nothing_else(make_settings):
    photo = encode(Image.fromarray(data.astronaut()), "JPEG")
    with LocalWeb("127.0.0.2") as searx, LocalWeb("127.0.0.3") as intranet, LocalWeb("127.0.0.1") as inside:
        proxied = f"{searx.base}/image_proxy?url={quote('https://images.example.org/photo.jpg', safe='')}"
        searxng_routes(searx, {"photo.jpg": photo},
                       extra_image_urls=[f"{searx.base}/hop", f"{intranet.base}/into-searx.jpg"])  # fmt: skip
        searx.static("/page", PAGE, "text/html")
        searx.redirect("/hop", f"{inside.base}/secret.jpg")
        inside.static("/secret.jpg", photo, "image/jpeg")
        intranet.redirect("/into-searx", f"{searx.base}/page")
        intranet.redirect("/into-searx.jpg", proxied)
        settings = make_settings(search_backend="searxng", searxng_url=searx.base, fetch_allow=(searx.base,),
                                 fetch_intranet_allow=(intranet.base,))  # fmt: skip
        async with connect(settings) as client:
            # fetch_page never reaches the SearXNG origin: not directly, not through another origin's redirect
            text = error_text(await client.call_tool("fetch_page", {"url": f"{searx.base}/page"}))
            assert f"refused URL '{searx.base}/page'" in text and "127.0.0.2 (loopback)" in text
            text = error_text(await client.call_tool("fetch_page", {"url": f"{intranet.base}/into-searx"}))
            assert "refused" in text and "127.0.0.2 (loopback)" in text
            # the backend still reaches its instance: the API and the images its proxy serves, nothing more
            args = {"query": "astronaut", "kind": "images", "max_results": 5, "download_images": True}
            out = structured(await client.call_tool("search", args))
            served, hop, into = out["results"]
            assert served["image"]["width"] == 512 and out["downloaded"] == 1
            assert "refused" in hop["download_error"] and "127.0.0.1 (loopback)" in hop["download_error"]
            assert "refused" in into["download_error"] and "127.0.0.2 (loopback)" in into["download_error"]
        assert searx.hits["/page"] == 0 and searx.hits["/image_proxy"] == 1 and inside.total_hits == 0
        assert intranet.hits["/into-searx"] == 1 and intranet.hits["/into-searx.jpg"] == 1


def test_the_connection_goes_to_the_checked_address_with_the_name_kept_in_the_host_header():
    calls = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return {"searx.test": ["127.0.0.2"], "intranet.test": ["10.0.0.5"], "mixed.test": ["93.184.216.34", "127.0.0.1"]}[host]  # fmt: skip

    with LocalWeb("127.0.0.2") as web:
        web.static("/", PAGE, "text/html")
        fetcher = SafeFetcher(allow=(f"http://searx.test:{web.port}",), resolver=resolver)
        got = fetcher.fetch_page(f"http://searx.test:{web.port}/")
        assert got.status == 200 and web.hosts == [f"searx.test:{web.port}"] and calls == ["searx.test"]
        for name, address in (("intranet.test", "10.0.0.5"), ("mixed.test", "127.0.0.1")):
            with pytest.raises(FetchError, match=f"resolves to {address}"):
                fetcher.check(f"http://{name}/")
        fetcher.close()


def test_https_connects_to_the_checked_address_and_verifies_the_certificate_against_the_name():
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("searx.test").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    with LocalWeb("127.0.0.2", tls=server_tls) as web:
        web.static("/", PAGE, "text/html")
        names = {"searx.test": ["127.0.0.2"], "other.test": ["127.0.0.2"]}
        fetcher = SafeFetcher(
            allow=(f"https://searx.test:{web.port}", f"https://other.test:{web.port}"),
            resolver=lambda host, port: names[host],
            verify=client_tls,
        )
        assert fetcher.fetch_page(f"https://searx.test:{web.port}/").status == 200
        assert web.server_names == ["searx.test"] and web.hosts == [f"searx.test:{web.port}"]
        with pytest.raises(
            FetchError, match="(?s)certificate .* is not valid for its name.*Hostname mismatch"
        ):  # the certificate names searx.test only
            fetcher.fetch_page(f"https://other.test:{web.port}/")
        fetcher.close()


def test_images_that_are_html_truncated_huge_or_endless_are_refused(tmp_path):
    photo = Image.fromarray(data.astronaut())
    jpeg = encode(photo, "JPEG")
    with LocalWeb("127.0.0.2") as web:
        web.static("/page.png", PAGE, "text/html")
        web.static("/truncated.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")
        web.static("/bomb.png", huge_png(), "image/png")
        web.static("/ok.jpg", jpeg, "image/jpeg")
        web.routes["/declared.png"] = lambda req, q: _declare_200mb(req)
        web.endless("/endless.png")
        fetcher = SafeFetcher(allow=(web.base,), limits=FetchLimits(max_bytes=2 * 2**20))

        def load(path: str) -> Image.Image:
            return decode_image(fetcher.fetch_image(web.base + path), "image", 8192 * 8192)

        assert load("/ok.jpg").size == photo.size
        cases = {
            "/page.png": "not an image|expected image",
            "/truncated.jpg": "truncated|corrupt",
            "/bomb.png": "30000x30000|too large",
            "/declared.png": "209715200 bytes, above the limit",
            "/endless.png": "more than the limit",
        }
        for path, message in cases.items():
            with pytest.raises(ToolError, match=message):
                load(path)
        # an image reference given as a URL goes through the same fetcher
        store = ImageStore(tmp_path / "images")
        resolved = resolve_image(web.base + "/ok.jpg", field="image", store=store, readable_dirs=(),
                                 fetch=fetcher.fetch_image)  # fmt: skip
        assert resolved.source == "url" and resolved.image.size == photo.size
        with pytest.raises(ToolError, match="loopback"):
            resolve_image("http://127.0.0.1:9/x.png", field="image", store=store, readable_dirs=(),
                          fetch=fetcher.fetch_image)  # fmt: skip
        fetcher.close()


def _declare_200mb(req) -> None:
    req.send_response(200)
    req.send_header("Content-Type", "image/png")
    req.send_header("Content-Length", str(200 * 2**20))
    req.end_headers()
    req.close_connection = True


async def test_a_page_that_never_finishes_sending_is_cut_off_and_the_server_stays_up(make_settings):
    with LocalWeb("127.0.0.2") as web:
        web.stall("/stall")
        web.drip("/drip")
        web.drip_headers("/drip-headers")
        web.processing("/processing")
        web.static("/ok", PAGE, "text/html")
        async with connect(make_settings(fetch_intranet_allow=(web.base,), fetch_timeout_s=1.0)) as client:
            for path in ("/stall", "/drip", "/drip-headers", "/processing"):
                with anyio.fail_after(5):
                    text = error_text(await client.call_tool("fetch_page", {"url": web.base + path}))
                assert "did not finish within 1 s" in text and "retry" in text
            assert (
                "Hello" in structured(await client.call_tool("fetch_page", {"url": web.base + "/ok"}))["text"]
            )


def test_a_compressed_body_is_decoded_within_the_byte_limit():
    import gzip
    import tracemalloc
    import zlib

    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    bodies = {
        "/gzip.html": (gzip.compress(PAGE), "gzip"),
        "/deflate.html": (zlib.compress(PAGE), "deflate"),
        "/raw-deflate.html": (raw_deflate.compress(PAGE) + raw_deflate.flush(), "deflate"),
        "/bomb.html": (gzip.compress(b"\0" * (40 * 2**20)), "gzip"),  # 40 KB on the wire, 40 MB decoded
        "/corrupt.html": (gzip.compress(PAGE)[:-12] + b"garbage!garb", "gzip"),
        "/brotli.html": (b"\x1b\x10\x00", "br"),
    }
    with LocalWeb("127.0.0.2") as web:
        for path, (body, coding) in bodies.items():
            web.static(path, body, "text/html", **{"Content-Encoding": coding})
        fetcher = SafeFetcher(allow=(web.base,), limits=FetchLimits(max_bytes=2**20))
        for path in ("/gzip.html", "/deflate.html", "/raw-deflate.html"):
            assert fetcher.fetch_page(web.base + path).data == PAGE, path
        tracemalloc.start()
        try:
            with pytest.raises(FetchError, match="more than the limit of 1048576 bytes"):
                fetcher.fetch_page(web.base + "/bomb.html")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * 2**20, peak  # decoding the whole chunk first held all 40 MB at once
        with pytest.raises(FetchError, match="corrupt gzip body"):
            fetcher.fetch_page(web.base + "/corrupt.html")
        with pytest.raises(FetchError, match="does not decode"):
            fetcher.fetch_page(web.base + "/brotli.html")
        fetcher.close()
