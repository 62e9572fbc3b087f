"""Search backends behind `tools.search.Backend`: ddgs (no key, the default) and a SearXNG instance's JSON API.

Each normalises its results to `SearchHit` and turns its failures into `BackendError` with retry advice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from tools.core.fetch import FetchError, SafeFetcher, origin_of
from tools.search.service import SAFESEARCH, BackendError, SearchHit, SearchRequest, tidy


def _host(url: str) -> str:
    """The URL's host, or "" when it has none or is malformed (tidy() then drops or empties the link)."""
    try:
        return (urlsplit(url).hostname or "") if url else ""
    except ValueError:  # an unbalanced IPv6 bracket or a bad port: one bad result must not fail the search
        return ""


def _text(value: Any) -> str:
    """A result's text field as given, or "" when it is missing or not text (null, a list, a number)."""
    return value.strip() if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


class DdgsBackend:
    """`ddgs.DDGS().text/news/images`; `factory` replaces the DDGS class (default: `ddgs.DDGS`, looked up per call)."""

    name = "ddgs"

    def __init__(self, factory: Callable[..., Any] | None = None, timeout: int = 10) -> None:
        self.factory = factory
        self.timeout = timeout

    def own_fetcher(self, url: str) -> SafeFetcher | None:
        return None  # ddgs results link to the public web only

    def search(self, request: SearchRequest) -> list[SearchHit]:
        from ddgs import DDGS
        from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

        method = {"web": "text", "news": "news", "images": "images"}[request.kind]
        kwargs: dict[str, Any] = {"safesearch": request.safesearch, "max_results": request.max_results}
        if request.region:
            kwargs["region"] = request.region
        if request.timelimit:
            kwargs["timelimit"] = request.timelimit
        try:
            raw = getattr((self.factory or DDGS)(timeout=self.timeout), method)(request.query, **kwargs)
        except RatelimitException as exc:
            raise BackendError(f"ddgs is rate limited ({exc})", retry_after=60, rate_limited=True) from None
        except TimeoutException as exc:
            raise BackendError(f"ddgs timed out ({exc})", retry_after=10) from None
        except DDGSException as exc:
            text = str(exc)
            if "no results found" in text.lower():
                return []
            if re.search(r"ratelimit|rate limit|\b429\b|\b202\b", text, re.IGNORECASE):
                raise BackendError(
                    f"ddgs is rate limited ({text})", retry_after=60, rate_limited=True
                ) from None
            raise BackendError(f"ddgs could not reach its search engines ({text})", retry_after=30) from None
        return [self._hit(request.kind, r) for r in raw or []]

    @staticmethod
    def _hit(kind: str, r: dict[str, Any]) -> SearchHit:
        if kind == "web":
            return SearchHit(
                title=_text(r.get("title")),
                url=_text(r.get("href")),
                snippet=_text(r.get("body")),
                source=_host(_text(r.get("href"))),
            )
        if kind == "news":
            return SearchHit(
                title=_text(r.get("title")),
                url=_text(r.get("url")),
                snippet=_text(r.get("body")),
                source=_text(r.get("source")) or _host(_text(r.get("url"))),
                date=_text(r.get("date")) or None,
                image_url=_text(r.get("image")) or None,
            )
        return SearchHit(
            title=_text(r.get("title")),
            url=_text(r.get("url")),
            source=_text(r.get("source")),
            image_url=_text(r.get("image")) or None,
            thumbnail_url=_text(r.get("thumbnail")) or None,
            width=_int(r.get("width")),
            height=_int(r.get("height")),
        )


class SearxngBackend:
    """A SearXNG instance's JSON API (`/search?format=json`), reached through the safe fetcher.

    `fetcher` is the server's one fetcher whose allow-list (`fetch_allow`) may admit the instance's private
    address; it serves the API and the images on the instance's own origin (its image proxy), nothing else.
    """

    name = "searxng"
    MAX_PAGES = 5

    def __init__(self, base_url: str, fetcher: SafeFetcher) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.fetcher = fetcher

    def own_fetcher(self, url: str) -> SafeFetcher | None:
        try:
            return self.fetcher if origin_of(url) == origin_of(self.base_url) else None
        except (httpx.InvalidURL, UnicodeError, ValueError):
            return None  # the ordinary fetcher refuses a malformed URL with a clear message

    def search(self, request: SearchRequest) -> list[SearchHit]:
        hits: list[SearchHit] = []
        for page in range(1, self.MAX_PAGES + 1):
            try:
                rows = self._page(request, page)
            except BackendError as exc:
                if page == 1:
                    raise
                # the pages before it answered: a failed page ends paging, it does not undo them
                raise BackendError(
                    f"{exc} (on page {page})",
                    retry_after=exc.retry_after,
                    rate_limited=exc.rate_limited,
                    partial=hits,
                ) from None
            batch = [self._hit(request.kind, r) for r in rows]
            hits = tidy([*hits, *batch], request.max_results)  # engines repeat results across pages
            if not batch or len(hits) >= request.max_results:
                break
        return hits

    def _page(self, request: SearchRequest, page: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "q": request.query,
            "format": "json",
            "categories": {"web": "general", "news": "news", "images": "images"}[request.kind],
            "safesearch": SAFESEARCH[::-1].index(request.safesearch),  # off 0, moderate 1, on 2
            "pageno": page,
        }
        if request.timelimit:
            params["time_range"] = {"d": "day", "w": "week", "m": "month", "y": "year"}[request.timelimit]
        if request.region:
            lang, country = request.region.split("-")[::-1]
            params["language"] = "all" if request.region == "wt-wt" else f"{lang}-{country.upper()}"
        try:
            got = self.fetcher.get(
                urljoin(self.base_url, "search") + "?" + urlencode(params),
                accept=("application/json",),
                max_bytes=5 * 2**20,
                raise_for_status=False,
            )
        except FetchError as exc:
            raise BackendError(
                f"SearXNG at {self.base_url} failed: {exc}", retry_after=30 if exc.retryable else None
            ) from None
        if got.status == 429:
            wait = _int(got.headers.get("retry-after")) or 60
            raise BackendError("SearXNG answered 429 Too Many Requests", retry_after=wait, rate_limited=True)
        if got.status >= 500:
            raise BackendError(f"SearXNG answered HTTP {got.status} (server error)", retry_after=30)
        if got.status == 403:
            raise BackendError(
                "SearXNG answered 403: its JSON API is off; add 'json' to search.formats in its settings.yml",
                retry_after=None,
            )
        if got.status != 200:
            raise BackendError(f"SearXNG answered HTTP {got.status}", retry_after=None)
        try:
            results = json.loads(got.data).get("results", [])
        except (ValueError, AttributeError, RecursionError):  # RecursionError: nested too deeply to read
            results = None
        if not isinstance(results, list):  # {"results": null} too
            raise BackendError("SearXNG answered something that is not its JSON format", retry_after=None)
        return [r for r in results if isinstance(r, dict)]

    def _hit(self, kind: str, r: dict[str, Any]) -> SearchHit:
        def absolute(value: Any) -> str | None:  # image_proxy links are relative to the instance
            if not isinstance(value, str) or not value:
                return None
            try:
                return urljoin(self.base_url, value)
            except ValueError:  # a malformed link ("http://[::1/i.jpg") empties this field, not the search
                return None

        url = _text(r.get("url"))
        size = re.match(r"\s*(\d+)\s*[x×]\s*(\d+)", _text(r.get("resolution")))
        image = absolute(r.get("img_src"))
        return SearchHit(
            title=_text(r.get("title")),
            url=url,
            snippet=_text(r.get("content")),
            source=_text(r.get("source")) or _host(url),
            date=_text(r.get("publishedDate")) or _text(r.get("pubdate")) or None,
            image_url=image if kind != "web" else None,
            thumbnail_url=absolute(r.get("thumbnail_src") or r.get("thumbnail")) if kind != "web" else None,
            width=int(size.group(1)) if size else None,
            height=int(size.group(2)) if size else None,
        )
