"""The `search` and `fetch_page` tools: wiring only; the logic is tools/search.py and tools/page.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from server.context import AppContext, app_context
from tools.core.images import preview
from tools.search import page as pg
from tools.search import service as se
from tools.search.backends import DdgsBackend, SearxngBackend

PREVIEWS = 12  # small previews per search result, so the whole answer stays well under 1 MiB
PREVIEW_SIDE = 256


def service(app: AppContext) -> se.SearchService:
    """The per-process search service (backend, limiter, cache), opened on first use."""
    if app.search is not None:
        return app.search
    settings = app.settings
    if settings.search_backend == "searxng":
        if not settings.searxng_url:
            raise ToolError(
                "search_backend is 'searxng' but searxng_url is not set; set LIMNER_SEARXNG_URL to the "
                "instance's base URL (and LIMNER_FETCH_ALLOW to its origin when it runs on a private address)."
            )
        backend: se.Backend = SearxngBackend(settings.searxng_url, app.searxng_fetcher)
    else:
        backend = DdgsBackend()
    app.search = se.SearchService(
        backend,
        app.fetcher,
        app.images,
        per_minute=settings.search_per_minute,
        cache_s=settings.search_cache_s,
    )
    return app.search


def register(server: MCPServer) -> None:
    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True))
    async def search(
        ctx: Context,
        query: Annotated[
            str, Field(description="What to look up: names, products, places, with a year if recent.")
        ],
        kind: Annotated[
            Literal["web", "news", "images"],
            Field(description="'web' (pages), 'news' (recent articles) or 'images' (reference pictures)."),
        ] = "web",
        max_results: Annotated[
            int, Field(ge=1, le=se.MAX_RESULTS, description=f"Results wanted, 1..{se.MAX_RESULTS}.")
        ] = 8,
        region: Annotated[
            str | None, Field(description="Region-language like 'us-en', 'de-de'; 'wt-wt' for none.")
        ] = None,
        timelimit: Annotated[
            Literal["d", "w", "m", "y"] | None,
            Field(description="Only results from the last 'd'ay, 'w'eek, 'm'onth or 'y'ear."),
        ] = None,
        safesearch: Annotated[
            Literal["on", "moderate", "off"], Field(description="'on', 'moderate' or 'off'.")
        ] = "moderate",
        download_images: Annotated[
            bool,
            Field(
                description=f"kind='images' or 'news' only, at most {se.MAX_DOWNLOADS} results: fetch each "
                "image safely, store it and return its id and a preview, ready to pass as a reference."
            ),
        ] = False,
    ) -> Annotated[CallToolResult, se.SearchResult]:
        """Search the web, news or images for facts and reference pictures the image model cannot know.

        Call it before generate when the request names something recent, niche or specific (a product
        released last month, a landmark's current look, a logo, a person's outfit). Use kind='images' with
        download_images=true to keep reference images: each comes back with an id to pass to generate,
        judge or refine_region. Read a promising page with fetch_page; remember the facts you will use. The
        same query within a few minutes answers from a cache (cached=true) and tries again only the image
        downloads that failed. Errors say whether and when to retry.
        """
        app = app_context(ctx)
        request = se.check_request(
            query=query,
            kind=kind,
            max_results=max_results,
            region=region,
            timelimit=timelimit,
            safesearch=safesearch,
            download_images=download_images,
        )
        result, images = await service(app).search(request)
        result = se.with_previews(result, PREVIEWS)
        content: list[Any] = [TextContent(type="text", text=result.model_dump_json(exclude_none=True))]
        if images:  # resizing is CPU work: keep it off the event loop
            content.extend(
                await anyio.to_thread.run_sync(
                    lambda: [preview(img, PREVIEW_SIDE) for img in images[:PREVIEWS]]
                )
            )
        return CallToolResult(content=content, structured_content=result.model_dump(mode="json"))

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True))
    async def fetch_page(
        ctx: Context,
        url: Annotated[str, Field(description="An http(s) URL, typically from search results.")],
        max_chars: Annotated[
            int, Field(description=f"Most characters of text returned, {pg.MIN_CHARS}..{pg.MAX_CHARS}.")
        ] = 8000,
        start: Annotated[
            int, Field(description="Character offset to read from; pass the next_start of the previous call.")
        ] = 0,
    ) -> pg.PageResult:
        """Read the main text of one web page (boilerplate removed), with its title and image URLs.

        Call it after search when a result's snippet is not enough: specifications, descriptions of how
        something looks, dates. Long pages come in parts: when next_start is set the text ends with a marker;
        call fetch_page again with start=next_start. Image URLs can be passed as image references. remember
        the facts you take from it, then put them into the generate prompt.
        """
        app = app_context(ctx)
        pg.check_request(url, start, max_chars)
        if app.pages is None:
            app.pages = se.TTLCache(app.settings.search_cache_s, max_entries=32)
        pages = app.pages
        url = url.strip()
        page = pages.get(url)
        cached = page is not None
        if page is None:
            page = await anyio.to_thread.run_sync(pg.read_page, url, app.fetcher)
            pages.put(url, page)
        return pg.paginate(page, start, max_chars, cached)
