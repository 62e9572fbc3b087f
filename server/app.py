"""The MCP server: lifespan (AppContext), tool and resource registration. Wiring only; logic is in tools/."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.types import Tool

from server.settings import Settings
from tools.fetch import FetchLimits, SafeFetcher
from tools.images import ImageStore, resolve_image
from tools.jobs import Worker
from tools.models import ModelCache

logger = logging.getLogger("limner")

INSTRUCTIONS = """\
limner runs local image models for you; you do the planning. The loop that closes the context gap:
1. search / fetch_page for facts and reference images the model cannot know; remember what matters.
2. recall preferences and facts before writing the prompt.
3. generate several candidates (n=3..4), then judge them: judge ranks them and says what to fix.
4. refine_region the failing region of the best candidate (bit-exact outside the region), judge again.
5. remember the outcome. Long generations return a job handle: poll it with `jobs`.
The prompts close_context_gap and product_scene spell the loop out; limner://images/<id>/lineage shows how an
image was made; limner://session/log lists this session's calls and the path of its HTML gallery.
Results made with the tiny offline models say so: they are noise, useful only to test the plumbing."""


@dataclass
class AppContext:
    """Everything a tool needs, built once per server process."""

    settings: Settings
    images: ImageStore
    models: ModelCache
    worker: Worker
    extras: dict[str, Any] = field(default_factory=dict)  # lazily opened parts (memory store, fetcher)

    def resolve(self, ref: str, field: str):
        """Resolve an image reference (see tools.images.resolve_image) with this server's folders."""
        return resolve_image(
            ref,
            field=field,
            store=self.images,
            readable_dirs=self.settings.readable_dirs(),
            fetch=self.extras.get("fetch"),
        )


def app_context(ctx: Context) -> AppContext:
    return ctx.request_context.lifespan_context


class LimnerServer(MCPServer):
    """MCPServer whose tool listing leaves out the `title` pydantic writes for every property and model.

    The titles repeat the names ("band_pixels" -> "Band Pixels"): 7 KB of a 54 KB listing that every host
    reads on each tools/list and many put in the agent's context. Descriptions, types and names stay.
    The listing is made once and made again whenever a tool is added or removed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing: list[Tool] | None = None

    def add_tool(self, *args: Any, **kwargs: Any) -> None:
        self._listing = None
        super().add_tool(*args, **kwargs)

    def remove_tool(self, name: str) -> None:
        self._listing = None
        super().remove_tool(name)

    async def list_tools(self) -> list[Tool]:
        if self._listing is None:
            self._listing = [
                tool.model_copy(
                    update={
                        "input_schema": untitled(tool.input_schema),
                        "output_schema": untitled(tool.output_schema),
                    }
                )
                for tool in await super().list_tools()
            ]
        return list(self._listing)


VALUE_KEYWORDS = frozenset({"default", "const", "enum", "examples"})  # their values are data, not schemas


def untitled(schema: Any, properties: bool = False) -> Any:
    """A JSON schema without its generated `title` keywords; a property named `title` and data stay."""
    if isinstance(schema, dict):
        return {
            key: value if key in VALUE_KEYWORDS and not properties else untitled(value, key == "properties")
            for key, value in schema.items()
            if properties or not (key == "title" and isinstance(value, str))
        }
    if isinstance(schema, list):
        return [untitled(value) for value in schema]
    return schema


def build_server(settings: Settings) -> MCPServer:
    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[AppContext]:
        settings.home.mkdir(parents=True, exist_ok=True)
        models = ModelCache(
            settings.models, settings.roles, settings.profile, settings.models_dir, settings.offline
        )
        for role, name in models.describe().items():
            logger.info("role %s -> %s", role, name)
        context = AppContext(
            settings=settings,
            images=ImageStore(settings.images_dir, settings.max_input_pixels),
            models=models,
            worker=Worker(),
        )
        # the one safe outbound fetcher; `fetch` lets image references be http(s) URLs
        limits = FetchLimits(total_s=settings.fetch_timeout_s, max_bytes=settings.fetch_max_bytes)
        fetcher = SafeFetcher(settings.fetch_allow, limits)
        context.extras.update(fetcher=fetcher, fetch=fetcher.fetch_image)
        context.extras.setdefault("closers", []).append(fetcher.close)
        try:
            yield context
        finally:
            context.worker.shutdown()
            for closer in context.extras.get("closers", []):
                closer()

    server = LimnerServer(
        "limner", instructions=INSTRUCTIONS, lifespan=lifespan, log_level=settings.log_level
    )

    @server.resource(
        "limner://images/{image_id}",
        name="image",
        description="The full PNG of a stored image (ids come from generate, search, refine_region).",
        mime_type="image/png",
    )
    def image_resource(image_id: str, ctx: Context) -> bytes:
        store = app_context(ctx).images
        if not store.exists(image_id):
            raise ResourceNotFoundError(f"no stored image {image_id!r}")
        return store.png_bytes(image_id)

    from server import generate_tools, jobs_tools

    generate_tools.register(server)
    jobs_tools.register(server)
    from server import search_tools

    search_tools.register(server)
    from server import refine_tools

    refine_tools.register(server)
    from server import memory_tools

    memory_tools.register(server)
    from server import judge_tools

    judge_tools.register(server)
    from server import prompts, session_tools

    session_tools.register(server)
    prompts.register(server)
    return server
