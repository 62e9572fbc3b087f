"""search: web, news and image search behind one small backend interface, with a limiter, a cache and
reference-image downloads into the image store.

Backends (tools/search_backends.py): `DdgsBackend` wraps `ddgs.DDGS` (no key); `SearxngBackend` calls a
self-hosted SearXNG's JSON API through the safe fetcher. Both normalise to `SearchHit`. Backend failures become `BackendError`, which
`SearchService` turns into a ToolError that says whether and when to retry. Blocking network work runs in
threads (`anyio.to_thread.run_sync`), never on the event loop or the model worker.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urldefrag, urlsplit

import anyio
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image
from pydantic import BaseModel, Field, PrivateAttr

from tools.core.fetch import SafeFetcher
from tools.core.images import ImageRef, ImageStore, decode_image

KINDS = ("web", "news", "images")
SAFESEARCH = ("on", "moderate", "off")
TIMELIMITS = ("d", "w", "m", "y")
MAX_RESULTS = 50
MAX_DOWNLOADS = 20
MAX_QUERY_CHARS = 500
_REGION = re.compile(r"^[a-z]{2}-[a-z]{2}$")

logger = logging.getLogger("limner.search")


class SearchHit(BaseModel):
    title: str = ""
    url: str = Field(
        default="", description="The page the result comes from (for images: the page showing it)."
    )
    snippet: str = ""
    source: str = Field(default="", description="Site, publisher or image host, where known.")
    date: str | None = Field(default=None, description="Publication date (ISO 8601) where known.")
    image_url: str | None = Field(default=None, description="The full image (images, news).")
    thumbnail_url: str | None = None
    width: int | None = None
    height: int | None = None
    image: ImageRef | None = Field(
        default=None,
        description="With download_images: the stored copy; pass its id to generate/judge/refine.",
    )
    image_from: str | None = Field(default=None, description="'image' or 'thumbnail': which URL was stored.")
    download_error: str | None = None


class SearchResult(BaseModel):
    query: str
    kind: str
    backend: str
    cached: bool = Field(description="True when answered from the short cache without asking the backend.")
    count: int
    results: list[SearchHit]
    downloaded: int = 0
    note: str | None = None
    # what the backend said about a partial answer, kept apart so that downloads retried from the cache can
    # rewrite their part of `note` without losing it
    _backend_note: str | None = PrivateAttr(default=None)


def web_url(value: Any) -> str | None:
    """An http(s) URL without surrounding spaces, else None (a javascript:, data: or ftp: link, a malformed
    URL, not a string)."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1/x": an unbalanced IPv6 bracket or a bad port is no link to pass on
        return None
    return url if parts.scheme.lower() in ("http", "https") and parts.netloc else None


def tidy(hits: list[SearchHit], limit: int) -> list[SearchHit]:
    """Results an agent can pass on as they are: http(s) links only, each page (a #fragment is the same page)
    or image once, at most `limit`. A result left with neither a page nor an image is dropped."""
    seen: set[tuple[str, str | None]] = set()
    kept: list[SearchHit] = []
    for hit in hits:
        url, image = web_url(hit.url) or "", web_url(hit.image_url)
        key = (urldefrag(url).url, image)
        if not (url or image) or key in seen:
            continue
        seen.add(key)
        kept.append(
            hit.model_copy(
                update={"url": url, "image_url": image, "thumbnail_url": web_url(hit.thumbnail_url)}
            )
        )
        if len(kept) == limit:
            break
    return kept


@dataclass(frozen=True)
class SearchRequest:
    query: str
    kind: str
    max_results: int
    region: str | None
    timelimit: str | None
    safesearch: str
    download_images: bool

    def cache_key(self, backend: str) -> tuple:
        return (
            backend,
            " ".join(self.query.split()).casefold(),
            *(v for k, v in vars(self).items() if k != "query"),
        )


def check_request(
    *,
    query: str,
    kind: str,
    max_results: int,
    region: str | None,
    timelimit: str | None,
    safesearch: str,
    download_images: bool,
) -> SearchRequest:
    """Validate every argument; raise a ToolError naming the field, the value and what is allowed."""
    if not query or not query.strip():
        raise ToolError("query: empty; pass the words to search for, e.g. 'Eiffel Tower at night 2026'.")
    if len(query) > MAX_QUERY_CHARS:
        raise ToolError(f"query: {len(query)} characters, above the limit of {MAX_QUERY_CHARS}; shorten it.")
    if kind not in KINDS:
        raise ToolError(
            f"kind: {kind!r} is not one of {', '.join(KINDS)}; use 'images' for reference pictures."
        )
    if not 1 <= max_results <= MAX_RESULTS:
        raise ToolError(
            f"max_results: {max_results} is outside 1..{MAX_RESULTS}; pass a number in that range."
        )
    if region is not None and not _REGION.match(region):
        raise ToolError(f"region: {region!r} must look like 'us-en', 'de-de' or 'wt-wt' (no region).")
    if timelimit is not None and timelimit not in TIMELIMITS:
        raise ToolError(f"timelimit: {timelimit!r} is not one of d, w, m, y (day, week, month, year).")
    if safesearch not in SAFESEARCH:
        raise ToolError(f"safesearch: {safesearch!r} is not one of {', '.join(SAFESEARCH)}.")
    if download_images and kind == "web":
        raise ToolError("download_images: web results carry no images; use kind='images' (or 'news').")
    if download_images and max_results > MAX_DOWNLOADS:
        raise ToolError(
            f"max_results: {max_results} with download_images=true is above {MAX_DOWNLOADS}; ask for fewer."
        )
    return SearchRequest(query.strip(), kind, max_results, region, timelimit, safesearch, download_images)


# -- backends -------------------------------------------------------------------------------------
class BackendError(Exception):
    """A backend failed. `retry_after` None means retrying the same call will not help. `partial` holds what
    earlier requests of the same search found (a paging backend whose later page failed), None when none ran.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        rate_limited: bool = False,
        partial: list[SearchHit] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.partial = partial


class Backend(Protocol):
    name: str

    def search(self, request: SearchRequest) -> list[SearchHit]: ...

    def own_fetcher(self, url: str) -> SafeFetcher | None:
        """The backend's own fetcher for an image it serves itself (SearXNG's image proxy), else None: every
        other image URL goes through the server's ordinary fetcher."""
        ...


# -- the service: limiter, cache, downloads ---------------------------------------------------------
class TTLCache:
    """A small time-bounded cache (per process); the oldest entry goes first when full."""

    def __init__(
        self, ttl_s: float, max_entries: int = 256, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> Any | None:
        item = self._items.get(key)
        if item is None or item[0] < self.clock():
            self._items.pop(key, None)
            return None
        return item[1]

    def put(self, key: Any, value: Any, ttl_s: float | None = None) -> None:
        """Keep `value` for the cache's time, or for `ttl_s` when that is shorter."""
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        self._items[key] = (self.clock() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def update(self, key: Any, value: Any) -> None:
        """Replace a live entry's value; it keeps its expiry."""
        if key in self._items:
            self._items[key] = (self._items[key][0], value)


class SearchService:
    """One per server process: the backend, a sliding-window limiter, the cache and image downloads."""

    def __init__(
        self,
        backend: Backend,
        fetcher: SafeFetcher,
        store: ImageStore,
        *,
        per_minute: int = 20,
        cache_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend, self.fetcher, self.store = backend, fetcher, store
        self.per_minute, self.clock = per_minute, clock
        self.cache = TTLCache(cache_s, clock=clock)
        self._calls: deque[float] = deque()
        self._blocked_until = 0.0

    async def search(self, request: SearchRequest) -> tuple[SearchResult, list[Image.Image]]:
        key = request.cache_key(self.backend.name)
        if (hit := self.cache.get(key)) is not None:
            if request.download_images and hit.downloaded < hit.count:
                # the results are reused, but downloads that failed (a host down, a full disk) are tried again
                hit, _ = await self._download(request, hit)
                self.cache.update(key, hit)
            images = await anyio.to_thread.run_sync(self._stored_images, hit) if hit.downloaded else []
            return hit.model_copy(update={"cached": True}), images
        self._admit()
        failed: BackendError | None = None
        try:
            hits = await anyio.to_thread.run_sync(self.backend.search, request)
        except BackendError as exc:
            # a 429 on any request of a search is the backend asking this server to pause, page 2 included:
            # the next search would very likely be refused too, so it waits here without asking
            if exc.rate_limited and exc.retry_after:
                self._blocked_until = max(self._blocked_until, self.clock() + exc.retry_after)
            if exc.partial is None:
                raise ToolError(
                    _retry_text(f"search backend {self.backend.name}: {exc}", exc.retry_after)
                ) from None
            hits, failed = exc.partial, exc  # a later page failed: the earlier pages' results still answer
        hits = tidy(hits, request.max_results)
        result = SearchResult(
            query=request.query,
            kind=request.kind,
            backend=self.backend.name,
            cached=False,
            count=len(hits),
            results=hits,
        )
        if failed is not None:
            result.note = result._backend_note = self._partial_note(request, len(hits), failed)
        images: list[Image.Image] = []
        if request.download_images:
            result, images = await self._download(request, result)
        # a partial answer is kept only until the backend may answer again, so a repeat then gets the rest
        self.cache.put(key, result, failed.retry_after if failed is not None else None)
        return result, images

    def _partial_note(self, request: SearchRequest, count: int, exc: BackendError) -> str:
        note = (
            f"Only {count} of the {request.max_results} results asked for: search backend "
            f"{self.backend.name} failed while paging ({exc})."
        )
        if exc.retry_after is None:
            return note
        wait = max(1, round(exc.retry_after))
        if exc.rate_limited:
            return (
                f"{note} It asked for a pause: new searches are refused for {wait} s, repeated queries "
                "answer from cache; search again after that for more."
            )
        return f"{note} Search again in {wait} s for more."

    def _admit(self) -> None:
        now = self.clock()
        if now < self._blocked_until:
            raise ToolError(
                _retry_text(f"search backend {self.backend.name} is rate limited", self._blocked_until - now)
                + " Repeated queries still answer from cache."
            )
        while self._calls and self._calls[0] <= now - 60:
            self._calls.popleft()
        if len(self._calls) >= self.per_minute:
            raise ToolError(
                _retry_text(
                    f"this server's limit of {self.per_minute} searches per minute is reached",
                    self._calls[0] + 60 - now,
                )
                + " Repeated queries still answer from cache."
            )
        self._calls.append(now)

    async def _download(
        self, request: SearchRequest, result: SearchResult
    ) -> tuple[SearchResult, list[Image.Image]]:
        hits = list(result.results)
        images: dict[int, Image.Image] = {}
        limiter = anyio.CapacityLimiter(4)

        async def one(i: int, hit: SearchHit) -> None:
            error = None
            for label, url in (("image", hit.image_url), ("thumbnail", hit.thumbnail_url)):
                if not url:
                    continue
                try:
                    ref, image = await anyio.to_thread.run_sync(
                        self._fetch_and_store, request, hit, url, i, limiter=limiter
                    )
                except ToolError as exc:  # FetchError included: refused, too big, not an image, corrupt
                    error = error or str(exc)
                    continue
                except Exception as exc:  # a full disk, a bug: this result fails, never the whole search
                    logger.exception("search result %d: fetching or storing %s failed", i, url)
                    error = error or f"fetching or storing {url} failed ({type(exc).__name__}: {exc})"
                    continue
                hits[i] = hit.model_copy(update={"image": ref, "image_from": label, "download_error": None})
                images[i] = image
                return
            hits[i] = hit.model_copy(update={"download_error": error or "the result has no image URL"})

        async with anyio.create_task_group() as tg:
            for i, hit in enumerate(hits):
                if hit.image is None:  # on a cached result, only the ones that failed before
                    tg.start_soon(one, i, hit)
        downloaded = sum(h.image is not None for h in hits)
        failed = len(hits) - downloaded
        note = result._backend_note
        if failed:
            missing = (
                f"{failed} of {len(hits)} images could not be downloaded; see download_error per result "
                "(search again or pick other results for more references)."
            )
            note = f"{note} {missing}" if note else missing
        updated = result.model_copy(update={"results": hits, "downloaded": downloaded, "note": note})
        return updated, [images[i] for i in sorted(images)]

    def _fetch_and_store(self, request: SearchRequest, hit: SearchHit, url: str, index: int):
        """Blocking: fetch through the safe fetcher, decode with the pixel guard, store with its source."""
        fetcher = self.backend.own_fetcher(url) or self.fetcher
        image = decode_image(fetcher.fetch_image(url), f"results[{index}].image_url", self.store.max_pixels)
        ref = self.store.put(
            image,
            tool="search",
            params={"query": request.query, "kind": request.kind},
            info={"source_url": url, "page_url": hit.url, "title": hit.title},
        )
        return ref, image

    def _stored_images(self, result: SearchResult) -> list[Image.Image]:
        return [
            self.store.open(h.image.id) for h in result.results if h.image and self.store.exists(h.image.id)
        ]


def _retry_text(what: str, retry_after: float | None) -> str:
    if retry_after is None:
        return f"{what}. Retrying will not help; fix the setting or use another backend."
    return f"{what}. Retry in {max(1, round(retry_after))} s."


def with_previews(result: SearchResult, limit: int) -> SearchResult:
    """Say in the note when only the first `limit` downloaded images carry a preview."""
    if result.downloaded <= limit:
        return result
    extra = f"Previews shown for the first {limit} of {result.downloaded} downloaded images."
    return result.model_copy(update={"note": f"{result.note} {extra}" if result.note else extra})
