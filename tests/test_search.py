"""search and fetch_page through the MCP client, against real local servers (a SearXNG stand-in, pages,
images) and the ddgs adapter fed the library's own result shapes and exceptions."""

from __future__ import annotations

import json
import shutil

import ddgs
import pytest
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException
from PIL import Image
from skimage import data

from tests.conftest import connect, error_text, structured
from tests.local_web import LocalWeb, encode, huge_png, searxng_routes, send
from tools.search.service import TTLCache

pytestmark = pytest.mark.anyio


@pytest.fixture
def searx():
    with LocalWeb("127.0.0.2") as web:
        photos = {"astronaut.jpg": encode(Image.fromarray(data.astronaut()), "JPEG"),
                  "coffee.png": encode(Image.fromarray(data.coffee()))}  # fmt: skip
        web.state = searxng_routes(web, photos)
        yield web


@pytest.fixture
def searx_settings(make_settings, searx):
    return make_settings(search_backend="searxng", searxng_url=searx.base, fetch_allow=(searx.base,))


async def test_searxng_images_are_downloaded_into_the_store_with_their_source(make_settings):
    photos = {"astronaut.jpg": encode(Image.fromarray(data.astronaut()), "JPEG"),
              "coffee.png": encode(Image.fromarray(data.coffee()))}  # fmt: skip
    with LocalWeb("127.0.0.2") as searx, LocalWeb("127.0.0.1") as elsewhere:
        elsewhere.static("/private.png", encode(Image.new("RGB", (8, 8))), "image/png")
        searxng_routes(searx, photos, extra_image_urls=[elsewhere.base + "/private.png"])
        settings = make_settings(search_backend="searxng", searxng_url=searx.base, fetch_allow=(searx.base,))
        async with connect(settings) as client:
            args = {"query": "astronaut", "kind": "images", "max_results": 5, "download_images": True}
            result = await client.call_tool("search", args)
            out = structured(result)
            assert out["backend"] == "searxng" and out["cached"] is False and out["count"] == 3
            assert out["downloaded"] == 2 and "1 of 3" in out["note"]
            first, second, refused = out["results"]
            assert first["width"] == 512 and first["url"] == "https://pages.example.org/photo0"
            assert "refused" in refused["download_error"] and "loopback" in refused["download_error"]
            assert refused["image"] is None
            previews = [c for c in result.content if c.type == "image"]
            assert len(previews) == 2 and all(p.mime_type == "image/jpeg" for p in previews)
            meta = json.loads((settings.images_dir / f"{first['image']['id']}.json").read_text())
            assert meta["tool"] == "search" and meta["page_url"] == first["url"]
            assert meta["source_url"] == first["image_url"] and "/image_proxy?url=" in meta["source_url"]
            assert (first["image"]["width"], first["image"]["height"]) == (512, 512)
            assert (second["image"]["width"], second["image"]["height"]) == (600, 400)
            resource = await client.read_resource(first["image"]["uri"])
            assert resource.contents[0].blob
        assert elsewhere.total_hits == 0


async def test_searxng_web_and_news_results_are_normalised_and_paged(searx, searx_settings):
    async with connect(searx_settings) as client:
        out = structured(await client.call_tool("search", {"query": "new bridge", "max_results": 15}))
        assert out["count"] == 15 and searx.hits["/search"] == 2  # two SearXNG pages of 10
        hit = out["results"][11]
        assert hit["title"] == "new bridge result 11" and hit["snippet"] == "Snippet 11 about new bridge."
        assert hit["source"] == "news.example.org" and hit["date"] is None and hit["image_url"] is None
        news = structured(await client.call_tool("search", {"query": "bridge", "kind": "news", "max_results": 3,
                                                            "timelimit": "w", "region": "de-de"}))  # fmt: skip
        assert news["count"] == 3 and news["results"][0]["date"] == "2026-10-01T08:00:00"


async def test_results_keep_only_web_links_each_page_once_and_text_fields_as_text(searx, searx_settings):
    """A javascript:, data: or ftp: link is no result to pass on; a #fragment is the same page; a field that
    is not text (null, a list, a number) is empty, not its Python repr."""
    junk = [
        {"url": "javascript:alert(document.cookie)", "title": "script"},
        {"url": "data:text/html,<script>alert(1)</script>", "title": "data"},
        {"url": "ftp://files.example.org/f.txt", "title": "ftp"},
        {"url": "  https://example.org/spaced  ", "title": "spaced", "content": ["a", "list"]},
        {"url": "https://example.org/a#top", "title": "a, at its top"},
        {"url": "https://example.org/a", "title": "a again"},
        {"url": "https://example.org/b", "title": None, "content": 5, "publishedDate": 0},
        {"url": None, "title": "no link at all"},
    ]
    searx.state.update(body=json.dumps({"results": junk}).encode())
    async with connect(searx_settings) as client:
        out = structured(await client.call_tool("search", {"query": "links", "max_results": 10}))
    assert [r["url"] for r in out["results"]] == [
        "https://example.org/spaced",
        "https://example.org/a#top",
        "https://example.org/b",
    ]
    assert out["count"] == 3 and out["results"][0]["snippet"] == ""
    assert out["results"][2]["title"] == "" and out["results"][2]["snippet"] == ""
    assert out["results"][2]["date"] is None


async def test_a_malformed_result_link_is_dropped_or_emptied_and_the_other_results_come_back(
    searx, searx_settings
):
    """A link with an unbalanced IPv6 bracket is no link to pass on, like a javascript: one: it empties its
    own field (a result left with no link is dropped), never the whole search."""
    good = {"url": "https://example.org/good", "title": "good", "content": "useful"}
    web = [good, {"url": "http://[2001:db8::1/page", "title": "bad page"}]
    images = [
        {"url": "https://example.org/photo", "title": "bad image", "img_src": "http://[::1/i.jpg",
         "thumbnail_src": "http://[::1/t.jpg"},
        {"url": "http://[::1/p", "title": "bad page, good image", "img_src": "https://img.example.org/b.jpg"},
        {"url": "http://[::1/q", "title": "nothing left", "img_src": "http://[::1/j.jpg"},
    ]  # fmt: skip
    async with connect(searx_settings) as client:
        searx.state.update(body=json.dumps({"results": web}).encode())
        out = structured(await client.call_tool("search", {"query": "bridge"}))
        assert out["count"] == 1 and out["results"][0]["url"] == "https://example.org/good"
        searx.state.update(body=json.dumps({"results": images}).encode())
        out = structured(await client.call_tool("search", {"query": "bridge", "kind": "images"}))
    assert [(r["title"], r["url"], r["image_url"]) for r in out["results"]] == [
        ("bad image", "https://example.org/photo", None),
        ("bad page, good image", "", "https://img.example.org/b.jpg"),
    ]
    assert out["results"][0]["thumbnail_url"] is None and out["results"][1]["source"] == ""


async def test_the_same_query_within_minutes_answers_from_the_cache(searx, searx_settings):
    async with connect(searx_settings) as client:
        args = {"query": "Eiffel Tower 2026", "kind": "images", "max_results": 2, "download_images": True}
        first = structured(await client.call_tool("search", args))
        calls = searx.total_hits
        again = await client.call_tool("search", {**args, "query": "  eiffel   tower 2026 "})
        second = structured(again)
        assert first["cached"] is False and second["cached"] is True and searx.total_hits == calls
        assert [r["image"]["id"] for r in second["results"]] == [r["image"]["id"] for r in first["results"]]
        assert len([c for c in again.content if c.type == "image"]) == 2


async def test_backend_429_and_500_become_errors_that_say_when_to_retry(searx, searx_settings):
    async with connect(searx_settings) as client:
        searx.state.update(status=500)
        text = error_text(await client.call_tool("search", {"query": "outage"}))
        assert "HTTP 500" in text and "Retry in 30 s" in text
        searx.state.update(status=429, retry_after=120)
        text = error_text(await client.call_tool("search", {"query": "busy"}))
        assert "429" in text and "Retry in 120 s" in text
        searx.state.update(status=200)
        calls = searx.total_hits
        text = error_text(await client.call_tool("search", {"query": "right away"}))
        assert "rate limited" in text and "Retry in 1" in text and searx.total_hits == calls  # not even asked


async def test_a_later_searxng_page_that_fails_still_returns_the_pages_before_it_with_a_note(
    searx, searx_settings
):
    """max_results=15 asks SearXNG for two pages; when the second fails, the first's 10 results come back and
    the note says why there are fewer and when to search again. A 429 there still pauses new searches."""
    failure = {"status": 500}
    first_pages = searx.routes["/search"]

    def search(req, q) -> None:
        if q.get("pageno") == ["2"]:
            send(req, failure["status"], b'{"error": "busy"}', "application/json", {"Retry-After": "120"})
        else:
            first_pages(req, q)

    searx.routes["/search"] = search
    async with connect(searx_settings) as client:
        out = structured(await client.call_tool("search", {"query": "old bridge", "max_results": 15}))
        assert out["count"] == 10 and out["results"][9]["title"] == "old bridge result 9"
        assert "Only 10 of the 15" in out["note"] and "HTTP 500" in out["note"] and "page 2" in out["note"]
        assert "Search again in 30 s" in out["note"] and searx.hits["/search"] == 2
        failure["status"] = 429
        out = structured(await client.call_tool("search", {"query": "new bridge", "max_results": 15}))
        assert out["count"] == 10 and "429" in out["note"] and "refused for 120 s" in out["note"]
        asked = searx.hits["/search"]
        text = error_text(await client.call_tool("search", {"query": "another query"}))
        assert "rate limited" in text and "Retry in 120 s" in text and searx.hits["/search"] == asked
        again = structured(await client.call_tool("search", {"query": "new bridge", "max_results": 15}))
        assert again["cached"] is True and again["count"] == 10 and again["note"] == out["note"]


async def test_a_partial_image_search_keeps_its_note_beside_the_download_notes(searx, searx_settings):
    first_pages = searx.routes["/search"]
    searx.routes["/search"] = lambda req, q: (
        send(req, 502, b"", "text/plain") if q.get("pageno") == ["2"] else first_pages(req, q)
    )
    async with connect(searx_settings) as client:
        shutil.rmtree(searx_settings.images_dir)
        searx_settings.images_dir.write_bytes(b"")  # every store write fails
        args = {"query": "astronaut", "kind": "images", "max_results": 5, "download_images": True}
        out = structured(await client.call_tool("search", args))
        assert out["count"] == 2 and out["downloaded"] == 0 and searx.hits["/search"] == 2
        assert out["note"].startswith("Only 2 of the 5") and "HTTP 502" in out["note"]
        assert "2 of 2 images could not be downloaded" in out["note"]
        searx_settings.images_dir.unlink()
        searx_settings.images_dir.mkdir()
        again = structured(await client.call_tool("search", args))  # downloads retried from the cache
        assert again["cached"] is True and again["downloaded"] == 2 and searx.hits["/search"] == 2
        assert again["note"].startswith("Only 2 of the 5") and "could not be downloaded" not in again["note"]


def test_a_partial_answer_is_cached_only_until_the_backend_may_answer_again():
    now = [0.0]
    cache = TTLCache(300, clock=lambda: now[0])
    cache.put("full", 1)
    cache.put("partial", 2, ttl_s=120)
    cache.put("longer than the cache", 3, ttl_s=900)
    now[0] = 121
    assert (cache.get("full"), cache.get("partial")) == (1, None)
    now[0] = 301
    assert cache.get("full") is None and cache.get("longer than the cache") is None


async def test_the_local_rate_limit_says_when_to_retry_and_cached_queries_still_answer(make_settings, searx):
    settings = make_settings(search_backend="searxng", searxng_url=searx.base, fetch_allow=(searx.base,),
                             search_per_minute=2)  # fmt: skip
    async with connect(settings) as client:
        structured(await client.call_tool("search", {"query": "one"}))
        structured(await client.call_tool("search", {"query": "two"}))
        text = error_text(await client.call_tool("search", {"query": "three"}))
        assert "2 searches per minute" in text and "Retry in" in text
        assert structured(await client.call_tool("search", {"query": "one"}))["cached"] is True


async def test_a_json_api_switched_off_is_an_error_that_says_not_to_retry(searx, searx_settings):
    searx.state.update(status=403)
    async with connect(searx_settings) as client:
        text = error_text(await client.call_tool("search", {"query": "anything"}))
        assert "search.formats" in text and "Retrying will not help" in text


async def test_answers_that_are_not_searxng_json_are_a_clear_error(searx, searx_settings):
    async with connect(searx_settings) as client:
        for i, body in enumerate([b'{"results": null}', b'{"results": {"a": 1}}', b"[1, 2]", b"<html>"]):
            searx.state.update(body=body)
            text = error_text(await client.call_tool("search", {"query": f"odd {i}"}))
            assert "not its JSON format" in text and "Retrying will not help" in text, text
        searx.state.update(body=None)
        assert structured(await client.call_tool("search", {"query": "still up"}))["count"] == 8


async def test_bad_search_input_gets_clear_errors_and_the_server_stays_up(searx, searx_settings):
    bad = [
        ({"query": ""}, "query: empty"),
        ({"query": "   "}, "query: empty"),
        # static ranges and choices are in the input schema (refused before the tool runs, naming the field)
        ({"query": "x", "max_results": 0}, "max_results: input should be greater than or equal to 1 (got 0)"),
        ({"query": "x", "max_results": 51}, "max_results: input should be less than or equal to 50 (got 51)"),
        (
            {"query": "x", "kind": "videos"},
            "kind: input should be 'web', 'news' or 'images' (got \"videos\")",
        ),
        ({"query": "x", "timelimit": "decade"}, "timelimit"),
        ({"query": "x", "safesearch": "maybe"}, "safesearch"),
        ({"query": "x", "region": "germany"}, "region"),
        ({"query": "x", "download_images": True}, "use kind='images'"),
        ({"query": "x", "kind": "images", "max_results": 30, "download_images": True}, "above 20"),
    ]
    async with connect(searx_settings) as client:
        for args, message in bad:
            assert message in error_text(await client.call_tool("search", args)), args
        assert structured(await client.call_tool("search", {"query": "fine"}))["count"] == 8
    assert searx.hits["/search"] == 1


async def test_downloaded_images_that_are_html_truncated_bombs_or_too_big_get_a_clear_error_each(
    make_settings,
):
    jpeg = encode(Image.fromarray(data.astronaut()), "JPEG")
    with LocalWeb("127.0.0.2") as web:
        web.static("/page.png", b"<html><body>not an image</body></html>", "text/html")
        web.static("/cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")
        web.static("/bomb.png", huge_png(), "image/png")
        web.endless("/big.png")
        searxng_routes(web, {}, extra_image_urls=[web.base + p for p in ("/page.png", "/cut.jpg", "/bomb.png",
                                                                          "/big.png")])  # fmt: skip
        settings = make_settings(search_backend="searxng", searxng_url=web.base, fetch_allow=(web.base,),
                                 fetch_max_bytes=2 * 2**20)  # fmt: skip
        async with connect(settings) as client:
            args = {"query": "bad", "kind": "images", "max_results": 4, "download_images": True}
            out = structured(await client.call_tool("search", args))
            errors = [r["download_error"] for r in out["results"]]
            assert out["downloaded"] == 0 and "4 of 4" in out["note"]
            assert "text/html" in errors[0]
            assert "truncated" in errors[1] or "corrupt" in errors[1]
            assert "30000x30000" in errors[2] or "too large" in errors[2]
            assert "more than the limit of 2097152 bytes" in errors[3]
            assert structured(await client.call_tool("search", {"query": "still up"}))["count"] == 8


async def test_a_cmyk_product_photo_is_downloaded_and_stored_as_rgb_beside_the_others(make_settings):
    photos = {"product.jpg": encode(Image.fromarray(data.astronaut()).convert("CMYK"), "JPEG"),
              "coffee.png": encode(Image.fromarray(data.coffee()))}  # fmt: skip
    with LocalWeb("127.0.0.2") as searx:
        searxng_routes(searx, photos)
        settings = make_settings(search_backend="searxng", searxng_url=searx.base, fetch_allow=(searx.base,))
        async with connect(settings) as client:
            args = {"query": "kettle", "kind": "images", "max_results": 2, "download_images": True}
            out = structured(await client.call_tool("search", args))
    assert out["downloaded"] == 2 and out["note"] is None
    product, coffee = (r["image"] for r in out["results"])
    assert product["mode"] == "RGB" and (product["width"], product["height"]) == (512, 512)
    assert coffee["mode"] == "RGB" and (coffee["width"], coffee["height"]) == (600, 400)


async def test_an_image_store_that_fails_costs_each_result_its_image_not_the_whole_search(
    searx, searx_settings
):
    async with connect(searx_settings) as client:
        shutil.rmtree(searx_settings.images_dir)
        searx_settings.images_dir.write_bytes(b"")  # the store's folder is gone: every write fails
        args = {"query": "astronaut", "kind": "images", "max_results": 2, "download_images": True}
        out = structured(await client.call_tool("search", args))
        assert out["count"] == 2 and out["downloaded"] == 0 and "2 of 2" in out["note"]
        assert all("NotADirectoryError" in r["download_error"] for r in out["results"])
        assert structured(await client.call_tool("search", {"query": "still up"}))["count"] == 8
        # the failures are not kept: the same search, once the store is back, downloads from the cached results
        searx_settings.images_dir.unlink()
        searx_settings.images_dir.mkdir()
        asked = searx.hits["/search"]
        again = await client.call_tool("search", args)
        out = structured(again)
        assert out["cached"] is True and searx.hits["/search"] == asked  # the backend is not asked again
        assert out["downloaded"] == 2 and out["note"] is None
        assert all(r["image"] and r["download_error"] is None for r in out["results"])
        assert len([c for c in again.content if c.type == "image"]) == 2
        assert len(list(searx_settings.images_dir.glob("*.png"))) == 2


# -- ddgs ------------------------------------------------------------------------------------------------
class FakeDDGS:
    """The `ddgs.DDGS` interface with the shapes ddgs 9.x returns (see ddgs/results.py); no network."""

    raises: Exception | None = None
    calls: list[tuple[str, str, dict]] = []
    extra: list[dict] = []  # rows a test adds after each method's own

    def __init__(self, proxy: str | None = None, timeout: int | None = 5, *, verify: bool = True) -> None:
        self.timeout = timeout

    def _answer(self, method: str, query: str, kwargs: dict, rows: list[dict]) -> list[dict]:
        FakeDDGS.calls.append((method, query, kwargs))
        if FakeDDGS.raises is not None:
            raise FakeDDGS.raises
        return [*rows, *FakeDDGS.extra][: kwargs.get("max_results") or 10]

    def text(self, query: str, **kwargs) -> list[dict]:
        rows = [
            {"title": "Bridge opens", "href": "https://city.example.org/bridge", "body": "The new bridge..."}
        ]
        return self._answer("text", query, kwargs, rows)

    def news(self, query: str, **kwargs) -> list[dict]:
        rows = [{"date": "2026-10-30T09:15:00+00:00", "title": "Bridge opens", "body": "Crowds...",
                 "url": "https://news.example.org/a", "image": "https://img.example.org/a.jpg", "source": "City News"}]  # fmt: skip
        return self._answer("news", query, kwargs, rows)

    def images(self, query: str, **kwargs) -> list[dict]:
        rows = [{"title": "Bridge at dusk", "image": "https://img.example.org/full.jpg",
                 "thumbnail": "https://tse.example.org/th.jpg", "url": "https://photos.example.org/p/1",
                 "height": 1080, "width": "1920", "source": "Bing"}]  # fmt: skip
        return self._answer("images", query, kwargs, rows)


@pytest.fixture
def fake_ddgs(monkeypatch):
    monkeypatch.setattr(ddgs, "DDGS", FakeDDGS)
    FakeDDGS.raises, FakeDDGS.calls, FakeDDGS.extra = None, [], []
    return FakeDDGS


async def test_the_ddgs_adapter_normalises_the_library_result_shapes(settings, fake_ddgs):
    async with connect(settings) as client:
        web = structured(
            await client.call_tool("search", {"query": "bridge", "region": "uk-en", "timelimit": "m"})
        )
        assert web["backend"] == "ddgs" and web["results"][0] == {**web["results"][0], "title": "Bridge opens",
            "url": "https://city.example.org/bridge", "snippet": "The new bridge...", "source": "city.example.org"}  # fmt: skip
        news = structured(await client.call_tool("search", {"query": "bridge", "kind": "news"}))["results"][0]
        assert news["date"] == "2026-10-30T09:15:00+00:00" and news["source"] == "City News"
        assert (
            news["image_url"] == "https://img.example.org/a.jpg"
            and news["url"] == "https://news.example.org/a"
        )
        image = structured(await client.call_tool("search", {"query": "bridge", "kind": "images"}))[
            "results"
        ][0]
        assert (image["width"], image["height"]) == (1920, 1080) and image[
            "url"
        ] == "https://photos.example.org/p/1"
        assert image["image_url"] == "https://img.example.org/full.jpg"
        assert image["thumbnail_url"] == "https://tse.example.org/th.jpg"
    method, query, kwargs = fake_ddgs.calls[0]
    assert (method, query) == ("text", "bridge")
    assert kwargs == {"region": "uk-en", "timelimit": "m", "safesearch": "moderate", "max_results": 8}


async def test_a_malformed_ddgs_link_costs_only_its_own_result(settings, fake_ddgs):
    fake_ddgs.extra = [{"title": "bad", "href": "http://[2001:db8::1/page", "body": "junk",
                        "url": "http://[::1/p", "image": "http://[::1/i.jpg", "thumbnail": "http://[::1/t.jpg"}]  # fmt: skip
    async with connect(settings) as client:
        for kind in ("web", "news", "images"):
            out = structured(await client.call_tool("search", {"query": "bridge", "kind": kind}))
            assert out["count"] == 1 and out["results"][0]["title"] != "bad", kind


async def test_ddgs_exceptions_become_errors_that_say_whether_and_when_to_retry(settings, fake_ddgs):
    async with connect(settings) as client:
        fake_ddgs.raises = TimeoutException("https://html.duckduckgo.com/html timed out")
        assert "Retry in 10 s" in error_text(await client.call_tool("search", {"query": "a"}))
        fake_ddgs.raises = DDGSException("No results found.")
        out = structured(await client.call_tool("search", {"query": "b"}))
        assert out["count"] == 0 and out["results"] == []
        fake_ddgs.raises = DDGSException("ConnectError: dns error: failed to lookup address information")
        assert "Retry in 30 s" in error_text(await client.call_tool("search", {"query": "c"}))
        fake_ddgs.raises = RatelimitException("https://duckduckgo.com 202 Ratelimit")
        text = error_text(await client.call_tool("search", {"query": "d"}))
        assert "rate limited" in text and "Retry in 60 s" in text
        calls = len(fake_ddgs.calls)
        fake_ddgs.raises = None
        assert "Retry in" in error_text(await client.call_tool("search", {"query": "e"}))
        assert len(fake_ddgs.calls) == calls  # the cooldown answered without asking ddgs
        assert structured(await client.call_tool("search", {"query": "b"}))["cached"] is True


# -- fetch_page ----------------------------------------------------------------------------------------
ARTICLE = """<html><head><title>The Harbour Bridge reopens</title>
<meta property="og:image" content="/media/cover.jpg"></head><body>
<nav><a href="/">Home</a> | <a href="/news">News</a> | <a href="/login">Log in</a></nav>
<article><h1>The Harbour Bridge reopens</h1>
{paragraphs}
<img src="/media/span.jpg" alt="the new span"><img src="https://cdn.example.org/pier.png">
</article><footer>Copyright 2026 City Paper. All rights reserved. Cookie settings.</footer></body></html>"""


def article(paragraphs: int) -> bytes:
    body = "\n".join(
        f"<p>Paragraph {i}: the repainted bridge is teal with copper rivets, and its lamps were restored "
        f"to the 1932 design after public consultation number {i}.</p>"
        for i in range(paragraphs)
    )
    return ARTICLE.format(paragraphs=body).encode()


@pytest.fixture
def pages():
    with LocalWeb("127.0.0.2") as web:
        web.static("/short", article(3), "text/html; charset=utf-8")
        web.static("/long", article(60), "text/html")
        web.static("/photo.png", encode(Image.new("RGB", (4, 4))), "image/png")
        web.static("/doc.pdf", b"%PDF-1.4", "application/pdf")
        yield web


async def test_fetch_page_extracts_the_main_text_title_and_image_urls(make_settings, pages):
    async with connect(make_settings(fetch_intranet_allow=(pages.base,))) as client:
        out = structured(await client.call_tool("fetch_page", {"url": pages.base + "/short"}))
        assert out["title"] == "The Harbour Bridge reopens" and out["next_start"] is None
        assert "teal with copper rivets" in out["text"] and "Paragraph 2" in out["text"]
        assert "Log in" not in out["text"] and "Cookie settings" not in out["text"]
        assert out["images"] == [f"{pages.base}/media/cover.jpg", f"{pages.base}/media/span.jpg",
                                 "https://cdn.example.org/pier.png"]  # fmt: skip


async def test_a_malformed_image_link_on_a_page_costs_only_that_link(make_settings):
    page = article(3).replace(b"/media/cover.jpg", b"http://[::1/cover.jpg")
    with LocalWeb("127.0.0.2") as web:
        web.static("/page", page, "text/html; charset=utf-8")
        async with connect(make_settings(fetch_intranet_allow=(web.base,))) as client:
            out = structured(await client.call_tool("fetch_page", {"url": web.base + "/page"}))
            assert out["images"] == [f"{web.base}/media/span.jpg", "https://cdn.example.org/pier.png"]
            text = error_text(await client.call_tool("fetch_page", {"url": "http://[2001:db8::1/page"}))
            assert "malformed URL 'http://[2001:db8::1/page'" in text and "pass a full http(s)://" in text


async def test_fetch_page_decodes_title_text_and_image_urls_with_the_pages_own_charset(make_settings):
    """The charset comes from the header, else a meta tag, else UTF-8 when it fits, else windows-1252 (the
    web's default), and the title and image URLs are decoded with the same one as the text."""
    title = "Café Straße Zürich – Ærøskøbing"
    body = "".join(
        f"<p>Færgen {i} til Ærøskøbing sejler fra Svendborg; the café is in Zürich.</p>" for i in range(6)
    )
    html = f"<html><head><title>{title}</title></head><body><article><h1>{title}</h1>{body}"
    html += "<img src='/bilder/café.jpg'></article></body></html>"
    plain = "El niño comió piña en Año Nuevo. " * 8
    with LocalWeb("127.0.0.2") as web:
        web.static("/header-utf8", html.encode(), "text/html; charset=utf-8")
        web.static("/header-1252", html.encode("cp1252"), "text/html; charset=windows-1252")
        web.static("/meta-1252", html.replace("<head>", "<head><meta charset='iso-8859-1'>").encode("cp1252"),
                   "text/html")  # fmt: skip
        web.static("/undeclared-html", html.encode("cp1252"), "text/html")
        web.static("/undeclared-plain", plain.encode("latin-1"), "text/plain")
        async with connect(make_settings(fetch_intranet_allow=(web.base,))) as client:
            for path in ("/header-utf8", "/header-1252", "/meta-1252", "/undeclared-html"):
                out = structured(await client.call_tool("fetch_page", {"url": web.base + path}))
                assert out["title"] == title, path
                assert "Færgen 3 til Ærøskøbing" in out["text"], path
                assert out["images"] == [f"{web.base}/bilder/café.jpg"], path
            out = structured(await client.call_tool("fetch_page", {"url": web.base + "/undeclared-plain"}))
            assert out["text"] == plain.strip()


async def test_fetch_page_reads_cjk_labels_as_browsers_do_and_detects_undeclared_multi_byte_pages(
    make_settings,
):
    """gb2312 means GBK and Shift_JIS means cp932 on the web (their extra characters are common); an
    undeclared GBK page is detected; a meta UTF-16 on an ASCII-compatible page means UTF-8."""
    chinese = (
        "<html><head><title>朱镕基总理访问上海</title></head><body><article>"
        + "".join(
            f"<p>第{i}段：朱镕基总理今天访问上海，天气多云转晴，气温二十度，市民热情欢迎。</p>"
            for i in range(6)
        )
        + "</article></body></html>"
    )
    japanese = "".join(f"株式会社①の第{i}回説明会は㈱本社で開かれます。" for i in range(10))
    with LocalWeb("127.0.0.2") as web:
        web.static(
            "/gb2312", chinese.replace("<head>", "<head><meta charset='gb2312'>").encode("gbk"), "text/html"
        )
        web.static("/undeclared-gbk", chinese.encode("gbk"), "text/html")
        web.static("/sjis", japanese.encode("cp932"), "text/plain; charset=Shift_JIS")
        web.static("/meta-utf16", ARTICLE.format(paragraphs="<p>" + "Plain words here. " * 30 + "</p>")
                   .replace("<head>", "<head><meta charset='utf-16'>").encode(), "text/html")  # fmt: skip
        async with connect(make_settings(fetch_intranet_allow=(web.base,))) as client:
            for path in ("/gb2312", "/undeclared-gbk"):
                out = structured(await client.call_tool("fetch_page", {"url": web.base + path}))
                assert out["title"] == "朱镕基总理访问上海" and "第3段：朱镕基总理" in out["text"], path
            out = structured(await client.call_tool("fetch_page", {"url": web.base + "/sjis"}))
            assert out["text"] == japanese
            out = structured(await client.call_tool("fetch_page", {"url": web.base + "/meta-utf16"}))
            assert out["title"] == "The Harbour Bridge reopens" and "Plain words here." in out["text"]


async def test_fetch_page_detects_undeclared_cyrillic_and_greek_pages_and_reads_xml_declarations(
    make_settings,
):
    """An undeclared single-byte page plainly in one non-Latin script is detected (Western pages still read
    as windows-1252, see above); an XHTML page's XML declaration names its encoding, ahead of a meta, and on
    text/html it is tried after the meta."""

    def page(title: str, sentence: str, head: str = "", prolog: str = "") -> str:
        body = "".join(f"<p>{i}: {sentence}</p>" for i in range(6))
        return f"{prolog}<html><head>{head}<title>{title}</title></head><body><article>{body}</article></body></html>"

    russian = page("Новости Москвы: мост открыт", "Новый мост через реку покрашен в бирюзовый цвет.")
    greek = page("Νέα της Αθήνας", "Η νέα γέφυρα άνοιξε σήμερα και οι κάτοικοι γιόρτασαν με μουσική.")
    xml = "<?xml version='1.0' encoding='windows-1250'?>"
    polish = dict(title="Nowy most w Łodzi", sentence="Mieszkańcy świętowali; zażółć gęślą jaźń.", prolog=xml)
    with LocalWeb("127.0.0.2") as web:
        web.static("/undeclared-1251", russian.encode("cp1251"), "text/html")
        web.static("/undeclared-1253", greek.encode("cp1253"), "text/html")
        web.static("/xhtml-1250", page(**polish).encode("cp1250"), "application/xhtml+xml")
        web.static("/xhtml-1250-meta", page(**polish, head="<meta charset='iso-8859-1'/>").encode("cp1250"),
                   "application/xhtml+xml")  # fmt: skip
        web.static("/html-1250", page(**polish).encode("cp1250"), "text/html")
        web.static("/html-1250-meta", page(**polish, head="<meta charset='iso-8859-1'>").encode("cp1250"),
                   "text/html")  # fmt: skip
        async with connect(make_settings(fetch_intranet_allow=(web.base,))) as client:
            for path, title, words in (
                ("/undeclared-1251", "Новости Москвы: мост открыт", "покрашен в бирюзовый цвет"),
                ("/undeclared-1253", "Νέα της Αθήνας", "οι κάτοικοι γιόρτασαν"),
                ("/xhtml-1250", "Nowy most w Łodzi", "zażółć gęślą jaźń"),
                ("/xhtml-1250-meta", "Nowy most w Łodzi", "zażółć gęślą jaźń"),
                ("/html-1250", "Nowy most w Łodzi", "zażółć gęślą jaźń"),
            ):
                out = structured(await client.call_tool("fetch_page", {"url": web.base + path}))
                assert out["title"] == title and words in out["text"], (path, out["title"])
            # on text/html a meta charset comes first, as browsers read it
            out = structured(await client.call_tool("fetch_page", {"url": web.base + "/html-1250-meta"}))
            assert out["title"] == "Nowy most w £odzi"


async def test_fetch_page_paginates_with_a_marker_that_says_where_to_continue(make_settings, pages):
    async with connect(make_settings(fetch_intranet_allow=(pages.base,))) as client:
        parts, start = [], 0
        while start is not None:
            out = structured(await client.call_tool("fetch_page", {"url": pages.base + "/long",
                                                                   "max_chars": 2000, "start": start}))  # fmt: skip
            text = out["text"]
            if out["next_start"] is not None:
                marker = f"Call fetch_page again with start={out['next_start']}"
                assert marker in text
                text = text[: text.index("\n\n[...")]
            parts.append(text)
            start = out["next_start"]
        assert len(parts) > 3 and pages.hits["/long"] == 1  # later parts come from the cache
        full = "".join(parts)
        assert len(full) == out["total_chars"] and all(f"Paragraph {i}:" in full for i in range(60))


async def test_a_configured_byte_limit_below_the_tools_own_caps_bounds_pages_and_the_searxng_api(
    make_settings, pages, searx
):
    settings = make_settings(fetch_intranet_allow=(pages.base,), fetch_max_bytes=1000, search_backend="searxng",
                             searxng_url=searx.base, fetch_allow=(searx.base,))  # fmt: skip
    async with connect(settings) as client:
        text = error_text(await client.call_tool("fetch_page", {"url": pages.base + "/long"}))
        assert "above the limit of 1000 bytes" in text
        text = error_text(await client.call_tool("search", {"query": "bridge"}))
        assert "SearXNG" in text and "the limit of 1000 bytes" in text


async def test_fetch_page_refuses_non_html_content_and_bad_arguments(make_settings, pages):
    async with connect(make_settings(fetch_intranet_allow=(pages.base,))) as client:
        for path, kind in (("/photo.png", "image/png"), ("/doc.pdf", "application/pdf")):
            text = error_text(await client.call_tool("fetch_page", {"url": pages.base + path}))
            assert kind in text and "text/html" in text
        assert "HTTP 404" in error_text(
            await client.call_tool("fetch_page", {"url": pages.base + "/missing"})
        )
        bad = [
            ({"url": ""}, "url: empty"),
            ({"url": pages.base + "/short", "start": -1}, "start: -1"),
            ({"url": pages.base + "/short", "max_chars": 10}, "max_chars: 10 is outside"),
            ({"url": pages.base + "/short", "start": 10**6}, "past the end"),
        ]
        for args, message in bad:
            assert message in error_text(await client.call_tool("fetch_page", args)), args
        assert (
            structured(await client.call_tool("fetch_page", {"url": pages.base + "/short"}))["cached"] is True
        )


async def test_a_searxng_answer_nested_too_deeply_to_read_is_the_same_clear_error(searx, searx_settings):
    deep = b'{"results": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with connect(searx_settings) as client:
        searx.state.update(body=deep)
        text = error_text(await client.call_tool("search", {"query": "deep"}))
        searx.state.update(body=None)
        assert structured(await client.call_tool("search", {"query": "still up"}))["count"] == 8
    assert "not its JSON format" in text and "Retrying will not help" in text, text
